package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/policygate/policygate/testdata/bench/rbac"
)

// BenchmarkHandler drives the whole reverse-proxy front door as `run`
// builds it — canonicalization, RS256 JWT verification against a JWKS file,
// input building, the reference RBAC policy (testdata/bench/rbac), the
// decision log written to a file, and httputil.ReverseProxy to a loopback
// upstream — with the request mix of `make bench`: three allowed GETs to one
// allowed POST from eight callers. "plain" is the same upstream behind a
// bare httputil.ReverseProxy, the floor every other case is measured
// against. It reports numbers; nothing here asserts a duration.
func BenchmarkHandler(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"svc-bench","kind":"service_account","status":"active"}`+"\n")
	}))
	b.Cleanup(up.Close)
	dir := b.TempDir()
	reqs := benchRequests(b, dir)

	b.Run("plain", func(b *testing.B) {
		target, _ := url.Parse(up.URL)
		tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}
		b.Cleanup(tr.CloseIdleConnections)
		rp := &httputil.ReverseProxy{Transport: tr, Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = target.Host
		}}
		serveMix(b, rp, reqs)
	})
	for _, c := range []struct{ name, route, top string }{
		{name: "uncached"},
		{name: "cached", route: "    cache_ttl: 30s\n", top: "decision_cache:\n  size: 100000\n"},
		{name: "ratelimited-memory", route: "    rate_limit:\n      limits: [{key: \"caller:{subject}\", limit: 100000000, period: 1m}]\n"},
	} {
		b.Run(c.name, func(b *testing.B) {
			cfg := fmt.Sprintf(`server:
  listen: 127.0.0.1:0
policy:
  dir: %q
  name: rbac
authn:
  jwt:
    jwks_file: %q
    issuer: %s
    audiences: [policygate]
    algorithms: [RS256]
routes:
  - name: bench
    path_prefix: /
    upstream: %s
    policy: rbac/decision
%sdecision_log:
  output: file
  path: %q
%s`, repoPath(b, "testdata/bench/rbac"), filepath.Join(dir, "jwks.json"), benchIssuer, up.URL, c.route,
				filepath.Join(b.TempDir(), "decisions.jsonl"), c.top)
			path := filepath.Join(b.TempDir(), "policygate.yaml")
			if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
				b.Fatal(err)
			}
			g, err := build(context.Background(), path, slog.New(slog.DiscardHandler), io.Discard)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				if err := g.close(); err != nil {
					b.Error(err)
				}
			})
			serveMix(b, g.handler, reqs)
		})
	}
}

const benchIssuer = "https://idp.bench.invalid"

// benchRequest is one request of the mix, as the server would receive it.
type benchRequest struct {
	method, target, token, body string
}

// benchRequests writes the JWKS to dir and returns the mix: eight callers
// holding the roles of rbac.Caller, each sending GET keys, GET policies,
// POST tokens, GET keys.
func benchRequests(b *testing.B, dir string) []benchRequest {
	b.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &priv.PublicKey, KeyID: "bench", Algorithm: "RS256", Use: "sig"}}}
	raw, _ := json.Marshal(set)
	if err := os.WriteFile(filepath.Join(dir, "jwks.json"), raw, 0o600); err != nil {
		b.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: priv},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "bench"))
	if err != nil {
		b.Fatal(err)
	}
	roles := rbac.Caller().Claims["roles"]
	var out []benchRequest
	for i := range 8 {
		now := time.Now()
		token, err := jwt.Signed(signer).Claims(jwt.Claims{
			Issuer: benchIssuer, Subject: fmt.Sprintf("svc-bench-%d", i), Audience: jwt.Audience{"policygate"},
			IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Hour)),
		}).Claims(map[string]any{"roles": roles}).Serialize()
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range []rbac.Request{rbac.Mix[0], rbac.Mix[1], rbac.Mix[3], rbac.Mix[0]} {
			br := benchRequest{method: r.Method, target: r.Path, token: token}
			if r.Method == http.MethodPost {
				br.body = `{"name":"bench-key","ttl_seconds":3600}`
			}
			out = append(out, br)
		}
	}
	return out
}

// serveMix checks that h allows every request of the mix, then serves the
// mix in a loop.
func serveMix(b *testing.B, h http.Handler, reqs []benchRequest) {
	b.Helper()
	serve := func(r benchRequest) int {
		var body io.Reader = http.NoBody
		if r.body != "" {
			body = strings.NewReader(r.body)
		}
		req := httptest.NewRequest(r.method, r.target, body)
		req.RemoteAddr = "127.0.0.1:40000"
		req.Header.Set("Authorization", "Bearer "+r.token)
		req.Header.Set("User-Agent", "policygate-bench/1")
		req.Header.Set("Accept", "application/json")
		if r.body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	for _, r := range reqs {
		if code := serve(r); code != http.StatusOK {
			b.Fatalf("%s %s: status %d, want 200", r.method, r.target, code)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if code := serve(reqs[i%len(reqs)]); code != http.StatusOK {
			b.Fatalf("status %d", code)
		}
		i++
	}
}
