package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestAdversarialForwardAuthNginxClientOverride: nginx's auth_request sets
// X-Original-Method / X-Original-URI but passes every other client header
// through to the forward-auth endpoint. A client-supplied
// X-Forwarded-Method / X-Forwarded-Uri must not describe the request
// policygate decides.
func TestAdversarialForwardAuthNginxClientOverride(t *testing.T) {
	e := startSampleEnv(t)
	g := startGateway(t, forwardAuthTestConfig(repoPath(t, "policies"), e.backend.URL, true), nil)
	port := freePort(t)
	fa := strings.TrimPrefix(g.ForwardAuthURL, "http://")
	backend := strings.TrimPrefix(e.backend.URL, "http://")
	startNginx(t, func(dir string) string {
		return fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
events { worker_connections 64; }
http {
  access_log %[1]s/access.log;
  client_body_temp_path %[1]s/client_body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  server {
    listen 127.0.0.1:%[2]d;
    location / {
      auth_request /_policygate;
      auth_request_set $pg_subject $upstream_http_x_policygate_subject;
      proxy_set_header X-Policygate-Subject $pg_subject;
      proxy_set_header Authorization "Bearer %[3]s";
      proxy_set_header X-Api-Key "";
      proxy_pass http://%[4]s;
    }
    location = /_policygate {
      internal;
      proxy_pass http://%[5]s;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
    }
  }
}
`, dir, port, backendToken, backend, fa)
	}, port)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	before := e.api.Requests()
	resp, body := e.do(t, base, "DELETE", "/v1/service-accounts/billing.exporter", map[string]string{
		"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/healthz",
	}, "")
	if resp.StatusCode < 400 || e.api.Requests() > before {
		t.Fatalf("anonymous DELETE decided as GET /healthz: status %d, backend reached: %v: %s",
			resp.StatusCode, e.api.Requests() > before, body)
	}
}

// advPolicy allows reads and writes (GET, POST) under /public and nothing
// else: a DELETE there must never reach the upstream.
const advPolicy = `package adv

default decision := false

decision if {
	input.request.method in {"GET", "POST"}
	input.request.segments[0] == "public"
}

# PUT under /public with a ttl of at most a day.
decision if {
	input.request.method == "PUT"
	input.request.segments[0] == "public"
	input.request.body.ttl <= 86400
}
`

// advEnv is a gateway with every front door in front of a recording
// upstream, deciding with the security suite's policies, the
// opa-envoy-plugin example policy and advPolicy.
type advEnv struct {
	g   *gatewayProc
	rec *advRecorder
}

// advRecorder is an upstream that remembers every request, trailers
// included.
type advRecorder struct {
	mu   sync.Mutex
	reqs []advRecorded
	srv  *httptest.Server
}

type advRecorded struct {
	Method, RequestURI string
	Header, Trailer    http.Header
	Body               string
}

func newAdvRecorder(t *testing.T) *advRecorder {
	rec := &advRecorder{}
	rec.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, advRecorded{r.Method, r.RequestURI, r.Header.Clone(), r.Trailer.Clone(), string(b)})
		rec.mu.Unlock()
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "upstream saw %s %s", r.Method, r.RequestURI)
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

func (r *advRecorder) take() []advRecorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reqs
	r.reqs = nil
	return out
}

func startAdvEnv(t *testing.T, trusted bool) *advEnv {
	t.Helper()
	rec := newAdvRecorder(t)
	dir := t.TempDir()
	copyTree(t, repoPath(t, "testdata/security/policy"), dir)
	copyTree(t, repoPath(t, "testdata/extauthz/policy"), filepath.Join(dir, "envoy"))
	if err := os.WriteFile(filepath.Join(dir, "adv.rego"), []byte(advPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	tp := ""
	if trusted {
		tp = "  trusted_proxies: [127.0.0.1/32]\n"
	}
	var routes strings.Builder
	for _, r := range []struct{ prefix, rule, extra string }{
		{"/public", "adv/decision", ""}, {"/admin", "faults/decision", ""},
		{"/echo", "faults/echo", ""}, {"/orders", "envoy/authz/result", "    body_limit: 1024\n"},
	} {
		fmt.Fprintf(&routes, "  - name: %s\n    path_prefix: %s\n    upstream: %s\n    policy: %s\n%s",
			strings.TrimPrefix(r.prefix, "/"), r.prefix, rec.srv.URL, r.rule, r.extra)
	}
	cfg := fmt.Sprintf(`server:
  listen: 127.0.0.1:0
%sforward_auth:
  listen: 127.0.0.1:0
ext_authz:
  listen: 127.0.0.1:0
policy:
  dir: %s
  timeout: 500ms
authn:
  api_key_header: X-Api-Key
  api_keys:
%s%sroutes:
%sdecision_log:
  output: file
  path: LOGFILE
  flush_interval: 5ms
`, tp, dir, secAdmin.yaml(), secUser.yaml(), routes.String())
	return &advEnv{g: startGateway(t, cfg, nil), rec: rec}
}

func (e *advEnv) addr() string { return strings.TrimPrefix(e.g.URL, "http://") }

// sendRaw writes raw bytes to addr and returns the first response.
func sendRaw(t *testing.T, addr, raw string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp
}

func (e *advEnv) extAuthz(t *testing.T) authv3.AuthorizationClient {
	t.Helper()
	conn, err := grpc.NewClient(e.g.ExtAuthzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

func callCheck(t *testing.T, c authv3.AuthorizationClient, cr *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Check(ctx, cr)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return resp
}

// TestAdversarialForwardAuthConflictingHeaders: a trusted proxy that sets
// one convention and passes the client's headers of the other through must
// not let the client's version be decided.
func TestAdversarialForwardAuthConflictingHeaders(t *testing.T) {
	e := startAdvEnv(t, true)
	for _, tc := range []struct {
		name string
		h    map[string]string
	}{
		{"uri and method", map[string]string{"X-Original-Method": "DELETE", "X-Original-URI": "/admin/users",
			"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/public/a"}},
		{"method only", map[string]string{"X-Original-Method": "DELETE", "X-Original-URI": "/public/a",
			"X-Forwarded-Method": "GET"}},
		{"X-Original-URL", map[string]string{"X-Original-Method": "GET", "X-Original-URI": "/admin/users",
			"X-Original-URL": "/public/a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := rawRequest(t, strings.TrimPrefix(e.g.ForwardAuthURL, "http://"), "GET", "/auth", tc.h, "")
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 400 || !strings.Contains(string(body), "ambiguous_original_request") {
				t.Fatalf("status %d body %s, want 400 ambiguous_original_request", resp.StatusCode, body)
			}
			e.g.WaitEvent(t, resp.Header.Get("X-Decision-Id"))
		})
	}
	// Repeating the same description is not ambiguous.
	resp := rawRequest(t, strings.TrimPrefix(e.g.ForwardAuthURL, "http://"), "GET", "/auth", map[string]string{
		"X-Original-Method": "GET", "X-Original-URI": "/public/a", "X-Forwarded-Uri": "/public/a"}, "")
	if resp.StatusCode != 200 {
		t.Fatalf("consistent description: status %d", resp.StatusCode)
	}
}

// TestAdversarialUnderscoreHeaderNames: CGI-style backends (WSGI, PHP,
// Rack, ...) turn both X-Policygate-Subject and X_Policygate_Subject into
// HTTP_X_POLICYGATE_SUBJECT. The underscore spelling of a header the
// gateway strips must not reach the upstream either.
func TestAdversarialUnderscoreHeaderNames(t *testing.T) {
	e := startAdvEnv(t, false)
	resp := rawRequest(t, e.addr(), "GET", "/public/a", map[string]string{
		"X_Policygate_Subject":   "admin-1",
		"X_Original_URL":         "/admin/users",
		"X_Forwarded_For":        "10.0.0.1",
		"X_HTTP_Method_Override": "DELETE",
		"X_Decision_Id":          "forged",
		"Proxy":                  "http://attacker.invalid:3128",
	}, "")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	ups := e.rec.take()
	if len(ups) != 1 {
		t.Fatalf("upstream got %d requests", len(ups))
	}
	for name, vs := range ups[0].Header {
		cgi := strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		switch cgi {
		case "X_POLICYGATE_SUBJECT", "X_ORIGINAL_URL", "X_HTTP_METHOD_OVERRIDE", "X_DECISION_ID", "PROXY":
			t.Errorf("upstream received %s: %q", name, vs)
		case "X_FORWARDED_FOR":
			if name != "X-Forwarded-For" || len(vs) != 1 || vs[0] != "127.0.0.1" {
				t.Errorf("upstream received %s: %q", name, vs)
			}
		}
	}

	t.Run("header the decision sets", func(t *testing.T) {
		resp := rawRequest(t, e.addr(), "GET", "/admin/users", map[string]string{
			"Authorization": "Bearer " + secAdmin.Secret, "X_Gateway_Subject": "someone-else"}, "")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		ups := e.rec.take()
		if len(ups) != 1 {
			t.Fatalf("upstream got %d requests", len(ups))
		}
		if got := ups[0].Header.Get("X-Gateway-Subject"); got != secAdmin.ID {
			t.Errorf("X-Gateway-Subject %q", got)
		}
		if got := ups[0].Header.Values("X_gateway_subject"); len(got) > 0 {
			t.Errorf("upstream received X_Gateway_Subject %q next to the decision's X-Gateway-Subject", got)
		}
	})

	t.Run("ext_authz", func(t *testing.T) {
		resp := callCheck(t, e.extAuthz(t), checkRequest("GET", "/public/a", map[string]string{
			"x_policygate_subject": "admin-1", "x_original_url": "/admin/users", "x_http_method_override": "DELETE"}, ""))
		ok := resp.GetOkResponse()
		if ok == nil {
			t.Fatalf("denied: %v", resp.GetDeniedResponse())
		}
		remove := map[string]bool{}
		for _, h := range ok.GetHeadersToRemove() {
			remove[strings.ToLower(h)] = true
		}
		for _, h := range []string{"x_policygate_subject", "x_original_url", "x_http_method_override"} {
			if !remove[h] {
				t.Errorf("headers_to_remove %v lacks %s", ok.GetHeadersToRemove(), h)
			}
		}
		// The opa-envoy policy sets x-opa-envoy: a client's x_opa_envoy goes.
		resp = callCheck(t, e.extAuthz(t), checkRequest("POST", "/orders?dry_run=true",
			map[string]string{"x_opa_envoy": "forged", "content-type": "application/json"}, `{"amount": 5}`))
		if ok = resp.GetOkResponse(); ok == nil {
			t.Fatalf("denied: %v", resp.GetDeniedResponse())
		}
		if !slices.Contains(ok.GetHeadersToRemove(), "x_opa_envoy") {
			t.Errorf("headers_to_remove %v lacks x_opa_envoy", ok.GetHeadersToRemove())
		}
	})
}

// TestAdversarialRequestTrailers: request trailers are headers the policy
// never saw and header hygiene never ran on; they must not be forwarded.
func TestAdversarialRequestTrailers(t *testing.T) {
	e := startAdvEnv(t, false)
	raw := "POST /public/a HTTP/1.1\r\nHost: api.test\r\nContent-Type: text/plain\r\n" +
		"Transfer-Encoding: chunked\r\nTrailer: X-Policygate-Subject, X-Http-Method-Override\r\nConnection: close\r\n\r\n" +
		"5\r\nhello\r\n0\r\nX-Policygate-Subject: admin-1\r\nX-Http-Method-Override: DELETE\r\n\r\n"
	resp := sendRaw(t, e.addr(), raw)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	ups := e.rec.take()
	if len(ups) != 1 {
		t.Fatalf("upstream got %d requests", len(ups))
	}
	if ups[0].Body != "hello" {
		t.Fatalf("upstream body %q", ups[0].Body)
	}
	if len(ups[0].Trailer) > 0 {
		t.Fatalf("upstream received request trailers %v", ups[0].Trailer)
	}
}

// TestAdversarialFormBodyMethodOverride: Rails, Laravel and Symfony treat
// a _method field of a POST body as the method. It is refused like the
// _method query parameter.
func TestAdversarialFormBodyMethodOverride(t *testing.T) {
	e := startAdvEnv(t, false)
	for _, tc := range []struct{ ct, body string }{
		{"application/x-www-form-urlencoded", "name=x&_method=DELETE"},
		{"application/json", `{"name":"x","_method":"DELETE"}`},
	} {
		resp := rawRequest(t, e.addr(), "POST", "/public/items", map[string]string{"Content-Type": tc.ct}, tc.body)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 400 || !strings.Contains(string(body), "method_override") {
			t.Errorf("%s: status %d body %s, want 400 method_override", tc.ct, resp.StatusCode, body)
		}
	}
	if ups := e.rec.take(); len(ups) > 0 {
		t.Fatalf("upstream reached: %+v", ups)
	}
}

// TestAdversarialDoubleEncodedDotSegment: a backend (or framework) that
// percent-decodes a path twice reads /public/%252e%252e/admin as
// /public/../admin. Dot-segments are refused in every encoding.
func TestAdversarialDoubleEncodedDotSegment(t *testing.T) {
	e := startAdvEnv(t, false)
	for _, target := range []string{
		"/public/%252e%252e/admin/users", "/public/%252E./admin/users", "/public/.%252e/admin/users",
		"/public/%25%32%65%25%32%65/admin/users",
	} {
		resp := rawRequest(t, e.addr(), "GET", target, nil, "")
		if resp.StatusCode != 400 {
			t.Errorf("%s: status %d, want 400", target, resp.StatusCode)
		}
	}
	if ups := e.rec.take(); len(ups) > 0 {
		t.Fatalf("upstream reached: %+v", ups)
	}
	// A literal percent sign is still a valid segment.
	if resp := rawRequest(t, e.addr(), "GET", "/public/100%25", nil, ""); resp.StatusCode != 200 {
		t.Fatalf("/public/100%%25: status %d", resp.StatusCode)
	}
}

// logHas reports whether the raw decision log contains s.
func (e *advEnv) logHas(t *testing.T, id, s string) bool {
	t.Helper()
	e.g.WaitEvent(t, id)
	raw, err := os.ReadFile(e.g.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, `"decision_id":"`+id+`"`) && strings.Contains(line, s) {
			t.Logf("log line holding %q: %s", s, line)
			return true
		}
	}
	return false
}

// TestAdversarialLogSecretsInRefusedTargets: the query of a request-target
// refused before any policy ran still holds credentials, and so does a
// header carrying the original URI; none may reach the decision log.
func TestAdversarialLogSecretsInRefusedTargets(t *testing.T) {
	e := startAdvEnv(t, true)
	const secret = "tok-5e5e-d0-not-log"
	t.Run("absolute-form target", func(t *testing.T) {
		resp := rawRequest(t, e.addr(), "GET", "http://api.test/admin?access_token="+secret, nil, "")
		if resp.StatusCode != 400 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if e.logHas(t, resp.Header.Get("X-Decision-Id"), secret) {
			t.Fatal("decision log holds the access_token of a refused absolute-form target")
		}
	})
	t.Run("user information and fragment", func(t *testing.T) {
		for _, target := range []string{"http://admin:" + secret + "@api.test/admin", "/admin/x#access_token=" + secret} {
			resp := rawRequest(t, e.addr(), "GET", target, nil, "")
			if resp.StatusCode != 400 {
				t.Fatalf("%s: status %d", target, resp.StatusCode)
			}
			if e.logHas(t, resp.Header.Get("X-Decision-Id"), secret) {
				t.Fatalf("decision log holds the credential of refused target %s", target)
			}
		}
	})
	t.Run("ext_authz :path of an allowed request", func(t *testing.T) {
		resp := callCheck(t, e.extAuthz(t), checkRequest("GET", "/public/a?access_token="+secret, nil, ""))
		if resp.GetOkResponse() == nil {
			t.Fatalf("denied: %v", resp.GetDeniedResponse())
		}
		id := resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue()
		if e.logHas(t, id, secret) {
			t.Fatal("decision log holds the access_token of the :path header")
		}
	})
	t.Run("forward-auth original URI", func(t *testing.T) {
		resp := rawRequest(t, strings.TrimPrefix(e.g.ForwardAuthURL, "http://"), "GET", "/auth", map[string]string{
			"X-Original-Method": "GET", "X-Original-URI": "/public/a?access_token=" + secret}, "")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if e.logHas(t, resp.Header.Get("X-Decision-Id"), secret) {
			t.Fatal("decision log holds the access_token of X-Original-URI")
		}
	})
	t.Run("trusted proxy URI header", func(t *testing.T) {
		resp := rawRequest(t, e.addr(), "GET", "/public/a", map[string]string{
			"X-Forwarded-Uri": "/public/a?x=1&access_token=" + secret,
			"Referer":         "https://app.test/cb?code=1&access_token=" + secret}, "")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if e.logHas(t, resp.Header.Get("X-Decision-Id"), secret) {
			t.Fatal("decision log holds an access_token inside a header URI")
		}
	})
	t.Run("ext_authz semicolon query", func(t *testing.T) {
		c := e.extAuthz(t)
		resp := callCheck(t, c, checkRequest("GET", "/public/a?x=1;access_token="+secret, nil, ""))
		if resp.GetDeniedResponse() == nil {
			t.Fatal("semicolon query allowed")
		}
		id := resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue()
		if e.logHas(t, id, secret) {
			t.Fatal("decision log holds the access_token of a refused ext_authz path")
		}
	})
}

// TestAdversarialExtAuthzParsedBody: opa-envoy-plugin policies decide on
// parsed_body; it must be a body the gateway's own strict parser accepts
// (no duplicate keys, no trailing data), else a backend reading the first
// of two "amount" keys is charged what the policy never saw.
func TestAdversarialExtAuthzParsedBody(t *testing.T) {
	e := startAdvEnv(t, false)
	c := e.extAuthz(t)
	for _, tc := range []struct{ name, ct, body string }{
		{"duplicate keys, text/json", "text/json", `{"amount": 5000, "amount": 50}`},
		{"trailing value, text/json", "text/json", `{"amount": 50} {"amount": 5000}`},
		{"duplicate keys over the body limit", "application/json", `{"amount": 5000, "pad": "` + strings.Repeat("x", 2048) + `", "amount": 50}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := callCheck(t, c, checkRequest("POST", "/orders?dry_run=true", map[string]string{"content-type": tc.ct}, tc.body))
			if resp.GetOkResponse() != nil {
				t.Fatalf("allowed a body the policy read differently from a first-key backend")
			}
		})
	}
	// A well-formed small order is still allowed.
	resp := callCheck(t, c, checkRequest("POST", "/orders?dry_run=true", map[string]string{"content-type": "application/json"}, `{"amount": 50}`))
	if resp.GetOkResponse() == nil {
		t.Fatalf("a valid order was denied: %v", resp.GetDeniedResponse())
	}
}

