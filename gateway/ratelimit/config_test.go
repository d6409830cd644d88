package ratelimit_test

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/policygate/policygate/gateway/ratelimit"
)

// decodeStrict decodes YAML as the configuration loader does: unknown keys
// are errors.
func decodeStrict(t *testing.T, doc string, v any) {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader([]byte(doc)))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %q: %v", doc, err)
	}
}

func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "redis.pass"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty.pass"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"REDIS_PASSWORD": "from-env"}
	opts := ratelimit.ParseOptions{BaseDir: dir, Getenv: func(k string) string { return env[k] }}
	tests := []struct {
		name    string
		doc     string
		check   func(t *testing.T, s *ratelimit.Settings)
		wantErr []string // substrings, all must appear
	}{
		{
			name: "defaults",
			doc:  "{}",
			check: func(t *testing.T, s *ratelimit.Settings) {
				want := ratelimit.Settings{Backend: "memory", Timeout: 50 * time.Millisecond, KeyPrefix: "pg:", Failures: 5, OpenFor: 2 * time.Second, MaxKeys: 100000, LocalShare: 1}
				if !reflect.DeepEqual(*s, want) {
					t.Errorf("settings = %+v, want %+v", *s, want)
				}
			},
		},
		{
			name: "redis standalone with password file",
			doc: `
backend: redis
timeout: 20ms
key_prefix: "gw:"
redis: {addrs: ["127.0.0.1:6379"], password_file: redis.pass, db: 2, username: gw}
breaker: {failures: 3, open_for: 500ms}
max_keys: 5000
local_share: 0.25`,
			check: func(t *testing.T, s *ratelimit.Settings) {
				if s.Backend != "redis" || s.Timeout != 20*time.Millisecond || s.KeyPrefix != "gw:" || s.Failures != 3 || s.OpenFor != 500*time.Millisecond || s.MaxKeys != 5000 || s.LocalShare != 0.25 {
					t.Errorf("settings = %+v", *s)
				}
				r := s.Redis
				if r == nil || r.Password != "s3cret" || r.DB != 2 || r.Username != "gw" || len(r.Addrs) != 1 {
					t.Fatalf("redis settings = %+v", r)
				}
				if strings.Contains(r.String(), "s3cret") {
					t.Errorf("String() leaks the password: %s", r)
				}
			},
		},
		{
			name: "sentinel with password env",
			doc:  `{backend: redis, redis: {addrs: ["10.0.0.1:26379", "10.0.0.2:26379"], master_name: mymaster, password_env: REDIS_PASSWORD}}`,
			check: func(t *testing.T, s *ratelimit.Settings) {
				if s.Redis.MasterName != "mymaster" || s.Redis.Password != "from-env" {
					t.Errorf("redis settings = %+v", s.Redis)
				}
			},
		},
		{
			name: "cluster with tls",
			doc:  `{backend: redis, redis: {addrs: ["a:7000", "b:7000"], cluster: true, tls: {server_name: redis.internal}}}`,
			check: func(t *testing.T, s *ratelimit.Settings) {
				if !s.Redis.Cluster || s.Redis.TLS == nil || s.Redis.TLS.ServerName != "redis.internal" {
					t.Errorf("redis settings = %+v", s.Redis)
				}
			},
		},
		{name: "unknown backend", doc: `{backend: memcached}`, wantErr: []string{`rate_limit.backend: "memcached" is not memory or redis`}},
		{name: "bad timeout", doc: `{timeout: fast}`, wantErr: []string{`rate_limit.timeout: "fast" is not a positive duration`}},
		{name: "negative timeout", doc: `{timeout: -1s}`, wantErr: []string{`rate_limit.timeout:`}},
		{name: "bad open_for", doc: `{breaker: {open_for: 0s}}`, wantErr: []string{`rate_limit.breaker.open_for:`}},
		{name: "negative failures", doc: `{breaker: {failures: -1}}`, wantErr: []string{`rate_limit.breaker.failures: -1 must be positive`}},
		{name: "prefix with brace", doc: `{key_prefix: "a{b"}`, wantErr: []string{`rate_limit.key_prefix:`}},
		{name: "negative max_keys", doc: `{max_keys: -5}`, wantErr: []string{`rate_limit.max_keys:`}},
		{name: "local_share above 1", doc: `{local_share: 1.5}`, wantErr: []string{`rate_limit.local_share: 1.5 is not in (0, 1]`}},
		{name: "redis without addrs", doc: `{backend: redis}`, wantErr: []string{`rate_limit.redis.addrs: required`}},
		{name: "redis section with memory backend", doc: `{redis: {addrs: ["a:1"]}}`, wantErr: []string{`rate_limit.redis: set but backend is "memory"`}},
		{name: "bad addr", doc: `{backend: redis, redis: {addrs: ["localhost"]}}`, wantErr: []string{`rate_limit.redis.addrs[0]: "localhost" is not host:port`}},
		{name: "bad port", doc: `{backend: redis, redis: {addrs: ["h:99999"]}}`, wantErr: []string{`rate_limit.redis.addrs[0]: "h:99999" has no valid port`}},
		{name: "several addrs without mode", doc: `{backend: redis, redis: {addrs: ["a:1", "b:1"]}}`, wantErr: []string{`rate_limit.redis.addrs: several addresses need cluster`}},
		{name: "cluster and sentinel", doc: `{backend: redis, redis: {addrs: ["a:1"], cluster: true, master_name: m}}`, wantErr: []string{`rate_limit.redis.cluster: cluster and master_name are mutually exclusive`}},
		{name: "cluster db", doc: `{backend: redis, redis: {addrs: ["a:1"], cluster: true, db: 1}}`, wantErr: []string{`rate_limit.redis.db:`}},
		{name: "both password sources", doc: `{backend: redis, redis: {addrs: ["a:1"], password_file: redis.pass, password_env: REDIS_PASSWORD}}`, wantErr: []string{`rate_limit.redis.password_file: set only one`}},
		{name: "missing password file", doc: `{backend: redis, redis: {addrs: ["a:1"], password_file: nope.pass}}`, wantErr: []string{`rate_limit.redis.password_file:`, "nope.pass"}},
		{name: "empty password file", doc: `{backend: redis, redis: {addrs: ["a:1"], password_file: empty.pass}}`, wantErr: []string{`rate_limit.redis.password_file: empty.pass is empty`}},
		{name: "unset password env", doc: `{backend: redis, redis: {addrs: ["a:1"], password_env: NOPE}}`, wantErr: []string{`rate_limit.redis.password_env: environment variable NOPE`}},
		{name: "bad ca file", doc: `{backend: redis, redis: {addrs: ["a:1"], tls: {ca_file: redis.pass}}}`, wantErr: []string{`rate_limit.redis.tls.ca_file: redis.pass holds no PEM certificate`}},
		{name: "cert without key", doc: `{backend: redis, redis: {addrs: ["a:1"], tls: {cert_file: c.pem}}}`, wantErr: []string{`rate_limit.redis.tls.cert_file: cert_file and key_file go together`}},
		{
			name:    "all errors at once",
			doc:     `{backend: redis, timeout: x, redis: {addrs: ["nope"], db: -1}}`,
			wantErr: []string{"rate_limit.timeout", "rate_limit.redis.addrs[0]", "rate_limit.redis.db"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c ratelimit.Config
			decodeStrict(t, tt.doc, &c)
			s, err := ratelimit.ParseConfig(c, opts)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("ParseConfig accepted %s", tt.doc)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			tt.check(t, s)
		})
	}
}

