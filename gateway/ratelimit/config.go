package ratelimit

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/policygate/policygate/decision"
)

// Backends.
const (
	BackendMemory = "memory"
	BackendRedis  = "redis"
)

// Config is the global rate-limit section of the configuration file
// (rate_limit: at the top level).
type Config struct {
	// Backend holds the shared counters: "memory" (in this process only)
	// or "redis" (shared by every replica). Empty means "memory".
	Backend string `yaml:"backend"`
	// Timeout bounds one backend check, as a Go duration. Empty means
	// "50ms". A check that takes longer is a backend failure, handled by
	// the route's failure_mode.
	Timeout string `yaml:"timeout"`
	// KeyPrefix starts every Redis key. Empty means "pg:". It must not
	// contain '{' or '}' (they would move the cluster hash tag).
	KeyPrefix string `yaml:"key_prefix"`
	// Redis configures the connection when backend is "redis".
	Redis RedisConfig `yaml:"redis"`
	// Breaker configures the circuit breaker in front of the backend.
	Breaker BreakerConfig `yaml:"breaker"`
	// MaxKeys bounds the keys an in-process limiter holds (the memory
	// backend, and the local fallback budget of the redis backend). Zero
	// means 100000.
	MaxKeys int `yaml:"max_keys"`
	// LocalShare scales limit and burst of the local fallback budget
	// (failure_mode: local), in (0, 1]: with N replicas, 1/N keeps the
	// fleet-wide total near the configured limit while Redis is down.
	// Zero means 1: each replica allows the full limit on its own.
	LocalShare float64 `yaml:"local_share"`
}

// RedisConfig says how to reach Redis: standalone (one address), Sentinel
// (master_name set, addrs are the sentinels) or Cluster (cluster: true,
// addrs are seed nodes).
type RedisConfig struct {
	// Addrs are host:port addresses. Required for backend redis.
	Addrs []string `yaml:"addrs"`
	// MasterName is the Sentinel master name. Empty: not Sentinel.
	MasterName string `yaml:"master_name"`
	// Cluster selects Redis Cluster. Default false.
	Cluster bool `yaml:"cluster"`
	// Username for Redis ACLs. Optional.
	Username string `yaml:"username"`
	// PasswordFile / PasswordEnv hold the password (at most one; neither
	// means no password). A relative file is resolved against the
	// configuration file's directory.
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
	// DB selects the database (standalone and Sentinel only). Default 0.
	DB int `yaml:"db"`
	// TLS enables TLS when present (an empty section uses the system
	// roots).
	TLS *TLSConfig `yaml:"tls"`
	// PoolSize is the connection pool size per node. Zero means the
	// client's default (10 per CPU).
	PoolSize int `yaml:"pool_size"`
}

// TLSConfig configures TLS to Redis.
type TLSConfig struct {
	// CAFile is a PEM bundle of roots. Empty means the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate (both or neither).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name verified in the server certificate.
	ServerName string `yaml:"server_name"`
}

// BreakerConfig configures the circuit breaker.
type BreakerConfig struct {
	// Failures is the number of consecutive backend failures that open
	// the breaker. Zero means 5.
	Failures int `yaml:"failures"`
	// OpenFor is how long an open breaker refuses calls before letting one
	// probe through, as a Go duration. Empty means "2s".
	OpenFor string `yaml:"open_for"`
}

// Settings is a validated, parsed Config.
type Settings struct {
	Backend    string
	Timeout    time.Duration
	KeyPrefix  string
	Redis      *RedisSettings // set for backend redis
	Failures   int
	OpenFor    time.Duration
	MaxKeys    int
	LocalShare float64
}

// RedisSettings is a parsed RedisConfig with its secret loaded. Do not log
// it whole; String redacts the password.
type RedisSettings struct {
	Addrs      []string
	MasterName string
	Cluster    bool
	Username   string
	Password   string
	DB         int
	TLS        *tls.Config
	PoolSize   int
}

