package decision

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
)

// MaxCacheTTL bounds the time to live a decision may ask for, so that a
// mistyped unit cannot pin a result for days.
const MaxCacheTTL = 24 * time.Hour

// Cache holds interpreted results between requests (decision/cache
// provides it). Results are shared between requests: nothing that reads a
// cached Result may modify it.
type Cache interface {
	// Get returns the live result stored under k.
	Get(k CacheKey) (Result, bool)
	// Add stores r under k for ttl; a ttl of zero or less stores nothing.
	Add(k CacheKey, r Result, ttl time.Duration)
}

// CachePolicy is a Policy that can say what a rule's decision depends on.
// The engine caches decisions only for policies that implement it; any
// other Policy is evaluated on every request.
type CachePolicy interface {
	Policy
	// CacheInfo reports, for the rule path, the input fields its decision
	// can depend on (each a path below input, e.g. ["request", "method"];
	// an empty path means the whole input) and whether the decision is a
	// function of those fields and the policy revision alone. It is false
	// when the rule reaches a non-deterministic builtin (time.now_ns,
	// http.send, rand.intn, ...) or reads input.request.id. The identity is
	// always part of the key and need not be listed.
	CacheInfo(path string) (fields [][]string, deterministic bool)
}

// CacheKey identifies one cacheable decision: a SHA-256 digest of the
// activation the policy came from, the rule path, the whole identity and
// the input fields the rule can read.
type CacheKey [32]byte

// CacheDirective is what a decision document says about its own caching
// (its "cache" field).
type CacheDirective struct {
	// TTL is how long the decision may be reused; zero when the decision
	// did not say.
	TTL time.Duration
	// Off is true for "cache": false (or a ttl of 0): never reuse it.
	Off bool
}

// ParseCache reads the "cache" field of a decision document: false, or an
// object {"ttl": D} where D is a Go duration string ("10s") or a number of
// seconds (0.5). set reports that v says anything at all; a ttl of zero is
// the same as false. Anything else is an error, which denies: a policy that
// asks for caching in a way nobody understood must not be cached by guess.
func ParseCache(v any) (ttl time.Duration, off bool, set bool, err error) {
	fail := func(format string, args ...any) (time.Duration, bool, bool, error) {
		return 0, false, false, fmt.Errorf("decision: cache: "+format, args...)
	}
	switch t := v.(type) {
	case nil:
		return 0, false, false, nil
	case bool:
		if t {
			return fail("true is not a cache setting, want false or {\"ttl\": ...}")
		}
		return 0, true, true, nil
	case map[string]any:
		raw, ok := t["ttl"]
		if !ok {
			return fail("ttl is missing")
		}
		if len(t) != 1 {
			return fail("only ttl is understood, got %d keys", len(t))
		}
		d, err := parseTTL(raw)
		if err != nil {
			return fail("ttl: %v", err)
		}
		if d == 0 {
			return 0, true, true, nil
		}
		return d, false, true, nil
	default:
		return fail("is %T, want false or object", v)
	}
}

