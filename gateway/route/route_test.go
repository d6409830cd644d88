package route_test

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/policygate/policygate/gateway/route"
)

func rc(name, host, prefix string) route.Config {
	return route.Config{Name: name, Host: host, PathPrefix: prefix, Upstream: "http://127.0.0.1:8080", Policy: "gate/decision"}
}

func noEnv(string) string { return "" }

func TestMatch(t *testing.T) {
	table, err := route.New([]route.Config{
		rc("catch-all", "", "/"),
		rc("api", "", "/api"),
		rc("api-users", "", "/api/users/"),
		rc("admin-host", "admin.example.com", "/"),
		rc("admin-host-api", "admin.example.com", "/api"),
		rc("apix", "", "/apix"),
	}, route.Options{Getenv: noEnv})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	tests := []struct {
		host, path string
		want       string
	}{
		{host: "other.example", path: "/api", want: "api"},
		{host: "other.example", path: "/api/", want: "api"},
		{host: "other.example", path: "/api/queues", want: "api"},
		{host: "other.example", path: "/apix", want: "apix"},
		{host: "other.example", path: "/apix/y", want: "apix"},
		{host: "other.example", path: "/apiy", want: "catch-all"},
		{host: "other.example", path: "/ap", want: "catch-all"},
		{host: "other.example", path: "/api/users", want: "api-users"},
		{host: "other.example", path: "/api/users/u1", want: "api-users"},
		{host: "other.example", path: "/api/usersx", want: "api"},
		{host: "other.example", path: "/", want: "catch-all"},
		{host: "other.example", path: "/anything/else", want: "catch-all"},
		{host: "", path: "/api", want: "api"},
		// A host-specific route beats every any-host route, however long.
		{host: "admin.example.com", path: "/api/users/u1", want: "admin-host-api"},
		{host: "admin.example.com", path: "/api", want: "admin-host-api"},
		{host: "admin.example.com", path: "/apix", want: "admin-host"},
		{host: "admin.example.com", path: "/", want: "admin-host"},
		{host: "sub.admin.example.com", path: "/api", want: "api"},
	}
	for _, tt := range tests {
		t.Run(tt.host+tt.path, func(t *testing.T) {
			r := table.Match(tt.host, tt.path)
			if r == nil || r.Name != tt.want {
				t.Fatalf("Match(%q, %q) = %v, want %s", tt.host, tt.path, r, tt.want)
			}
		})
	}

	t.Run("no catch-all", func(t *testing.T) {
		table, err := route.New([]route.Config{rc("api", "", "/api"), rc("hosted", "a.example", "/")}, route.Options{Getenv: noEnv})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"/", "/apix", "/other"} {
			if r := table.Match("b.example", p); r != nil {
				t.Errorf("Match(b.example, %q) = %s, want nil", p, r.Name)
			}
		}
	})
}

func TestParsedRoute(t *testing.T) {
	table, err := route.New([]route.Config{{
		Name: "users", Host: "Admin.Example.com", PathPrefix: "/api/users/", Upstream: "https://backend.internal:8443/",
		Policy: "data.users.decision", BodyLimit: -1, Labels: map[string]string{"team": "iam"},
		AllowEncodedSlash: true, Timeout: "5s",
	}, {
		Name: "defaults", PathPrefix: "/", Upstream: "http://127.0.0.1:9000", Policy: "users/decision",
	}}, route.Options{Getenv: noEnv})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	rs := table.Routes()
	if len(rs) != 2 {
		t.Fatalf("%d routes", len(rs))
	}
	u := rs[0]
	if u.Name != "users" || u.Host != "admin.example.com" || u.PathPrefix != "/api/users" || u.Upstream.String() != "https://backend.internal:8443" ||
		u.Policy != "data.users.decision" || u.BodyLimit != -1 || u.Labels["team"] != "iam" || !u.AllowEncodedSlash || u.Timeout != 5*time.Second ||
		u.UpstreamAuthorization != "" {
		t.Errorf("parsed route %+v", u)
	}
	d := rs[1]
	if d.BodyLimit != 64<<10 || d.Timeout != 30*time.Second || d.Policy != "data.users.decision" || d.Upstream.Path != "" {
		t.Errorf("defaults not applied: %+v", d)
	}
	if got := table.Policies(); !reflect.DeepEqual(got, []string{"data.users.decision"}) {
		t.Errorf("Policies() = %v", got)
	}
}