// String describes s without its password.
func (s *RedisSettings) String() string {
	mode := "standalone"
	switch {
	case s.Cluster:
		mode = "cluster"
	case s.MasterName != "":
		mode = "sentinel(" + s.MasterName + ")"
	}
	return fmt.Sprintf("redis %s %s db=%d tls=%v", mode, strings.Join(s.Addrs, ","), s.DB, s.TLS != nil)
}

// ParseOptions are what parsing needs from outside the section.
type ParseOptions struct {
	// BaseDir resolves relative file paths.
	BaseDir string
	// Getenv reads environment variables. Nil means os.Getenv.
	Getenv func(string) string
}

// ParseConfig validates c, injects defaults and loads secrets. Errors name
// the key under "rate_limit." and are all reported at once.
func ParseConfig(c Config, opts ParseOptions) (*Settings, error) {
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	var errs []error
	fail := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("rate_limit.%s: "+format, append([]any{key}, args...)...))
	}
	s := &Settings{Backend: c.Backend, KeyPrefix: c.KeyPrefix, Failures: c.Breaker.Failures, MaxKeys: c.MaxKeys, LocalShare: c.LocalShare}
	switch c.Backend {
	case "":
		s.Backend = BackendMemory
	case BackendMemory, BackendRedis:
	default:
		fail("backend", "%q is not memory or redis", c.Backend)
	}
	var err error
	if s.Timeout, err = parseDuration(c.Timeout, 50*time.Millisecond); err != nil {
		fail("timeout", "%w", err)
	}
	if s.OpenFor, err = parseDuration(c.Breaker.OpenFor, 2*time.Second); err != nil {
		fail("breaker.open_for", "%w", err)
	}
	switch {
	case c.Breaker.Failures == 0:
		s.Failures = 5
	case c.Breaker.Failures < 0:
		fail("breaker.failures", "%d must be positive", c.Breaker.Failures)
	}
	if s.KeyPrefix == "" {
		s.KeyPrefix = "pg:"
	} else if strings.ContainsAny(s.KeyPrefix, "{}") {
		fail("key_prefix", "%q must not contain '{' or '}'", s.KeyPrefix)
	}
	switch {
	case c.MaxKeys == 0:
		s.MaxKeys = DefaultMaxKeys
	case c.MaxKeys < 0:
		fail("max_keys", "%d must be positive", c.MaxKeys)
	}
	switch {
	case c.LocalShare == 0:
		s.LocalShare = 1
	case !(c.LocalShare > 0 && c.LocalShare <= 1):
		fail("local_share", "%v is not in (0, 1]", c.LocalShare)
	}
	if s.Backend == BackendRedis {
		rs, err := parseRedis(c.Redis, opts)
		if err != nil {
			errs = append(errs, err)
		}
		s.Redis = rs
	} else if len(c.Redis.Addrs) > 0 {
		fail("redis", "set but backend is %q", s.Backend)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

func parseRedis(c RedisConfig, opts ParseOptions) (*RedisSettings, error) {
	var errs []error
	fail := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("rate_limit.redis.%s: "+format, append([]any{key}, args...)...))
	}
	rs := &RedisSettings{Addrs: c.Addrs, MasterName: c.MasterName, Cluster: c.Cluster, Username: c.Username, DB: c.DB, PoolSize: c.PoolSize}
	if len(c.Addrs) == 0 {
		fail("addrs", "required for backend redis")
	}
	for i, a := range c.Addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			fail(fmt.Sprintf("addrs[%d]", i), "%q is not host:port", a)
			continue
		}
		if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
			fail(fmt.Sprintf("addrs[%d]", i), "%q has no valid port", a)
		}
	}
	if len(c.Addrs) > 1 && !c.Cluster && c.MasterName == "" {
		fail("addrs", "several addresses need cluster: true or master_name (Sentinel)")
	}
	if c.Cluster && c.MasterName != "" {
		fail("cluster", "cluster and master_name are mutually exclusive")
	}
	if c.Cluster && c.DB != 0 {
		fail("db", "Redis Cluster has only database 0")
	}
	if c.DB < 0 {
		fail("db", "%d must not be negative", c.DB)
	}
	if c.PoolSize < 0 {
		fail("pool_size", "%d must not be negative", c.PoolSize)
	}
	switch {
	case c.PasswordFile != "" && c.PasswordEnv != "":
		fail("password_file", "set only one of password_file and password_env")
	case c.PasswordFile != "":
		b, err := os.ReadFile(resolve(opts.BaseDir, c.PasswordFile))
		if err != nil {
			fail("password_file", "%w", err)
		} else if rs.Password = strings.TrimRight(string(b), "\r\n"); rs.Password == "" {
			fail("password_file", "%s is empty", c.PasswordFile)
		}
	case c.PasswordEnv != "":
		if rs.Password = opts.Getenv(c.PasswordEnv); rs.Password == "" {
			fail("password_env", "environment variable %s is empty or unset", c.PasswordEnv)
		}
	}
	if c.TLS != nil {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLS.ServerName}
		if c.TLS.CAFile != "" {
			pem, err := os.ReadFile(resolve(opts.BaseDir, c.TLS.CAFile))
			if err != nil {
				fail("tls.ca_file", "%w", err)
			} else {
				tc.RootCAs = x509.NewCertPool()
				if !tc.RootCAs.AppendCertsFromPEM(pem) {
					fail("tls.ca_file", "%s holds no PEM certificate", c.TLS.CAFile)
				}
			}
		}
		switch {
		case (c.TLS.CertFile == "") != (c.TLS.KeyFile == ""):
			fail("tls.cert_file", "cert_file and key_file go together")
		case c.TLS.CertFile != "":
			cert, err := tls.LoadX509KeyPair(resolve(opts.BaseDir, c.TLS.CertFile), resolve(opts.BaseDir, c.TLS.KeyFile))
			if err != nil {
				fail("tls.cert_file", "%w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		rs.TLS = tc
	}
	return rs, errors.Join(errs...)
}

func resolve(base, p string) string {
	if filepath.IsAbs(p) || base == "" {
		return p
	}
	return filepath.Join(base, p)
}

func parseDuration(s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return def, fmt.Errorf("%q is not a positive duration", s)
	}
	return d, nil
}

