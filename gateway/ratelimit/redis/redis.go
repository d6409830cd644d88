// Package redis is the Redis backend of gateway/ratelimit: GCRA over all the
// limits of one request in one Lua script, so a request costs exactly one
// round trip (EVALSHA) however many limits it carries, and either every
// limit spends its cost or none does. It works against standalone Redis,
// Sentinel and Redis Cluster through go-redis; this package is the only
// importer of go-redis in the module.
//
// Keys. Every key of one request shares one cluster slot, because Redis
// Cluster runs a script only over keys of one slot:
//
//	<prefix>{<scope>}:<limit>:<period ms>:<key>      e.g. pg:{sampleapi}:10:60000:caller:alice
//
// The hash tag is the route's scope (default: the route name), not the
// caller: a shared key such as "group:ci" must be one counter for every
// caller of the group, so it cannot live in the caller's slot. The trade-off
// is that one scope's counters sit on one cluster node: a cluster spreads
// routes (scopes) across masters, not the callers of one route. A route that
// needs its callers spread sets scope "{route}:{subject}" and accepts that
// every key, group keys included, is then counted per caller. Limit and
// period are part of the key, so two different limits on the same key
// (a route's 10/min and a policy's 100/h on "caller:alice") never share
// state; changing a limit starts its counter afresh. Braces and '%' inside
// the scope are percent-encoded, so the tag is always exactly the scope.
//
// A check that times out client-side may still run on a Redis that was only
// slow: its cost can be spent although the Enforcer applied the failure
// mode. Retries are disabled for the same reason (a retried script would
// spend twice).
//
// It must not be imported by gateway/ratelimit itself (the root declares
// the Limiter interface this package implements).
//
// Concurrency: a Limiter is safe for concurrent use; go-redis pools the
// connections. It starts no goroutine of its own (go-redis runs its pool's).
package redis

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/policygate/policygate/gateway/ratelimit"
)

//go:embed gcra.lua
var gcraScript string

var gcraSHA = goredis.NewScript(gcraScript).Hash()

// scripter is what the limiter calls: a *goredis.Client, *ClusterClient,
// *Ring or any UniversalClient satisfies it.
type scripter interface {
	Eval(ctx context.Context, script string, keys []string, args ...any) *goredis.Cmd
	EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *goredis.Cmd
	ScriptLoad(ctx context.Context, script string) *goredis.StringCmd
}

// Options configure a Limiter.
type Options struct {
	// KeyPrefix starts every key. Empty means "pg:". Must not contain
	// '{' or '}'.
	KeyPrefix string
}

// Limiter is the Redis rate limiter.
type Limiter struct {
	c      scripter
	prefix string
	closer func() error
}

var _ ratelimit.Limiter = (*Limiter)(nil)

// New returns a Limiter over c, which the caller keeps and closes.
func New(c scripter, opts Options) (*Limiter, error) {
	if c == nil {
		return nil, errors.New("ratelimit/redis: nil client")
	}
	prefix := opts.KeyPrefix
	if prefix == "" {
		prefix = "pg:"
	}
	if strings.ContainsAny(prefix, "{}") {
		return nil, fmt.Errorf("ratelimit/redis: key prefix %q must not contain '{' or '}'", prefix)
	}
	return &Limiter{c: c, prefix: prefix}, nil
}

// Open builds a client for s.Redis (standalone, Sentinel or Cluster) tuned
// for bounded latency, and a Limiter that owns it: Close closes the client.
// It does not contact Redis; call Load to preload the script.
func Open(s *ratelimit.Settings) (*Limiter, error) {
	if s == nil || s.Redis == nil {
		return nil, errors.New("ratelimit/redis: no redis settings")
	}
	c := goredis.NewUniversalClient(clientOptions(s))
	l, err := New(c, Options{KeyPrefix: s.KeyPrefix})
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	l.closer = c.Close
	return l, nil
}

func clientOptions(s *ratelimit.Settings) *goredis.UniversalOptions {
	rs := s.Redis
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 50 * time.Millisecond
	}
	return &goredis.UniversalOptions{
		Addrs:         rs.Addrs,
		MasterName:    rs.MasterName,
		IsClusterMode: rs.Cluster,
		Username:      rs.Username,
		Password:      rs.Password,
		DB:            rs.DB,
		TLSConfig:     rs.TLS,
		PoolSize:      rs.PoolSize,
		ClientName:    "policygate",
		// The Enforcer's per-check deadline governs every wait: dial, pool
		// and socket. The socket timeouts only bound calls made without a
		// deadline (Load at start-up).
		ContextTimeoutEnabled: true,
		DialTimeout:           max(timeout, 250*time.Millisecond),
		ReadTimeout:           time.Second,
		WriteTimeout:          time.Second,
		PoolTimeout:           timeout,
		// A retried script spends twice, and a retry cannot fit in a 50ms
		// budget anyway; the breaker handles outages.
		MaxRetries:    -1,
		DialerRetries: 1,
	}
}

// Close closes the client when the Limiter was built by Open.
func (l *Limiter) Close() error {
	if l.closer == nil {
		return nil
	}
	return l.closer()
}