func parseTTL(v any) (time.Duration, error) {
	var d time.Duration
	switch t := v.(type) {
	case string:
		var err error
		if d, err = time.ParseDuration(t); err != nil {
			return 0, err
		}
	default:
		secs, err := seconds(v)
		if err != nil {
			return 0, err
		}
		if math.IsNaN(secs) || math.IsInf(secs, 0) || math.Abs(secs) > MaxCacheTTL.Seconds() {
			return 0, fmt.Errorf("%v seconds exceeds %s", v, MaxCacheTTL)
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d < 0 || d > MaxCacheTTL {
		return 0, fmt.Errorf("%s is outside 0 to %s", d, MaxCacheTTL)
	}
	return d, nil
}

func seconds(v any) (float64, error) {
	switch n := v.(type) {
	case json.Number:
		return strconv.ParseFloat(string(n), 64)
	case float64:
		return n, nil
	case int:
		return float64(n), nil
	case int64:
		return float64(n), nil
	}
	return 0, fmt.Errorf("is %T, want a duration string or a number of seconds", v)
}

// DecideOption adjusts one Decide call.
type DecideOption func(*decideOptions)

type decideOptions struct {
	cacheTTL time.Duration
}

// WithCacheTTL is the route's default time to live for decisions of a
// deterministic policy that do not set cache.ttl themselves. Zero (the
// default) caches only decisions that ask for it.
func WithCacheTTL(d time.Duration) DecideOption {
	return func(o *decideOptions) { o.cacheTTL = d }
}

// cacheTTL is how long r may be reused. Only what the policy decided is
// reused, never an error, timeout or malformed result; the decision's own
// setting wins, and the route default applies only to deterministic rules.
func cacheTTL(r *Result, routeTTL time.Duration, deterministic bool) time.Duration {
	switch r.Outcome {
	case OutcomeAllow, OutcomeDeny, OutcomeUndefined:
	default:
		return 0
	}
	switch {
	case r.Cache.Off:
		return 0
	case r.Cache.TTL > 0:
		return r.Cache.TTL
	case deterministic:
		return routeTTL
	}
	return 0
}

// decideCached decides d through the cache. A hit reuses the stored Result.
// On a miss, a deterministic rule is evaluated once for all concurrent
// requests with the same key: the first evaluates on its own goroutine
// (whose stack has already grown to what OPA needs; a fresh goroutine per
// evaluation spends more on stack growth than on evaluating), detached
// from its own cancellation so that a client going away does not fail the
// others, and under the engine's timeout, which therefore also bounds how
// long the others wait. Errors and timeouts are never stored; whoever
// waited for a failed evaluation gets its failure, which denies.
func (e *Engine) decideCached(ctx context.Context, ap *activePolicy, path string, in *Input, o decideOptions, d *Decision) CacheStatus {
	fields, deterministic := ap.cp.CacheInfo(path)
	key, ok := newCacheKey(ap.gen, path, fields, in)
	if !ok {
		ev := e.evaluate(ctx, ap, path, in)
		d.Result, d.EvalTime, d.Err = ev.res, ev.took, ev.err
		return CacheOff
	}
	if r, hit := e.cache.Get(key); hit {
		d.Result, d.CacheHit = r, true
		return CacheHit
	}
	if !deterministic {
		// Only the decision itself can make this cacheable, and identical
		// concurrent requests may legitimately be decided differently.
		ev := e.evaluate(ctx, ap, path, in)
		d.Result, d.EvalTime, d.Err = ev.res, ev.took, ev.err
		e.store(key, ev, o.cacheTTL, false)
		return CacheMiss
	}
	led := false // set by the evaluation, which runs on this goroutine if at all
	v, _, _ := e.flight.Do(string(key[:]), func() (any, error) {
		led = true
		ev := e.evaluateShared(context.WithoutCancel(ctx), ap, path, in)
		e.store(key, ev, o.cacheTTL, true)
		return ev, nil
	})
	ev := v.(evaluation)
	d.Result, d.EvalTime, d.Err = ev.res, ev.took, ev.err
	if led {
		return CacheMiss
	}
	return CacheShared
}

// evaluateShared is evaluate for an evaluation others wait for: a panic in
// the policy engine becomes an error result for all of them instead of
// leaving them waiting.
func (e *Engine) evaluateShared(ctx context.Context, ap *activePolicy, path string, in *Input) (ev evaluation) {
	defer func() {
		if p := recover(); p != nil {
			ev = evaluation{res: Result{Outcome: OutcomeError}, err: fmt.Errorf("evaluate %s: panic: %v", path, p)}
		}
	}()
	return e.evaluate(ctx, ap, path, in)
}

// store keeps a successful evaluation for as long as cacheTTL allows.
func (e *Engine) store(key CacheKey, ev evaluation, routeTTL time.Duration, deterministic bool) {
	if ev.err != nil {
		return
	}
	if ttl := cacheTTL(&ev.res, routeTTL, deterministic); ttl > 0 {
		e.cache.Add(key, ev.res, ttl)
	}
}