// FailureMode is what a route does when the backend is unreachable, fails
// or is slower than the timeout.
type FailureMode string

// Failure modes.
const (
	// FailClosed answers 503: no request passes unmetered.
	FailClosed FailureMode = "fail_closed"
	// FailOpen forwards the request unmetered and counts it.
	FailOpen FailureMode = "fail_open"
	// FailLocal checks an in-process budget instead (scaled by
	// local_share); the budget's own rejections are 429.
	FailLocal FailureMode = "local"
)

// RouteConfig is a route's rate-limit section (rate_limit: inside a route).
type RouteConfig struct {
	// Limits are checked on every request of the route, together with the
	// decision's rate_limit entries. Optional.
	Limits []LimitConfig `yaml:"limits"`
	// FailureMode is fail_closed, fail_open or local. Empty means
	// fail_closed.
	FailureMode string `yaml:"failure_mode"`
	// Headers adds RateLimit-Limit, -Remaining, -Reset and -Policy to
	// allowed responses. Rejections (429) always carry them with
	// Retry-After. Default false.
	Headers bool `yaml:"headers"`
	// Scope partitions the route's counters, as a key template. Requests
	// share a limit only within one scope, and one scope lives in one
	// Redis Cluster slot. Empty means "{route}": keys are per route, and
	// each route's counters sit on one cluster node. "{route}:{subject}"
	// spreads a busy route's callers across the cluster, but then even a
	// "group:..." key is counted per caller. Routes with the same literal
	// scope (e.g. "admin-apis") share their keys.
	Scope string `yaml:"scope"`
}

// LimitConfig is a static limit.
type LimitConfig struct {
	// Key is a template: text with placeholders {route}, {subject},
	// {issuer}, {key_id}, {remote_addr}, {host} and {method}, e.g.
	// "caller:{subject}". Required.
	Key string `yaml:"key"`
	// Limit is the number of units per period. Required, positive.
	Limit int64 `yaml:"limit"`
	// Period is a Go duration, a whole number of milliseconds. Required.
	Period string `yaml:"period"`
	// Burst is the most units admitted at once. Zero means limit.
	Burst int64 `yaml:"burst"`
	// Cost is the units each request spends. Zero means 1.
	Cost int64 `yaml:"cost"`
}

