// Command sidecar is the benchmark's comparison point for the sidecar
// pattern: a tuned reverse proxy that, for every request, verifies the
// bearer JWT with go-jose (as policygate does), builds the same input
// document as policygate, asks an OPA server over REST
// (POST /v1/data/<rule> with {"input": ...}) and enforces the answer. It
// listens on a loopback address only.
//
//	sidecar -addr 127.0.0.1:9303 -upstream http://127.0.0.1:9301 \
//	    -opa http://127.0.0.1:8181 -rule rbac/decision \
//	    -jwks jwks.json -issuer https://issuer.example -audience policygate
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/testdata/bench/internal/tuned"
)

const (
	// bodyLimit is the largest JSON body parsed for the policy, policygate's
	// default body_limit.
	bodyLimit = 64 << 10
	// leeway is the clock skew tolerated on exp, nbf and iat, policygate's
	// default.
	leeway = 30 * time.Second
	// opaTimeout bounds one decision request, policygate's default
	// policy.timeout.
	opaTimeout = time.Second
)

func main() {
	var s sidecar
	addr := flag.String("addr", "127.0.0.1:9303", "loopback listen address")
	upstream := flag.String("upstream", "http://127.0.0.1:9301", "upstream URL (scheme and host)")
	opa := flag.String("opa", "http://127.0.0.1:8181", "OPA server URL")
	rule := flag.String("rule", "rbac/decision", "rule path asked for every request")
	jwks := flag.String("jwks", "", "JSON Web Key Set file with the verification keys (required)")
	flag.StringVar(&s.issuer, "issuer", "", "required iss claim (required)")
	audience := flag.String("audience", "", "required aud claim (required)")
	idle := flag.Int("idle", 256, "idle keep-alive connections kept per host; at least the client connections")
	flag.Parse()
	if err := s.init(*upstream, *opa, *rule, *jwks, *audience, *idle); err != nil {
		fmt.Fprintln(os.Stderr, "sidecar:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := tuned.Serve(ctx, *addr, &s); err != nil {
		fmt.Fprintln(os.Stderr, "sidecar:", err)
		os.Exit(1)
	}
}

// sidecar is the proxy; it is immutable after init.
type sidecar struct {
	issuer   string
	audience string
	keys     map[string]jose.JSONWebKey // by kid
	algs     []jose.SignatureAlgorithm
	decide   string // OPA data API URL of the rule
	opa      *http.Client
	proxy    *httputil.ReverseProxy
}

func (s *sidecar) init(upstream, opa, rule, jwksFile, audience string, idle int) error {
	target, err := url.Parse(upstream)
	if err != nil || target.Host == "" {
		return fmt.Errorf("-upstream %q: want scheme://host:port", upstream)
	}
	opaURL, err := url.Parse(opa)
	if err != nil || opaURL.Host == "" {
		return fmt.Errorf("-opa %q: want scheme://host:port", opa)
	}
	if jwksFile == "" || s.issuer == "" || audience == "" {
		return errors.New("-jwks, -issuer and -audience are required")
	}
	raw, err := os.ReadFile(jwksFile)
	if err != nil {
		return err
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil {
		return fmt.Errorf("%s: %w", jwksFile, err)
	}
	s.keys = make(map[string]jose.JSONWebKey)
	seen := map[jose.SignatureAlgorithm]bool{}
	for _, k := range set.Keys {
		if !k.IsPublic() || k.KeyID == "" || k.Algorithm == "" {
			return fmt.Errorf("%s: every key must be public with a kid and an alg", jwksFile)
		}
		s.keys[k.KeyID] = k
		if alg := jose.SignatureAlgorithm(k.Algorithm); !seen[alg] {
			seen[alg] = true
			s.algs = append(s.algs, alg)
		}
	}
	if len(s.keys) == 0 {
		return fmt.Errorf("%s: no keys", jwksFile)
	}
	s.audience = audience
	s.decide = opaURL.JoinPath("v1", "data", strings.Trim(rule, "/")).String()
	s.opa = &http.Client{Transport: tuned.Transport(idle), Timeout: opaTimeout}
	s.proxy = tuned.ReverseProxy(target, idle)
	return nil
}

func (s *sidecar) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ident, err := s.authenticate(r.Header)
	if err != nil {
		deny(w, http.StatusUnauthorized, "invalid_credentials")
		return
	}
	in, err := s.input(r, ident)
	if err != nil {
		deny(w, http.StatusBadRequest, "bad_body")
		return
	}
	allow, err := s.ask(r.Context(), in)
	switch {
	case err != nil:
		deny(w, http.StatusServiceUnavailable, "policy_error")
		return
	case !allow:
		deny(w, http.StatusForbidden, "forbidden")
		return
	}
	r.Header.Del("Authorization") // the upstream never sees the client's credential
	s.proxy.ServeHTTP(w, r)
}

// authenticate verifies a bearer JWT: signature against the key named by
// kid, then exp (required), nbf, iat, iss and aud with leeway. No
// credential is an anonymous caller.
func (s *sidecar) authenticate(h http.Header) (decision.Identity, error) {
	auth := h.Values("Authorization")
	if len(auth) == 0 {
		return decision.Anonymous(), nil
	}
	scheme, token, ok := strings.Cut(auth[0], " ")
	if len(auth) > 1 || !ok || !strings.EqualFold(scheme, "Bearer") {
		return decision.Identity{}, errors.New("unsupported credential")
	}
	tok, err := jwt.ParseSigned(token, s.algs)
	if err != nil {
		return decision.Identity{}, err
	}
	hdr := tok.Headers[0]
	key, ok := s.keys[hdr.KeyID]
	if !ok || key.Algorithm != hdr.Algorithm {
		return decision.Identity{}, errors.New("unknown key")
	}
	var std jwt.Claims
	var claims map[string]any
	if err := tok.Claims(key.Key, &std, &claims); err != nil {
		return decision.Identity{}, err
	}
	if std.Expiry == nil {
		return decision.Identity{}, errors.New("exp required")
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: s.issuer, AnyAudience: jwt.Audience{s.audience}, Time: time.Now()}, leeway); err != nil {
		return decision.Identity{}, err
	}
	if std.Subject == "" {
		return decision.Identity{}, errors.New("sub required")
	}
	groups := []string{}
	if gs, ok := claims["groups"].([]any); ok {
		for _, g := range gs {
			if g, ok := g.(string); ok {
				groups = append(groups, g)
			}
		}
	}
	return decision.Identity{
		Authenticated: true,
		Method:        decision.MethodJWT,
		Subject:       std.Subject,
		Issuer:        std.Issuer,
		KeyID:         hdr.KeyID,
		Groups:        groups,
		Claims:        claims,
	}, nil
}