func TestConfigUnknownKeyIsAnError(t *testing.T) {
	for _, doc := range []string{`{backend: redis, redis: {adrs: ["a:1"]}}`, `{limits: [{key: k, limit: 1, period: 1s, brust: 2}]}`} {
		dec := yaml.NewDecoder(strings.NewReader(doc))
		dec.KnownFields(true)
		var c struct {
			ratelimit.Config `yaml:",inline"`
			Limits           []ratelimit.LimitConfig `yaml:"limits"`
		}
		if err := dec.Decode(&c); err == nil {
			t.Errorf("strict decode accepted %s", doc)
		}
	}
}

func TestParseRoute(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		vals    ratelimit.Values
		want    []ratelimit.Limit
		scope   string
		mode    ratelimit.FailureMode
		wantErr []string
	}{
		{
			name:  "empty section: no limits, fail_closed, scope is the route",
			doc:   `{}`,
			scope: "api",
			mode:  ratelimit.FailClosed,
		},
		{
			name: "templated keys and defaults",
			doc: `
limits:
  - {key: "caller:{subject}", limit: 10, period: 1m}
  - {key: "ip:{remote_addr}:{method}", limit: 100, period: 1h, burst: 20, cost: 2}
  - {key: "route:{route}:{host}:{key_id}:{issuer}", limit: 1, period: 1s}
failure_mode: local
headers: true
scope: "tenant-{issuer}"`,
			vals: ratelimit.Values{Subject: "alice", RemoteAddr: "192.0.2.1", Method: "POST", Host: "h.example", KeyID: "k1", Issuer: "idp"},
			want: []ratelimit.Limit{
				{Key: "caller:alice", Limit: 10, Period: time.Minute, Burst: 10, Cost: 1, Source: ratelimit.SourceRoute},
				{Key: "ip:192.0.2.1:POST", Limit: 100, Period: time.Hour, Burst: 20, Cost: 2, Source: ratelimit.SourceRoute},
				{Key: "route:api:h.example:k1:idp", Limit: 1, Period: time.Second, Burst: 1, Cost: 1, Source: ratelimit.SourceRoute},
			},
			scope: "tenant-idp",
			mode:  ratelimit.FailLocal,
		},
		{
			name:  "empty values expand to nothing",
			doc:   `{limits: [{key: "caller:{subject}", limit: 1, period: 1s}], failure_mode: fail_open}`,
			want:  []ratelimit.Limit{{Key: "caller:", Limit: 1, Period: time.Second, Burst: 1, Cost: 1, Source: ratelimit.SourceRoute}},
			scope: "api",
			mode:  ratelimit.FailOpen,
		},
		{name: "bad failure mode", doc: `{failure_mode: open}`, wantErr: []string{`rate_limit.failure_mode: "open" is not fail_closed, fail_open or local`}},
		{name: "unknown placeholder", doc: `{limits: [{key: "u:{user}", limit: 1, period: 1s}]}`, wantErr: []string{`rate_limit.limits[0].key: "u:{user}": unknown placeholder {user}`}},
		{name: "unterminated placeholder", doc: `{limits: [{key: "u:{subject", limit: 1, period: 1s}]}`, wantErr: []string{`rate_limit.limits[0].key: "u:{subject": unterminated placeholder`}},
		{name: "stray brace", doc: `{limits: [{key: "u}", limit: 1, period: 1s}]}`, wantErr: []string{`unmatched '}'`}},
		{name: "bad scope", doc: `{scope: "{x}"}`, wantErr: []string{`rate_limit.scope: "{x}": unknown placeholder`}},
		{name: "missing key", doc: `{limits: [{limit: 1, period: 1s}]}`, wantErr: []string{`rate_limit.limits[0].key: required`}},
		{name: "missing period", doc: `{limits: [{key: k, limit: 1}]}`, wantErr: []string{`rate_limit.limits[0].period: required`}},
		{name: "bad period", doc: `{limits: [{key: k, limit: 1, period: 1min}]}`, wantErr: []string{`rate_limit.limits[0].period: "1min" is not a duration`}},
		{name: "zero limit", doc: `{limits: [{key: k, limit: 0, period: 1s}]}`, wantErr: []string{`rate_limit.limits[0].limit: 0 is not in 1..1000000000`}},
		{name: "cost above burst", doc: `{limits: [{key: k, limit: 2, period: 1s, cost: 3}]}`, wantErr: []string{`rate_limit.limits[0].cost: 3 exceeds burst 2`}},
		{name: "sub-millisecond period", doc: `{limits: [{key: k, limit: 1, period: 10us}]}`, wantErr: []string{`rate_limit.limits[0].period:`}},
		{
			name:    "all errors at once",
			doc:     `{failure_mode: x, limits: [{key: k, limit: 1}, {key: "{y}", limit: 1, period: 1s}]}`,
			wantErr: []string{"rate_limit.failure_mode", "rate_limit.limits[0].period", "rate_limit.limits[1].key"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c ratelimit.RouteConfig
			decodeStrict(t, tt.doc, &c)
			r, err := ratelimit.ParseRoute("api", c)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("ParseRoute accepted %s", tt.doc)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRoute: %v", err)
			}
			if got := r.Limits(nil, &tt.vals); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Limits =\n  %+v\nwant\n  %+v", got, tt.want)
			}
			if got := r.Scope(&tt.vals); got != tt.scope {
				t.Errorf("Scope = %q, want %q", got, tt.scope)
			}
			if r.FailureMode() != tt.mode || r.Name() != "api" {
				t.Errorf("mode %q name %q, want %q api", r.FailureMode(), r.Name(), tt.mode)
			}
		})
	}
}

func TestRouteLongKeysStayBoundedAndDistinct(t *testing.T) {
	r, err := ratelimit.ParseRoute("api", ratelimit.RouteConfig{Limits: []ratelimit.LimitConfig{{Key: "caller:{subject}", Limit: 1, Period: "1s"}}})
	if err != nil {
		t.Fatal(err)
	}
	a := r.Limits(nil, &ratelimit.Values{Subject: strings.Repeat("a", 2000) + "1"})[0].Key
	b := r.Limits(nil, &ratelimit.Values{Subject: strings.Repeat("a", 2000) + "2"})[0].Key
	if len(a) > 512 || len(b) > 512 {
		t.Errorf("key lengths %d, %d exceed 512", len(a), len(b))
	}
	if a == b {
		t.Error("two long subjects share one key")
	}
	if err := (ratelimit.Limit{Key: a, Limit: 1, Period: time.Second, Burst: 1, Cost: 1}).Validate(); err != nil {
		t.Errorf("bounded key is invalid: %v", err)
	}
}
