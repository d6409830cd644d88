package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// recorder is a real HTTP upstream that remembers every request it got.
type recorder struct {
	mu   sync.Mutex
	reqs []recorded
	srv  *httptest.Server
}

type recorded struct {
	Method, RequestURI string
	Header             http.Header
	Body               string
}

func newRecorder(t *testing.T) *recorder {
	rec := &recorder{}
	rec.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, recorded{r.Method, r.RequestURI, r.Header.Clone(), string(b)})
		rec.mu.Unlock()
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Decision-Id", "upstream-must-not-override")
		fmt.Fprintf(w, "upstream saw %s %s", r.Method, r.RequestURI)
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

func (r *recorder) take() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reqs
	r.reqs = nil
	return out
}

var (
	secAdmin = demoKey{ID: "admin-1", Secret: "admin-secret-3f9a", Groups: "admin"}
	secUser  = demoKey{ID: "user-1", Secret: "user-secret-77c1", Groups: "dev"}
)

func securityConfig(upstream, policyDir string) string {
	var routes strings.Builder
	for _, r := range []struct{ prefix, rule string }{
		{"/public", "faults/decision"}, {"/admin", "faults/decision"}, {"/internal", "faults/decision"},
		{"/undefined", "faults/undefined_decision"}, {"/error", "faults/error_decision"},
		{"/slow", "faults/slow_decision"}, {"/malformed", "faults/malformed_decision"},
		{"/custom", "faults/custom_deny"},
	} {
		fmt.Fprintf(&routes, "  - name: %s\n    path_prefix: %s\n    upstream: %s\n    policy: %s\n", strings.TrimPrefix(r.prefix, "/"), r.prefix, upstream, r.rule)
	}
	return fmt.Sprintf(`server:
  listen: 127.0.0.1:0
policy:
  dir: %s
  timeout: 100ms
authn:
  api_key_header: X-Api-Key
  api_keys:
%s%sroutes:
%sdecision_log:
  output: file
  path: LOGFILE
  flush_interval: 5ms
`, policyDir, secAdmin.yaml(), secUser.yaml(), routes.String())
}

type securityCase struct {
	Name          string            `yaml:"name"`
	Method        string            `yaml:"method"`
	Target        string            `yaml:"target"`
	As            string            `yaml:"as"`
	Headers       map[string]string `yaml:"headers"`
	Body          string            `yaml:"body"`
	Status        int               `yaml:"status"`
	Upstream      bool              `yaml:"upstream"`
	Code          string            `yaml:"code"`
	UpstreamHas   map[string]string `yaml:"upstream_has"`
	UpstreamLacks []string          `yaml:"upstream_lacks"`
	ResponseHas   map[string]string `yaml:"response_has"`
}

// rawRequest sends exactly the bytes of one HTTP/1.1 request, so targets
// that client libraries would clean (//, .., #) reach the server as written.
func rawRequest(t *testing.T, addr, method, target string, headers map[string]string, body string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: api.test\r\n", method, target)
	for k, v := range headers {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	if body != "" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("Connection: close\r\n\r\n")
	b.WriteString(body)
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// TestSecurityRegressions replays testdata/security/cases.yaml through the
// real server: every bypass class is rejected or denied and never reaches
// the upstream, and every request leaves exactly one decision event.
func TestSecurityRegressions(t *testing.T) {
	raw, err := os.ReadFile(repoPath(t, "testdata/security/cases.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []securityCase
	if err := yaml.Unmarshal(raw, &cases); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder(t)
	g := startGateway(t, securityConfig(rec.srv.URL, repoPath(t, "testdata/security/policy")), nil)
	addr := strings.TrimPrefix(g.URL, "http://")
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			h := map[string]string{}
			switch tc.As {
			case "admin":
				h["Authorization"] = "Bearer " + secAdmin.Secret
			case "user":
				h["Authorization"] = "Bearer " + secUser.Secret
			case "bogus":
				h["Authorization"] = "Bearer not-a-known-key"
			}
			for k, v := range tc.Headers {
				h[k] = v
			}
			resp := rawRequest(t, addr, tc.Method, tc.Target, h, tc.Body)
			body, _ := io.ReadAll(resp.Body)
			ups := rec.take()
			if resp.StatusCode != tc.Status {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, tc.Status, body)
			}
			id := resp.Header.Get("X-Decision-Id")
			if len(id) != 32 {
				t.Fatalf("X-Decision-Id %q, want a 32-hex decision id", id)
			}
			if got := len(ups) > 0; got != tc.Upstream {
				t.Fatalf("upstream called: %v, want %v (%+v)", got, tc.Upstream, ups)
			}
			for k, v := range tc.ResponseHas {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("response header %s = %q, want %q", k, got, v)
				}
			}
			if !tc.Upstream {
				var denial struct {
					Error      string `json:"error"`
					DecisionID string `json:"decision_id"`
				}
				if err := json.Unmarshal(body, &denial); err != nil {
					t.Fatalf("denial body is not JSON: %q", body)
				}
				if denial.DecisionID != id || denial.Error == "" {
					t.Fatalf("denial body %s does not carry code and decision id %s", body, id)
				}
				if tc.Code != "" && denial.Error != tc.Code {
					t.Fatalf("denial code %q, want %q", denial.Error, tc.Code)
				}
				for _, leak := range []string{"evaluate", "rego", "eval_", "divide", "context deadline"} {
					if strings.Contains(string(body), leak) {
						t.Fatalf("internal error text %q reached the client: %s", leak, body)
					}
				}
			} else {
				if len(ups) != 1 {
					t.Fatalf("upstream got %d requests", len(ups))
				}
				up := ups[0]
				ev := g.WaitEvent(t, id)
				if p := at(ev, "input", "request", "path"); up.RequestURI != p && !strings.HasPrefix(up.RequestURI, fmt.Sprint(p)+"?") {
					t.Fatalf("upstream got %q, policy saw path %v", up.RequestURI, p)
				}
				if up.Header.Get("X-Forwarded-For") != "127.0.0.1" {
					t.Errorf("X-Forwarded-For upstream %q, want the TCP peer", up.Header.Get("X-Forwarded-For"))
				}
				if up.Header.Get("X-Policygate-Decision-Id") != id {
					t.Errorf("upstream decision id %q, want %s", up.Header.Get("X-Policygate-Decision-Id"), id)
				}
				if got := resp.Header.Values("X-Decision-Id"); len(got) != 1 {
					t.Errorf("response X-Decision-Id %q: the upstream must not add or replace it", got)
				}
				for k, v := range tc.UpstreamHas {
					if got := up.Header.Get(k); got != v {
						t.Errorf("upstream header %s = %q, want %q", k, got, v)
					}
				}
				for _, k := range tc.UpstreamLacks {
					if got := up.Header.Values(k); len(got) > 0 {
						t.Errorf("upstream received %s: %q", k, got)
					}
				}
			}
			ev := g.WaitEvent(t, id)
			if int(ev["status"].(float64)) != tc.Status {
				t.Errorf("logged status %v, want %d", ev["status"], tc.Status)
			}
		})
	}
	// One request, one event: nothing logged twice, nothing missing.
	seen := map[string]int{}
	for _, ev := range g.Events(t) {
		seen[ev["decision_id"].(string)]++
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("decision %s logged %d times", id, n)
		}
	}
	if len(seen) != len(cases) {
		t.Errorf("%d events for %d requests", len(seen), len(cases))
	}
}
