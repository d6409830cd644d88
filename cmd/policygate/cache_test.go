package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/policygate/policygate/bundles"
)

// cachePolicy opens /public to alice while data.gw.open is true.
const cachePolicy = `package gw

default decision := {"allow": false, "reason": "denied"}

decision := {"allow": true} if {
	input.request.segments[0] == "public"
	input.identity.subject == "alice"
	data.gw.open
}
`

var (
	cacheKeyA = demoKey{ID: "alice", Secret: "cache-a-secret-31", Groups: "ops"}
	cacheKeyB = demoKey{ID: "bob", Secret: "cache-b-secret-47", Groups: "ops"}
)

func cacheBundle(t *testing.T, rev string, open bool) []byte {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{
		".manifest":    `{"roots": ["gw"]}`,
		"gw/gw.rego":   cachePolicy,
		"gw/data.json": fmt.Sprintf(`{"open": %t}`, open),
	} {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := bundles.Build(dir, bundles.BuildOptions{Revision: rev})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := bundles.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestDecisionCacheEndToEnd runs the gateway with the decision cache on and
// a route default ttl, through all three front doors: a cached allow for
// token A is never served to token B or to no token (FAULTS.md "cache key
// too narrow"), and the very next request after a new revision is active
// is decided by it on every front door ("stale after policy change").
func TestDecisionCacheEndToEnd(t *testing.T) {
	host := newBundleHost(t)
	host.publish(cacheBundle(t, "r1", true), `"r1"`)
	cfg := fmt.Sprintf(`server:
  listen: 127.0.0.1:0
  trusted_proxies: [127.0.0.1/32]
admin:
  listen: 127.0.0.1:0
forward_auth:
  listen: 127.0.0.1:0
ext_authz:
  listen: 127.0.0.1:0
bundles:
  - name: authz
    url: %s
    polling: {min_delay: 20ms, max_delay: 50ms}
    long_polling_timeout: 5s
    timeout: 2s
persistence_dir: %s
authn:
  api_key_header: X-Api-Key
  api_keys:
%s%sroutes:
  - name: all
    path_prefix: /
    upstream: %s
    policy: gw/decision
    cache_ttl: 10m
decision_cache:
  size: 1000
decision_log:
  output: file
  path: LOGFILE
  flush_interval: 5ms
`, host.URL+"/bundles/authz.tar.gz", t.TempDir(), cacheKeyA.yaml(), cacheKeyB.yaml(), okUpstream(t).URL)
	g := startGateway(t, cfg, nil)
	waitRevision(t, g, "r1")

	c := &http.Client{Timeout: 5 * time.Second}
	proxyGet := func(t *testing.T, key *demoKey) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", g.URL+"/public/x", nil)
		if key != nil {
			req.Header.Set("X-Api-Key", key.Secret)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Decision-Id")
	}
	forwardAuth := func(t *testing.T, key *demoKey) int {
		t.Helper()
		req, _ := http.NewRequest("GET", g.ForwardAuthURL+"/", nil)
		req.Header.Set("X-Original-URI", "/public/x")
		req.Header.Set("X-Original-Method", "GET")
		req.Header.Set("X-Api-Key", key.Secret)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	conn, err := grpc.NewClient(g.ExtAuthzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	extAuthz := func(t *testing.T, key *demoKey) codes.Code {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := client.Check(ctx, checkRequest("GET", "/public/x", map[string]string{"x-api-key": key.Secret}, ""))
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return codes.Code(resp.GetStatus().GetCode())
	}

	// Token A is allowed, and the second time from the cache.
	if code, _ := proxyGet(t, &cacheKeyA); code != http.StatusOK {
		t.Fatalf("A: %d, want 200", code)
	}
	code, id := proxyGet(t, &cacheKeyA)
	if code != http.StatusOK {
		t.Fatalf("A again: %d, want 200", code)
	}
	if hit := g.WaitEvent(t, id)["cache_hit"]; hit != true {
		t.Fatalf("A again: cache_hit %v, want true", hit)
	}
	// Token B and no token are decided afresh.
	for _, tc := range []struct {
		name string
		key  *demoKey
	}{{"B", &cacheKeyB}, {"no token", nil}} {
		code, id := proxyGet(t, tc.key)
		if code != http.StatusForbidden {
			t.Fatalf("%s after A's cached allow: %d, want 403", tc.name, code)
		}
		if hit := g.WaitEvent(t, id)["cache_hit"]; hit != false {
			t.Fatalf("%s: cache_hit %v, want false", tc.name, hit)
		}
	}
	if code := forwardAuth(t, &cacheKeyA); code != http.StatusOK {
		t.Fatalf("forward_auth A under r1: %d, want 200", code)
	}
	if code := extAuthz(t, &cacheKeyA); code != codes.OK {
		t.Fatalf("ext_authz A under r1: %v, want OK", code)
	}
	if code := forwardAuth(t, &cacheKeyB); code != http.StatusForbidden {
		t.Fatalf("forward_auth B: %d, want 403", code)
	}

	// r2 closes /public: the very next request on every front door is
	// decided by r2, although r1's allow for A is cached for 10 minutes.
	host.publish(cacheBundle(t, "r2", false), `"r2"`)
	waitRevision(t, g, "r2")
	code, id = proxyGet(t, &cacheKeyA)
	if code != http.StatusForbidden {
		t.Fatalf("proxy: first request after r2 = %d, want 403", code)
	}
	if rev := at(g.WaitEvent(t, id), "bundles", "authz", "revision"); rev != "r2" {
		t.Fatalf("decision log revision %v, want r2", rev)
	}
	if code := forwardAuth(t, &cacheKeyA); code != http.StatusForbidden {
		t.Fatalf("forward_auth: first request after r2 = %d, want 403", code)
	}
	if code := extAuthz(t, &cacheKeyA); code != codes.PermissionDenied {
		t.Fatalf("ext_authz: first request after r2 = %v, want PermissionDenied", code)
	}

	// The decision-side metrics are on the admin listener. The front doors
	// build the same input for the same call, so they share entries: A's
	// r1 allow was reused three times (proxy, forward_auth, ext_authz),
	// B's deny once (forward_auth), A's r2 deny twice.
	resp, err := c.Get(g.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`policygate_decision_duration_seconds_count{cache="hit",outcome="allow",path="data.gw.decision"} 3`,
		`policygate_decision_duration_seconds_count{cache="miss",outcome="deny",path="data.gw.decision"}`,
		`policygate_eval_duration_seconds_count{path="data.gw.decision"}`,
		`policygate_decision_cache_hits_total 6`,
		`policygate_decision_cache_misses_total`,
		`policygate_decision_cache_evictions_total 0`,
		`policygate_decision_cache_entries`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", body)
	}
}