// Load puts the script in the server's cache (on every master of a
// cluster), so the first checks need no fallback EVAL. It is optional: a
// missing script (after a restart or SCRIPT FLUSH) costs one extra round
// trip on the check that finds it missing.
func (l *Limiter) Load(ctx context.Context) error {
	sha, err := l.c.ScriptLoad(ctx, gcraScript).Result()
	if err != nil {
		return fmt.Errorf("ratelimit/redis: load script: %w", err)
	}
	if sha != gcraSHA {
		return fmt.Errorf("ratelimit/redis: load script: server returned digest %s, want %s", sha, gcraSHA)
	}
	return nil
}

// Allow checks and spends limits under scope in one EVALSHA.
func (l *Limiter) Allow(ctx context.Context, scope string, limits []ratelimit.Limit) (ratelimit.Decision, error) {
	if len(limits) == 0 {
		return ratelimit.Decision{Allowed: true, Index: -1}, nil
	}
	if err := ratelimit.ValidateLimits(limits); err != nil {
		return ratelimit.Decision{}, err
	}
	keys := make([]string, len(limits))
	args := make([]any, 0, 3*len(limits))
	tag := KeyTag(l.prefix, scope)
	for i := range limits {
		lim := &limits[i]
		keys[i] = Key(tag, lim)
		periodUS := float64(lim.Period / time.Microsecond)
		interval := periodUS / float64(lim.Limit)
		args = append(args,
			formatFloat(interval),
			formatFloat(float64(lim.Burst)*periodUS/float64(lim.Limit)),
			formatFloat(float64(lim.Cost)*periodUS/float64(lim.Limit)),
		)
	}
	res, err := l.c.EvalSha(ctx, gcraSHA, keys, args...).Result()
	if err != nil && isNoScript(err) {
		res, err = l.c.Eval(ctx, gcraScript, keys, args...).Result()
	}
	if err != nil {
		return ratelimit.Decision{}, fmt.Errorf("ratelimit/redis: check %d limits: %w", len(limits), err)
	}
	return parseReply(res, len(limits))
}

// Key is the Redis key of lim under the hash-tagged prefix tag
// ("pg:{scope}:"). Exposed for tests and operators inspecting Redis.
func Key(tag string, lim *ratelimit.Limit) string {
	var b strings.Builder
	b.Grow(len(tag) + len(lim.Key) + 24)
	b.WriteString(tag)
	b.WriteString(strconv.FormatInt(lim.Limit, 10))
	b.WriteByte(':')
	b.WriteString(strconv.FormatInt(lim.Period.Milliseconds(), 10))
	b.WriteByte(':')
	b.WriteString(lim.Key)
	return b.String()
}

// KeyTag returns the hash-tagged prefix of scope's keys under prefix.
func KeyTag(prefix, scope string) string { return prefix + "{" + escapeScope(scope) + "}:" }

// escapeScope makes scope safe inside a hash tag: '{', '}' and '%' are
// percent-encoded, and the empty scope becomes "%" (which no escaped scope
// can equal), because "{}" would make Redis hash the whole key.
func escapeScope(s string) string {
	if s == "" {
		return "%"
	}
	if !strings.ContainsAny(s, "{}%") {
		return s
	}
	r := strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D")
	return r.Replace(s)
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

func isNoScript(err error) bool {
	return errors.Is(err, goredis.ErrNoScript) || goredis.HasErrorPrefix(err, "NOSCRIPT")
}

func parseReply(res any, n int) (ratelimit.Decision, error) {
	vals, ok := res.([]any)
	if !ok || len(vals) != 5 {
		return ratelimit.Decision{}, fmt.Errorf("ratelimit/redis: unexpected script reply %v", res)
	}
	var ints [5]int64
	for i, v := range vals {
		x, ok := v.(int64)
		if !ok {
			return ratelimit.Decision{}, fmt.Errorf("ratelimit/redis: unexpected script reply %v", res)
		}
		ints[i] = x
	}
	idx := int(ints[1]) - 1
	if idx < 0 || idx >= n {
		return ratelimit.Decision{}, fmt.Errorf("ratelimit/redis: script reply names limit %d of %d", ints[1], n)
	}
	return ratelimit.Decision{
		Allowed:    ints[0] == 1,
		Index:      idx,
		Remaining:  ints[2],
		RetryAfter: time.Duration(ints[3]) * time.Microsecond,
		ResetAfter: time.Duration(ints[4]) * time.Microsecond,
	}, nil
}

// SetLogger sends go-redis's own log lines (dial failures, cluster
// topology) to l at warn level instead of the standard logger. It is
// process-wide; call it once from main.
func SetLogger(l *slog.Logger) {
	if l != nil {
		goredis.SetLogger(slogLogger{l})
	}
}

type slogLogger struct{ l *slog.Logger }

func (s slogLogger) Printf(ctx context.Context, format string, v ...any) {
	s.l.WarnContext(ctx, "redis client", "msg", strings.TrimSpace(fmt.Sprintf(format, v...)))
}