// input builds the same document policygate gives its policies. A JSON body
// within bodyLimit is parsed for the policy and replayed to the upstream.
func (s *sidecar) input(r *http.Request, ident decision.Identity) (*decision.Input, error) {
	path := r.URL.EscapedPath()
	segments := []string{}
	for _, seg := range strings.Split(path, "/") {
		if seg == "" {
			continue
		}
		if u, err := url.PathUnescape(seg); err == nil {
			seg = u
		}
		segments = append(segments, seg)
	}
	headers := make(map[string]string, len(r.Header))
	for name, vs := range r.Header {
		switch name {
		case "Authorization", "Proxy-Authorization", "Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
			continue
		}
		headers[strings.ToLower(name)] = strings.Join(vs, ",")
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	peer := r.RemoteAddr
	if h, _, err := net.SplitHostPort(peer); err == nil {
		peer = h
	}
	in := &decision.Input{
		Request: decision.Request{
			ID:         decision.NewID(),
			Method:     r.Method,
			Scheme:     "http",
			Host:       strings.ToLower(host),
			Path:       path,
			RawPath:    path,
			Segments:   segments,
			Query:      r.URL.Query(),
			Headers:    headers,
			RemoteAddr: peer,
		},
		Identity: ident,
		Route:    decision.Route{Name: "bench", Labels: map[string]string{}},
	}
	if r.Body == nil || r.Body == http.NoBody {
		return in, nil
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/json" && !strings.HasSuffix(mt, "+json") {
		return in, nil
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, bodyLimit+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > bodyLimit {
		in.Request.BodyTruncated = true
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(raw), r.Body), r.Body}
		return in, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&in.Request.Body); err != nil {
		return nil, err
	}
	r.Body = io.NopCloser(bytes.NewReader(raw))
	return in, nil
}

// ask posts the input to OPA and reads the decision: a boolean, or an
// object whose allow (or allowed) is true. Anything else denies.
func (s *sidecar) ask(ctx context.Context, in *decision.Input) (bool, error) {
	payload, err := json.Marshal(struct {
		Input *decision.Input `json:"input"`
	}{in})
	if err != nil {
		return false, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.decide, bytes.NewReader(payload))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.opa.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return false, fmt.Errorf("opa: status %d", resp.StatusCode)
	}
	var out struct {
		Result json.RawMessage `json:"result"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return false, fmt.Errorf("opa: %w", err)
	}
	var b bool
	if json.Unmarshal(out.Result, &b) == nil {
		return b, nil
	}
	var obj struct {
		Allow   *bool `json:"allow"`
		Allowed *bool `json:"allowed"`
	}
	if err := json.Unmarshal(out.Result, &obj); err != nil {
		return false, nil // undefined (no result) or not an object: deny
	}
	switch {
	case obj.Allow != nil:
		return *obj.Allow, nil
	case obj.Allowed != nil:
		return *obj.Allowed, nil
	}
	return false, nil
}

func deny(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, "{\"error\":%q}\n", code)
}
