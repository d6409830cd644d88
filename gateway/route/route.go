// Package route owns the routing table: which configured route serves a
// canonical host and path, with its upstream, policy rule path, body limit,
// labels and brokered upstream credential, all parsed once from Config.
//
// It must not import decision internals, bundles or xds.
//
// Concurrency: a *Table is immutable after New and safe for concurrent use.
package route

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/gateway/canon"
	"github.com/policygate/policygate/gateway/ratelimit"
)

// Config is one route as written in the configuration file.
type Config struct {
	// Name identifies the route in input.route.name, logs and metrics.
	// Required, unique.
	Name string `yaml:"name"`
	// Host matches the request's canonical host exactly (lowercase, no
	// port). Empty matches any host; a route with a host wins over one
	// without.
	Host string `yaml:"host"`
	// PathPrefix matches the canonical path on a segment boundary: "/api"
	// matches "/api" and "/api/x", not "/apix". Required; longest wins.
	PathPrefix string `yaml:"path_prefix"`
	// Upstream is the backend base URL (http or https, no path, query or
	// user info). Required.
	Upstream string `yaml:"upstream"`
	// Policy is the rule path whose value decides, e.g. "rabbitmq/decision"
	// or "data.rabbitmq.decision". Required.
	Policy string `yaml:"policy"`
	// BodyLimit is the number of request-body bytes read and parsed for the
	// policy (JSON or form). Larger bodies are still forwarded whole, and
	// the policy sees body null and body_truncated true. Zero means 65536;
	// -1 means the body is never read for the policy.
	BodyLimit int64 `yaml:"body_limit"`
	// Labels are exposed as input.route.labels and added to log events.
	Labels map[string]string `yaml:"labels"`
	// AllowEncodedSlash accepts %2F inside path segments (RabbitMQ's
	// default vhost). Default false: such paths are rejected with 400.
	AllowEncodedSlash bool `yaml:"allow_encoded_slash"`
	// Timeout bounds the wait for the upstream's response headers, as a Go
	// duration. Empty means "30s".
	Timeout string `yaml:"timeout"`
	// CacheTTL is how long a decision of this route's rule may be reused
	// (Go duration, at most 24h) when the rule is deterministic and the
	// decision does not set cache.ttl itself. It takes effect only with a
	// decision_cache. Empty or "0s" (the default): only decisions that set
	// cache.ttl are reused.
	CacheTTL string `yaml:"cache_ttl"`
	// RateLimit holds the route's static limits, its failure mode when the
	// shared backend is unreachable, and whether allowed responses carry
	// RateLimit headers. Limits the policy returns in rate_limit are
	// checked together with these. Optional.
	RateLimit ratelimit.RouteConfig `yaml:"rate_limit"`
	// LogFailClosed makes the decision log a precondition of the call: an
	// allowed request is forwarded only after its decision event is
	// stored (durably with delivery: durable); if the log cannot store it,
	// the request is refused with 503 log_unavailable. Default false.
	LogFailClosed bool `yaml:"log_fail_closed"`
	// UpstreamAuth is the backend's own credential, set on every forwarded
	// request after the client's credentials are removed. Optional.
	UpstreamAuth *AuthConfig `yaml:"upstream_auth"`
}

// AuthConfig is a brokered upstream credential. Secrets come from a file
// or an environment variable, never inline.
type AuthConfig struct {
	// Type is "basic" or "bearer". Required.
	Type string `yaml:"type"`
	// Username for basic. Required for basic.
	Username string `yaml:"username"`
	// PasswordFile / PasswordEnv hold the basic password (exactly one).
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
	// TokenFile / TokenEnv hold the bearer token (exactly one).
	TokenFile string `yaml:"token_file"`
	TokenEnv  string `yaml:"token_env"`
}

// Route is a parsed, ready-to-serve route.
type Route struct {
	Name              string
	Host              string
	PathPrefix        string
	Upstream          *url.URL
	Policy            string // "data.a.b"
	BodyLimit         int64  // -1: never read
	Labels            map[string]string
	AllowEncodedSlash bool
	Timeout           time.Duration
	CacheTTL          time.Duration // 0: only decisions that set cache.ttl are cached
	RateLimit         *ratelimit.Route
	LogFailClosed     bool
	// UpstreamAuthorization is the Authorization value sent upstream, or "".
	UpstreamAuthorization string
}