// TestAdversarialJSONCaseFoldedKeys: Go's encoding/json (and other
// case-insensitive binders) fill a struct field from any key equal to its
// name under case folding, the last one winning. A policy reading
// "ttl_seconds" must not be shown one value while the backend binds
// another.
func TestAdversarialJSONCaseFoldedKeys(t *testing.T) {
	e := startAdvEnv(t, false)
	for _, body := range []string{
		`{"ttl_seconds": 60, "TTL_SECONDS": 99999999}`,
		`{"ttl_seconds": 60, "ttl_ſeconds": 99999999}`, // U+017F folds to s
		`{"a": {"role": "viewer", "Role": "admin"}}`,
	} {
		resp := rawRequest(t, e.addr(), "POST", "/public/keys", map[string]string{"Content-Type": "application/json"}, body)
		if resp.StatusCode != 400 {
			t.Errorf("%s: status %d, want 400", body, resp.StatusCode)
		}
	}
	if ups := e.rec.take(); len(ups) > 0 {
		t.Fatalf("upstream reached: %d requests", len(ups))
	}
}

// TestAdversarialSlowBody: a client that announces a JSON body and then
// sends it too slowly (or never) must not hold the request forever; the
// body the policy reads is bounded by server.read_header_timeout too.
func TestAdversarialSlowBody(t *testing.T) {
	rec := newAdvRecorder(t)
	g := startGateway(t, fmt.Sprintf(`server:
  listen: 127.0.0.1:0
  read_header_timeout: 500ms
policy:
  dir: %s
routes:
  - name: all
    path_prefix: /
    upstream: %s
    policy: faults/echo
decision_log:
  output: file
  path: LOGFILE
  flush_interval: 5ms
`, repoPath(t, "testdata/security/policy"), rec.srv.URL), nil)
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(g.URL, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	_, err = io.WriteString(conn, "POST /x HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer within %v: %v", time.Since(start), err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d body %s, want 408", resp.StatusCode, body)
	}
	if len(rec.take()) > 0 {
		t.Fatal("upstream reached")
	}
	g.WaitEvent(t, resp.Header.Get("X-Decision-Id"))
}

// TestAdversarialBodyContentType: the policy must not be shown no body
// (or a differently decoded one) while the backend parses it. Bodies a
// backend would decode with another charset (Django honours
// charset=utf-7: {"role":"+AGE-dmin"} is "admin" there), with a second
// Content-Type, or with a JSON type the gateway cannot parse, are refused.
func TestAdversarialBodyContentType(t *testing.T) {
	e := startAdvEnv(t, false)
	for _, tc := range []struct {
		name string
		raw  string
	}{
		{"utf-7 JSON", "Content-Type: application/json; charset=utf-7\r\n"},
		{"utf-16 form", "Content-Type: application/x-www-form-urlencoded; charset=UTF-16\r\n"},
		{"two Content-Types", "Content-Type: text/plain\r\nContent-Type: application/json\r\n"},
		{"duplicate parameter", "Content-Type: application/json; charset=utf-8; charset=utf-7\r\n"},
		{"bad parameter", "Content-Type: application/json; =x\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := `{"role":"+AGE-dmin"}`
			resp := sendRaw(t, e.addr(), "POST /public/users HTTP/1.1\r\nHost: api.test\r\n"+tc.raw+
				fmt.Sprintf("Content-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body))
			if resp.StatusCode != 400 {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("status %d %s, want 400", resp.StatusCode, b)
			}
		})
	}
	if ups := e.rec.take(); len(ups) > 0 {
		t.Fatalf("upstream reached: %d requests", len(ups))
	}
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "application/json;charset=UTF-8", "text/plain"} {
		resp := rawRequest(t, e.addr(), "POST", "/public/users", map[string]string{"Content-Type": ct}, `{"role":"viewer"}`)
		if resp.StatusCode != 200 {
			t.Errorf("%s: status %d, want 200", ct, resp.StatusCode)
		}
	}
}

// TestAdversarialPathologicalNumbers: a JSON number whose exponent OPA
// cannot handle made the policy evaluation panic (a 1e100000000 compared
// with <=): through ext_authz that killed the process, through the proxy it
// dropped the connection without a decision event. Such numbers are refused
// before any evaluation.
func TestAdversarialPathologicalNumbers(t *testing.T) {
	e := startAdvEnv(t, false)
	for _, n := range []string{"1e100000000", "-1E100000000", "1e-100000000", "1e1000000", "1" + strings.Repeat("0", 200)} {
		body := `{"ttl": ` + n + `}`
		t.Run("proxy "+n[:min(len(n), 12)], func(t *testing.T) {
			resp := rawRequest(t, e.addr(), "PUT", "/public/keys", map[string]string{"Content-Type": "application/json"}, body)
			if resp.StatusCode != 400 {
				t.Fatalf("status %d, want 400", resp.StatusCode)
			}
			e.g.WaitEvent(t, resp.Header.Get("X-Decision-Id"))
		})
		t.Run("ext_authz "+n[:min(len(n), 12)], func(t *testing.T) {
			resp := callCheck(t, e.extAuthz(t), checkRequest("POST", "/orders?dry_run=true",
				map[string]string{"content-type": "application/json"}, `{"amount": `+n+`}`))
			if resp.GetOkResponse() != nil {
				t.Fatal("allowed")
			}
		})
	}
	if ups := e.rec.take(); len(ups) > 0 {
		t.Fatalf("upstream reached: %d requests", len(ups))
	}
	// Ordinary numbers still decide.
	resp := rawRequest(t, e.addr(), "PUT", "/public/keys", map[string]string{"Content-Type": "application/json"}, `{"ttl": 3.6e3}`)
	if resp.StatusCode != 200 {
		t.Fatalf("ordinary ttl: status %d", resp.StatusCode)
	}
}

// TestAdversarialUnreadableForwardedHop: walking a trusted proxy's
// X-Forwarded-For from the right, a hop that is not an address ("unknown",
// as RFC 7239 proxies write) must not leave the client at the last trusted
// hop: the caller would be judged as that internal proxy.
func TestAdversarialUnreadableForwardedHop(t *testing.T) {
	rec := newAdvRecorder(t)
	cfg := securityConfig(rec.srv.URL, repoPath(t, "testdata/security/policy"))
	cfg = strings.Replace(cfg, "server:\n  listen: 127.0.0.1:0\n", "server:\n  listen: 127.0.0.1:0\n  trusted_proxies: [127.0.0.1/32, 10.0.0.0/8]\n", 1)
	g := startGateway(t, cfg, nil)
	addr := strings.TrimPrefix(g.URL, "http://")
	for _, xff := range []string{"unknown, 10.0.0.1", "_hidden, 10.0.0.1", "10.0.0.1:80x, 10.0.0.1"} {
		resp := rawRequest(t, addr, "GET", "/internal/x", map[string]string{"X-Forwarded-For": xff}, "")
		if resp.StatusCode != 403 {
			t.Errorf("X-Forwarded-For %q: status %d, want 403", xff, resp.StatusCode)
		}
	}
	if ups := rec.take(); len(ups) > 0 {
		t.Fatalf("upstream reached %d times", len(ups))
	}
	// A hop written with its port is still that address.
	for xff, want := range map[string]string{"203.0.113.7:5555": "203.0.113.7", "[2001:db8::1]:443, 10.0.0.1": "2001:db8::1", "10.0.0.1": "10.0.0.1"} {
		resp := rawRequest(t, addr, "GET", "/public/a", map[string]string{"X-Forwarded-For": xff}, "")
		ev := g.WaitEvent(t, resp.Header.Get("X-Decision-Id"))
		if got := at(ev, "input", "request", "remote_addr"); got != want {
			t.Errorf("X-Forwarded-For %q: remote_addr %v, want %s", xff, got, want)
		}
	}
}