func TestConfigErrors(t *testing.T) {
	secrets := t.TempDir()
	emptyFile := filepath.Join(secrets, "empty")
	if err := os.WriteFile(emptyFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(secrets, "pw")
	if err := os.WriteFile(pwFile, []byte("pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SET": "value", "MULTILINE": "a\nb"}
	getenv := func(k string) string { return env[k] }

	with := func(edit func(c *route.Config)) []route.Config {
		c := rc("r", "", "/api")
		edit(&c)
		return []route.Config{c}
	}
	basic := func(a route.AuthConfig) []route.Config {
		a.Type = "basic"
		return with(func(c *route.Config) { c.UpstreamAuth = &a })
	}
	bearer := func(a route.AuthConfig) []route.Config {
		a.Type = "bearer"
		return with(func(c *route.Config) { c.UpstreamAuth = &a })
	}
	tests := []struct {
		name string
		cfgs []route.Config
		want []string // each must appear in the error
	}{
		{name: "no routes", cfgs: nil, want: []string{"routes: at least one route is required"}},
		{name: "missing name", cfgs: with(func(c *route.Config) { c.Name = "" }), want: []string{"routes[0].name: required"}},
		{name: "duplicate name", cfgs: []route.Config{rc("dup", "", "/a"), rc("dup", "", "/b")}, want: []string{"routes[1].name: duplicate", `"dup"`}},
		{name: "duplicate matcher", cfgs: []route.Config{rc("a", "", "/api"), rc("b", "", "/api/")}, want: []string{"routes[1].path_prefix"}},
		{name: "bad host", cfgs: with(func(c *route.Config) { c.Host = "admin.example:8080" }), want: []string{"routes[0].host"}},
		{name: "missing path prefix", cfgs: with(func(c *route.Config) { c.PathPrefix = "" }), want: []string{"routes[0].path_prefix: required"}},
		{name: "non-canonical path prefix", cfgs: with(func(c *route.Config) { c.PathPrefix = "/api/../admin" }), want: []string{"routes[0].path_prefix"}},
		{name: "relative path prefix", cfgs: with(func(c *route.Config) { c.PathPrefix = "api" }), want: []string{"routes[0].path_prefix"}},
		{name: "missing upstream", cfgs: with(func(c *route.Config) { c.Upstream = "" }), want: []string{"routes[0].upstream: required"}},
		{name: "upstream scheme", cfgs: with(func(c *route.Config) { c.Upstream = "ftp://backend" }), want: []string{"routes[0].upstream", "http or https"}},
		{name: "upstream without host", cfgs: with(func(c *route.Config) { c.Upstream = "http:///x" }), want: []string{"routes[0].upstream"}},
		{name: "upstream with path", cfgs: with(func(c *route.Config) { c.Upstream = "http://backend/api" }), want: []string{"routes[0].upstream", "path"}},
		{name: "upstream with query", cfgs: with(func(c *route.Config) { c.Upstream = "http://backend?x=1" }), want: []string{"routes[0].upstream"}},
		{name: "upstream with user info", cfgs: with(func(c *route.Config) { c.Upstream = "http://u:p@backend" }), want: []string{"routes[0].upstream"}},
		{name: "missing policy", cfgs: with(func(c *route.Config) { c.Policy = "" }), want: []string{"routes[0].policy: required"}},
		{name: "bad policy path", cfgs: with(func(c *route.Config) { c.Policy = "gate/de-cision" }), want: []string{"routes[0].policy", "de-cision"}},
		{name: "body limit -2", cfgs: with(func(c *route.Config) { c.BodyLimit = -2 }), want: []string{"routes[0].body_limit", "-2"}},
		{name: "body limit too large", cfgs: with(func(c *route.Config) { c.BodyLimit = 17 << 20 }), want: []string{"routes[0].body_limit"}},
		{name: "timeout x", cfgs: with(func(c *route.Config) { c.Timeout = "x" }), want: []string{"routes[0].timeout", `"x"`}},
		{name: "timeout negative", cfgs: with(func(c *route.Config) { c.Timeout = "-1s" }), want: []string{"routes[0].timeout"}},

		{name: "auth type", cfgs: with(func(c *route.Config) { c.UpstreamAuth = &route.AuthConfig{Type: "digest"} }), want: []string{"routes[0].upstream_auth.type"}},
		{name: "basic without password source", cfgs: basic(route.AuthConfig{Username: "svc"}), want: []string{"routes[0].upstream_auth.password_file", "password_env"}},
		{name: "basic with file and env", cfgs: basic(route.AuthConfig{Username: "svc", PasswordFile: pwFile, PasswordEnv: "SET"}), want: []string{"routes[0].upstream_auth.password_file: set only one"}},
		{name: "basic with unset env", cfgs: basic(route.AuthConfig{Username: "svc", PasswordEnv: "UNSET"}), want: []string{"routes[0].upstream_auth.password_env", "UNSET"}},
		{name: "basic with empty file", cfgs: basic(route.AuthConfig{Username: "svc", PasswordFile: emptyFile}), want: []string{"routes[0].upstream_auth.password_file", "empty"}},
		{name: "basic with missing file", cfgs: basic(route.AuthConfig{Username: "svc", PasswordFile: filepath.Join(secrets, "nope")}), want: []string{"routes[0].upstream_auth.password_file"}},
		{name: "basic without username", cfgs: basic(route.AuthConfig{PasswordEnv: "SET"}), want: []string{"routes[0].upstream_auth.username"}},
		{name: "basic username with colon", cfgs: basic(route.AuthConfig{Username: "a:b", PasswordEnv: "SET"}), want: []string{"routes[0].upstream_auth.username"}},
		{name: "basic with token", cfgs: basic(route.AuthConfig{Username: "svc", PasswordEnv: "SET", TokenEnv: "SET"}), want: []string{"routes[0].upstream_auth.token_file"}},
		{name: "bearer with username", cfgs: bearer(route.AuthConfig{Username: "svc", TokenEnv: "SET"}), want: []string{"routes[0].upstream_auth.username: not valid for type bearer"}},
		{name: "bearer with password", cfgs: bearer(route.AuthConfig{PasswordEnv: "SET", TokenEnv: "SET"}), want: []string{"routes[0].upstream_auth"}},
		{name: "bearer without token source", cfgs: bearer(route.AuthConfig{}), want: []string{"routes[0].upstream_auth.token_file"}},
		{name: "bearer with file and env", cfgs: bearer(route.AuthConfig{TokenFile: pwFile, TokenEnv: "SET"}), want: []string{"routes[0].upstream_auth.token_file: set only one"}},
		{name: "bearer with unset env", cfgs: bearer(route.AuthConfig{TokenEnv: "UNSET"}), want: []string{"routes[0].upstream_auth.token_env", "UNSET"}},
		{name: "bearer with empty file", cfgs: bearer(route.AuthConfig{TokenFile: emptyFile}), want: []string{"routes[0].upstream_auth.token_file", "empty"}},
		{name: "bearer token with newline", cfgs: bearer(route.AuthConfig{TokenEnv: "MULTILINE"}), want: []string{"routes[0].upstream_auth", "control characters"}},

		{
			name: "every error reported with its key",
			cfgs: []route.Config{
				rc("ok", "", "/ok"),
				{Name: "bad", PathPrefix: "/bad", Upstream: "ftp://x", Policy: "a..b", BodyLimit: -2, Timeout: "x"},
			},
			want: []string{"routes[1].upstream", "routes[1].policy", "routes[1].body_limit", "routes[1].timeout"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table, err := route.New(tt.cfgs, route.Options{BaseDir: secrets, Getenv: getenv})
			if err == nil {
				t.Fatalf("New succeeded with routes %v, want an error", table.Routes())
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			// Every line names the route it is about.
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "routes") {
					t.Errorf("error line %q does not name its key", line)
				}
			}
		})
	}
}

func TestUpstreamAuthorization(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"pw":     "s3cret:with colon\r\n",
		"token":  "tok-from-file\n",
		"nested": "tok-nested",
	} {
		p := filepath.Join(dir, name)
		if name == "nested" {
			p = filepath.Join(dir, "secrets", name)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{"RMQ_PASSWORD": "env-pw", "API_TOKEN": "tok-from-env"}
	basicValue := func(user, pw string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
	}
	tests := []struct {
		name string
		auth route.AuthConfig
		want string
	}{
		{name: "basic from file", auth: route.AuthConfig{Type: "basic", Username: "svc", PasswordFile: "pw"}, want: basicValue("svc", "s3cret:with colon")},
		{name: "basic from absolute file", auth: route.AuthConfig{Type: "basic", Username: "svc", PasswordFile: filepath.Join(dir, "pw")}, want: basicValue("svc", "s3cret:with colon")},
		{name: "basic from env", auth: route.AuthConfig{Type: "basic", Username: "guest", PasswordEnv: "RMQ_PASSWORD"}, want: basicValue("guest", "env-pw")},
		{name: "bearer from file", auth: route.AuthConfig{Type: "bearer", TokenFile: "token"}, want: "Bearer tok-from-file"},
		{name: "bearer from nested relative file", auth: route.AuthConfig{Type: "bearer", TokenFile: "secrets/nested"}, want: "Bearer tok-nested"},
		{name: "bearer from env", auth: route.AuthConfig{Type: "bearer", TokenEnv: "API_TOKEN"}, want: "Bearer tok-from-env"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := rc("r", "", "/api")
			c.UpstreamAuth = &tt.auth
			table, err := route.New([]route.Config{c}, route.Options{BaseDir: dir, Getenv: func(k string) string { return env[k] }})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if got := table.Routes()[0].UpstreamAuthorization; got != tt.want {
				t.Fatalf("UpstreamAuthorization = %q, want %q", got, tt.want)
			}
		})
	}
}