// Table finds the route for a request.
type Table struct {
	routes []*Route // sorted: hosted before any-host, then longest prefix
}

// Options are what parsing needs from outside the route section.
type Options struct {
	// BaseDir resolves relative secret file paths.
	BaseDir string
	// Getenv reads environment variables. Nil means os.Getenv.
	Getenv func(string) string
}

// New validates and parses the route configs. Errors name the key, e.g.
// "routes[2].upstream: ...", and are all reported at once.
func New(cfgs []Config, opts Options) (*Table, error) {
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	var errs []error
	names := map[string]bool{}
	matchers := map[string]bool{}
	t := &Table{}
	for i, c := range cfgs {
		key := fmt.Sprintf("routes[%d]", i)
		r, err := parse(c, opts)
		if err != nil {
			errs = append(errs, prefixErrs(key, err))
			continue
		}
		if names[r.Name] {
			errs = append(errs, fmt.Errorf("%s.name: duplicate route name %q", key, r.Name))
		}
		names[r.Name] = true
		m := r.Host + " " + r.PathPrefix
		if matchers[m] {
			errs = append(errs, fmt.Errorf("%s.path_prefix: another route already matches host %q prefix %q", key, r.Host, r.PathPrefix))
		}
		matchers[m] = true
		t.routes = append(t.routes, r)
	}
	if len(cfgs) == 0 {
		errs = append(errs, errors.New("routes: at least one route is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sort.SliceStable(t.routes, func(i, j int) bool {
		a, b := t.routes[i], t.routes[j]
		if (a.Host != "") != (b.Host != "") {
			return a.Host != ""
		}
		return len(a.PathPrefix) > len(b.PathPrefix)
	})
	return t, nil
}

func prefixErrs(key string, err error) error {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		var out []error
		for _, e := range joined.Unwrap() {
			out = append(out, fmt.Errorf("%s.%w", key, e))
		}
		return errors.Join(out...)
	}
	return fmt.Errorf("%s.%w", key, err)
}

func parse(c Config, opts Options) (*Route, error) {
	var errs []error
	r := &Route{Name: c.Name, Labels: c.Labels, LogFailClosed: c.LogFailClosed, AllowEncodedSlash: c.AllowEncodedSlash, BodyLimit: c.BodyLimit, Timeout: 30 * time.Second}
	if r.Labels == nil {
		r.Labels = map[string]string{} // input.route.labels is always an object
	}
	if c.Name == "" {
		errs = append(errs, errors.New("name: required"))
	}
	if c.Host != "" {
		h, err := canon.Host(c.Host)
		if err != nil || h != strings.ToLower(c.Host) {
			errs = append(errs, fmt.Errorf("host: %q must be a lowercase host name without port", c.Host))
		}
		r.Host = h
	}
	switch {
	case c.PathPrefix == "":
		errs = append(errs, errors.New("path_prefix: required"))
	default:
		tg, err := canon.Parse(c.PathPrefix, canon.Options{AllowEncodedSlash: true})
		if err != nil || tg.Path != c.PathPrefix || tg.RawQuery != "" {
			errs = append(errs, fmt.Errorf("path_prefix: %q is not a canonical path", c.PathPrefix))
		}
		r.PathPrefix = strings.TrimSuffix(c.PathPrefix, "/")
	}
	if c.Upstream == "" {
		errs = append(errs, errors.New("upstream: required"))
	} else if u, err := url.Parse(c.Upstream); err != nil {
		errs = append(errs, fmt.Errorf("upstream: %w", err))
	} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("upstream: %q must be an http or https URL with a host", c.Upstream))
	} else if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		errs = append(errs, fmt.Errorf("upstream: %q must not have a path, query, fragment or user info: the upstream receives exactly the path the policy saw", c.Upstream))
	} else {
		u.Path = ""
		r.Upstream = u
	}
	if c.Policy == "" {
		errs = append(errs, errors.New("policy: required"))
	} else if p, err := decision.RulePath(c.Policy); err != nil {
		errs = append(errs, fmt.Errorf("policy: %w", err))
	} else {
		r.Policy = p
	}
	switch {
	case c.BodyLimit == 0:
		r.BodyLimit = 64 << 10
	case c.BodyLimit < -1:
		errs = append(errs, fmt.Errorf("body_limit: %d must be -1, 0 or positive", c.BodyLimit))
	case c.BodyLimit > 16<<20:
		errs = append(errs, fmt.Errorf("body_limit: %d exceeds 16 MiB", c.BodyLimit))
	}
	rl, err := ratelimit.ParseRoute(c.Name, c.RateLimit)
	if err != nil {
		errs = append(errs, err)
	}
	r.RateLimit = rl
	if c.CacheTTL != "" {
		d, err := time.ParseDuration(c.CacheTTL)
		if err != nil || d < 0 || d > decision.MaxCacheTTL {
			errs = append(errs, fmt.Errorf("cache_ttl: %q is not a duration between 0s and %s", c.CacheTTL, decision.MaxCacheTTL))
		}
		r.CacheTTL = d
	}
	if c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("timeout: %q is not a positive duration", c.Timeout))
		}
		r.Timeout = d
	}
	if c.UpstreamAuth != nil {
		v, err := upstreamAuthorization(*c.UpstreamAuth, opts)
		if err != nil {
			errs = append(errs, prefixErrs("upstream_auth", err))
		}
		r.UpstreamAuthorization = v
	}
	return r, errors.Join(errs...)
}