// Route is a parsed RouteConfig for one route.
type Route struct {
	name    string
	limits  []routeLimit
	scope   template
	mode    FailureMode
	headers bool
}

type routeLimit struct {
	key   template
	limit Limit // Key unset
}

// ParseRoute validates c for the route called name. Errors name the key
// relative to the route, e.g. "rate_limit.limits[0].period: ...", and are
// all reported at once.
func ParseRoute(name string, c RouteConfig) (*Route, error) {
	var errs []error
	fail := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("rate_limit.%s: "+format, append([]any{key}, args...)...))
	}
	r := &Route{name: name, mode: FailureMode(c.FailureMode), headers: c.Headers}
	switch r.mode {
	case "":
		r.mode = FailClosed
	case FailClosed, FailOpen, FailLocal:
	default:
		fail("failure_mode", "%q is not fail_closed, fail_open or local", c.FailureMode)
	}
	scope := c.Scope
	if scope == "" {
		scope = "{route}"
	}
	if t, err := parseTemplate(scope); err != nil {
		fail("scope", "%w", err)
	} else {
		r.scope = t
	}
	if len(c.Limits) > decision.MaxRateLimits {
		fail("limits", "%d limits, at most %d", len(c.Limits), decision.MaxRateLimits)
	}
	for i, lc := range c.Limits {
		key := fmt.Sprintf("rate_limit.limits[%d]", i)
		rl := routeLimit{limit: Limit{Limit: lc.Limit, Burst: lc.Burst, Cost: lc.Cost, Source: SourceRoute}}
		ok := true
		if lc.Key == "" {
			errs, ok = append(errs, fmt.Errorf("%s.key: required", key)), false
		} else if t, err := parseTemplate(lc.Key); err != nil {
			errs, ok = append(errs, fmt.Errorf("%s.key: %w", key, err)), false
		} else {
			rl.key = t
		}
		if lc.Period == "" {
			errs, ok = append(errs, fmt.Errorf("%s.period: required", key)), false
		} else if d, err := time.ParseDuration(lc.Period); err != nil {
			errs, ok = append(errs, fmt.Errorf("%s.period: %q is not a duration such as \"1m\"", key, lc.Period)), false
		} else {
			rl.limit.Period = d
		}
		if rl.limit.Burst == 0 {
			rl.limit.Burst = rl.limit.Limit
		}
		if rl.limit.Cost == 0 {
			rl.limit.Cost = 1
		}
		if ok {
			probe := rl.limit
			probe.Key = "k" // the template's expansion is bounded by boundKey
			if err := probe.Validate(); err != nil {
				errs = append(errs, fmt.Errorf("%s.%w", key, err)) // err starts with the field name
			}
		}
		r.limits = append(r.limits, rl)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return r, nil
}

// Name is the route's name ({route} in templates).
func (r *Route) Name() string { return r.name }

// FailureMode is the route's failure mode.
func (r *Route) FailureMode() FailureMode { return r.mode }

// Limits resolves the route's static limits for v and appends them to dst.
func (r *Route) Limits(dst []Limit, v *Values) []Limit {
	for i := range r.limits {
		l := r.limits[i].limit
		l.Key = boundKey(r.limits[i].key.expand(r.name, v))
		dst = append(dst, l)
	}
	return dst
}

// Scope resolves the route's scope for v.
func (r *Route) Scope(v *Values) string { return boundKey(r.scope.expand(r.name, v)) }

// boundKey keeps an expanded key within decision.MaxRateLimitKey: a long
// subject or address is replaced by a digest, so it still names exactly
// one budget.
func boundKey(k string) string {
	if len(k) <= decision.MaxRateLimitKey {
		return k
	}
	sum := sha256.Sum256([]byte(k))
	return k[:decision.MaxRateLimitKey-65] + "#" + hex.EncodeToString(sum[:])
}