func upstreamAuthorization(a AuthConfig, opts Options) (string, error) {
	secret := func(fileKey, file, envKey, env string) (string, error) {
		switch {
		case file != "" && env != "":
			return "", fmt.Errorf("%s: set only one of %s and %s", fileKey, fileKey, envKey)
		case file != "":
			if !filepath.IsAbs(file) {
				file = filepath.Join(opts.BaseDir, file)
			}
			b, err := os.ReadFile(file)
			if err != nil {
				return "", fmt.Errorf("%s: %w", fileKey, err)
			}
			s := strings.TrimRight(string(b), "\r\n")
			if s == "" {
				return "", fmt.Errorf("%s: %s is empty", fileKey, file)
			}
			return s, nil
		case env != "":
			s := opts.Getenv(env)
			if s == "" {
				return "", fmt.Errorf("%s: environment variable %s is empty or unset", envKey, env)
			}
			return s, nil
		default:
			return "", fmt.Errorf("%s: one of %s or %s is required", fileKey, fileKey, envKey)
		}
	}
	switch a.Type {
	case "basic":
		if a.TokenFile != "" || a.TokenEnv != "" {
			return "", errors.New("token_file: not valid for type basic")
		}
		if a.Username == "" || strings.Contains(a.Username, ":") {
			return "", errors.New("username: required for type basic and must not contain ':'")
		}
		pw, err := secret("password_file", a.PasswordFile, "password_env", a.PasswordEnv)
		if err != nil {
			return "", err
		}
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(a.Username+":"+pw)), nil
	case "bearer":
		if a.Username != "" || a.PasswordFile != "" || a.PasswordEnv != "" {
			return "", errors.New("username: not valid for type bearer")
		}
		tok, err := secret("token_file", a.TokenFile, "token_env", a.TokenEnv)
		if err != nil {
			return "", err
		}
		if strings.ContainsAny(tok, "\r\n\x00") {
			return "", errors.New("token_file: token contains control characters")
		}
		return "Bearer " + tok, nil
	default:
		return "", fmt.Errorf("type: %q is not basic or bearer", a.Type)
	}
}

// Match returns the route for a canonical host and path, or nil.
func (t *Table) Match(host, path string) *Route {
	for _, r := range t.routes {
		if r.Host != "" && r.Host != host {
			continue
		}
		if r.PathPrefix == "" || path == r.PathPrefix || strings.HasPrefix(path, r.PathPrefix+"/") {
			return r
		}
	}
	return nil
}

// Routes returns the routes in match order.
func (t *Table) Routes() []*Route { return t.routes }

// Policies returns the distinct rule paths the routes use.
func (t *Table) Policies() []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range t.routes {
		if !seen[r.Policy] {
			seen[r.Policy] = true
			out = append(out, r.Policy)
		}
	}
	sort.Strings(out)
	return out
}
