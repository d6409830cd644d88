package authn_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/gateway/authn"
)

const (
	issuer   = "https://idp.example.test"
	audience = "policygate"
	// waitTimeout bounds every wait on an event in these tests.
	waitTimeout = 5 * time.Second
)

var baseTime = time.Unix(1_900_000_000, 0)

// clock is an injectable clock the tests move by hand.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(baseTime.UnixNano())
	return c
}

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
	rsaErr  error
)

// testRSAKey generates one RSA key per test binary: RSA generation is the
// slowest step of these tests.
func testRSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	rsaOnce.Do(func() { rsaKey, rsaErr = rsa.GenerateKey(rand.Reader, 2048) })
	if rsaErr != nil {
		t.Fatal(rsaErr)
	}
	return rsaKey
}

func newEdKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

// sign returns a compact JWS of claims; kid "" leaves the header out.
func sign(t testing.TB, priv any, alg jose.SignatureAlgorithm, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: priv}, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// claims returns a valid claim set at now, changed by mods.
func claims(now time.Time, mods ...func(map[string]any)) map[string]any {
	c := map[string]any{
		"iss":    issuer,
		"aud":    []string{"other", audience},
		"sub":    "ci-pipeline",
		"iat":    now.Unix(),
		"nbf":    now.Add(-time.Minute).Unix(),
		"exp":    now.Add(5 * time.Minute).Unix(),
		"groups": []string{"ops", "rotators"},
		"tenant": "acme",
	}
	for _, m := range mods {
		m(c)
	}
	return c
}

func set(k string, v any) func(map[string]any) { return func(c map[string]any) { c[k] = v } }
func del(k string) func(map[string]any)        { return func(c map[string]any) { delete(c, k) } }

func jwks(t testing.TB, keys ...jose.JSONWebKey) []byte {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pub returns the public JWK of a private key.
func pub(priv any, kid string) jose.JSONWebKey {
	k := jose.JSONWebKey{Key: priv, KeyID: kid, Use: "sig"}
	return k.Public()
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

func basic(user, pass string) http.Header {
	return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}}
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// jwksServer serves a JWKS over TLS on 127.0.0.1 and counts fetches.
type jwksServer struct {
	srv    *httptest.Server
	body   atomic.Pointer[[]byte]
	status atomic.Int32
	hits   atomic.Int32
}

func newJWKSServer(t *testing.T, body []byte) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.setBody(body)
	s.status.Store(http.StatusOK)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if r.URL.Path == "/downgrade" {
			// TEST-NET-3: never contacted, the redirect must be refused first.
			http.Redirect(w, r, "http://203.0.113.7/jwks", http.StatusFound)
			return
		}
		if st := int(s.status.Load()); st != http.StatusOK {
			http.Error(w, "unavailable", st)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(*s.body.Load())
	}))
	s.srv.Listener.Close()
	s.srv.Listener = ln
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *jwksServer) setBody(b []byte) { s.body.Store(&b) }

func newURLAuthenticator(t *testing.T, s *jwksServer, clk *clock, log *slog.Logger) *authn.Authenticator {
	t.Helper()
	a, err := authn.New(authn.Config{JWT: &authn.JWTConfig{
		JWKSURL:   s.srv.URL + "/.well-known/jwks.json",
		Issuer:    issuer,
		Audiences: []string{audience},
	}}, authn.Options{HTTPClient: s.srv.Client(), Now: clk.Now, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func wantInvalid(t *testing.T, id decision.Identity, err error, contains string) {
	t.Helper()
	if !errors.Is(err, authn.ErrInvalidCredentials) {
		t.Fatalf("err = %v, want ErrInvalidCredentials", err)
	}
	if !reflect.DeepEqual(id, decision.Identity{}) {
		t.Errorf("identity = %+v, want zero", id)
	}
	if contains != "" && !strings.Contains(err.Error(), contains) {
		t.Errorf("err = %q, want it to contain %q", err, contains)
	}
}

func TestJWT(t *testing.T) {
	rsaPriv := testRSAKey(t)
	edPriv := newEdKey(t)
	strangerPriv := newEdKey(t)
	dir := t.TempDir()
	writeFile(t, dir, "jwks.json", jwks(t, pub(rsaPriv, "rsa1"), pub(edPriv, "ed1")))
	clk := newClock()
	a, err := authn.New(authn.Config{JWT: &authn.JWTConfig{
		JWKSFile:  "jwks.json",
		Issuer:    issuer,
		Audiences: []string{audience, "second"},
	}}, authn.Options{BaseDir: dir, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	now := baseTime

	pubDER, err := x509.MarshalPKIXPublicKey(&rsaPriv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})

	valid := sign(t, rsaPriv, jose.RS256, "rsa1", claims(now))
	parts := strings.Split(valid, ".")
	tampered := parts[0] + "." + b64(`{"iss":"`+issuer+`","aud":"policygate","sub":"root","exp":1900000300}`) + "." + parts[2]

	tests := []struct {
		name       string
		token      string
		wantErr    string // "" for success
		wantSub    string
		wantKID    string
		wantGroups []string
	}{
		{name: "valid RS256", token: valid, wantSub: "ci-pipeline", wantKID: "rsa1", wantGroups: []string{"ops", "rotators"}},
		{name: "valid EdDSA", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now)), wantSub: "ci-pipeline", wantKID: "ed1", wantGroups: []string{"ops", "rotators"}},
		{name: "no kid picks the only compatible key", token: sign(t, rsaPriv, jose.RS256, "", claims(now)), wantSub: "ci-pipeline", wantGroups: []string{"ops", "rotators"}},
		{name: "audience string matching the second configured", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("aud", "second"))), wantSub: "ci-pipeline", wantKID: "ed1", wantGroups: []string{"ops", "rotators"}},
		{name: "groups as space-separated string", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("groups", "a  b c"))), wantSub: "ci-pipeline", wantKID: "ed1", wantGroups: []string{"a", "b", "c"}},
		{name: "no groups claim", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, del("groups"))), wantSub: "ci-pipeline", wantKID: "ed1", wantGroups: []string{}},
		{name: "expired within leeway", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("exp", now.Add(-29*time.Second).Unix()))), wantSub: "ci-pipeline", wantKID: "ed1", wantGroups: []string{"ops", "rotators"}},
		{name: "nbf within leeway", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("nbf", now.Add(29*time.Second).Unix()))), wantSub: "ci-pipeline", wantKID: "ed1", wantGroups: []string{"ops", "rotators"}},

		{name: "expired beyond leeway", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("exp", now.Add(-31*time.Second).Unix()))), wantErr: "expired"},
		{name: "long expired", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("exp", now.Add(-time.Hour).Unix()))), wantErr: "expired"},
		{name: "nbf in the future", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("nbf", now.Add(31*time.Second).Unix()))), wantErr: "not valid yet"},
		{name: "iat in the future", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("iat", now.Add(time.Hour).Unix()))), wantErr: "issued in the future"},
		{name: "exp missing", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, del("exp"))), wantErr: "exp claim required"},
		{name: "wrong issuer", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("iss", "https://evil.example.test"))), wantErr: "issuer"},
		{name: "wrong audience", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("aud", []string{"someone-else"}))), wantErr: "audience"},
		{name: "no audience", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, del("aud"))), wantErr: "audience"},
		{name: "subject missing", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, del("sub"))), wantErr: `"sub"`},
		{name: "groups of wrong type", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("groups", 7))), wantErr: `"groups"`},
		{name: "groups with a number", token: sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("groups", []any{"ops", 1}))), wantErr: `"groups"`},
		{name: "alg none", token: b64(`{"alg":"none","typ":"JWT"}`) + "." + b64(`{"iss":"`+issuer+`","aud":"policygate","sub":"root","exp":1900000300}`) + ".", wantErr: "parse"},
		{name: "HS256 keyed with the public key", token: sign(t, pubPEM, jose.HS256, "rsa1", claims(now)), wantErr: "parse"},
		{name: "HS256 keyed with the public key, no kid", token: sign(t, pubDER, jose.HS256, "", claims(now)), wantErr: "parse"},
		{name: "algorithm not configured", token: sign(t, rsaPriv, jose.PS256, "rsa1", claims(now)), wantErr: "parse"},
		{name: "tampered payload", token: tampered, wantErr: "verify signature"},
		{name: "signed by a stranger under a known kid", token: sign(t, strangerPriv, jose.EdDSA, "ed1", claims(now)), wantErr: "verify signature"},
		{name: "unknown kid", token: sign(t, strangerPriv, jose.EdDSA, "ed9", claims(now)), wantErr: "no key"},
		{name: "kid of a key of another type", token: sign(t, rsaPriv, jose.RS256, "ed1", claims(now)), wantErr: "no key"},
		{name: "not base64url", token: "aaa.b!b.ccc", wantErr: "api key"},
		{name: "garbage JWS", token: "aaa.bbb.ccc", wantErr: "parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := a.Authenticate(context.Background(), bearer(tt.token))
			if tt.wantErr != "" {
				wantInvalid(t, id, err, tt.wantErr)
				if strings.Contains(err.Error(), tt.token) {
					t.Errorf("error text contains the token: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Authenticate: %v", err)
			}
			if !id.Authenticated || id.Method != decision.MethodJWT || id.Subject != tt.wantSub ||
				id.Issuer != issuer || id.KeyID != tt.wantKID || id.SpiffeID != "" {
				t.Errorf("identity = %+v", id)
			}
			if !reflect.DeepEqual(id.Groups, tt.wantGroups) {
				t.Errorf("groups = %#v, want %#v", id.Groups, tt.wantGroups)
			}
			if id.Claims["tenant"] != "acme" || id.Claims["exp"] == nil {
				t.Errorf("claims = %#v", id.Claims)
			}
			if _, ok := id.Claims["iat"].(float64); !ok {
				t.Errorf("claims[iat] is %T, want float64", id.Claims["iat"])
			}
		})
	}
}

func TestJWTCustomClaimsAndLeeway(t *testing.T) {
	edPriv := newEdKey(t)
	dir := t.TempDir()
	writeFile(t, dir, "jwks.json", jwks(t, pub(edPriv, "ed1")))
	clk := newClock()
	a, err := authn.New(authn.Config{JWT: &authn.JWTConfig{
		JWKSFile:     filepath.Join(dir, "jwks.json"),
		Issuer:       issuer,
		Audiences:    []string{audience},
		Leeway:       "0s",
		Algorithms:   []string{"EdDSA"},
		SubjectClaim: "client_id",
		GroupsClaim:  "scope",
	}}, authn.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, edPriv, jose.EdDSA, "ed1", claims(baseTime,
		set("client_id", "svc-rotator"), set("scope", "keys:rotate keys:read"), set("exp", baseTime.Add(time.Second).Unix())))

	id, err := a.Authenticate(context.Background(), bearer(tok))
	if err != nil {
		t.Fatal(err)
	}
	if id.Subject != "svc-rotator" || !reflect.DeepEqual(id.Groups, []string{"keys:rotate", "keys:read"}) {
		t.Errorf("identity = %+v", id)
	}

	clk.Advance(2 * time.Second) // past exp, and the leeway is zero
	id, err = a.Authenticate(context.Background(), bearer(tok))
	wantInvalid(t, id, err, "expired")
}

func TestJWKSURLRotation(t *testing.T) {
	k1, k2, k9 := newEdKey(t), newEdKey(t), newEdKey(t)
	srv := newJWKSServer(t, jwks(t, pub(k1, "k1")))
	clk := newClock()
	a := newURLAuthenticator(t, srv, clk, nil)
	ctx := context.Background()

	steps := []struct {
		name     string
		advance  time.Duration
		rotate   []jose.JSONWebKey // served from this step on, if set
		token    func() string
		wantErr  string
		wantHits int32
	}{
		{name: "first use fetches the key set", token: func() string { return sign(t, k1, jose.EdDSA, "k1", claims(clk.Now())) }, wantHits: 1},
		{name: "known kid uses the cache", advance: time.Second, token: func() string { return sign(t, k1, jose.EdDSA, "k1", claims(clk.Now())) }, wantHits: 1},
		{name: "new kid right after a fetch is rate-limited", advance: time.Second, rotate: []jose.JSONWebKey{pub(k1, "k1"), pub(k2, "k2")},
			token: func() string { return sign(t, k2, jose.EdDSA, "k2", claims(clk.Now())) }, wantErr: "no key", wantHits: 1},
		{name: "new kid after the interval is fetched and accepted", advance: authn.MinRefetchInterval,
			token: func() string { return sign(t, k2, jose.EdDSA, "k2", claims(clk.Now())) }, wantHits: 2},
		{name: "old kid still served", advance: time.Second, token: func() string { return sign(t, k1, jose.EdDSA, "k1", claims(clk.Now())) }, wantHits: 2},
		{name: "unknown kid storm fetches nothing", advance: time.Second, token: func() string { return sign(t, k9, jose.EdDSA, "k9", claims(clk.Now())) }, wantErr: "no key", wantHits: 2},
		{name: "unknown kid storm, again", advance: time.Second, token: func() string { return sign(t, k9, jose.EdDSA, "k9", claims(clk.Now())) }, wantErr: "no key", wantHits: 2},
		{name: "unknown kid after the interval fetches once", advance: authn.MinRefetchInterval, rotate: []jose.JSONWebKey{pub(k2, "k2")},
			token: func() string { return sign(t, k9, jose.EdDSA, "k9", claims(clk.Now())) }, wantErr: "no key", wantHits: 3},
		{name: "retired kid is rejected after the refetch", advance: time.Second,
			token: func() string { return sign(t, k1, jose.EdDSA, "k1", claims(clk.Now())) }, wantErr: "no key", wantHits: 3},
		{name: "current kid accepted", advance: time.Second, token: func() string { return sign(t, k2, jose.EdDSA, "k2", claims(clk.Now())) }, wantHits: 3},
	}
	for _, st := range steps {
		clk.Advance(st.advance)
		if st.rotate != nil {
			srv.setBody(jwks(t, st.rotate...))
		}
		id, err := a.Authenticate(ctx, bearer(st.token()))
		if st.wantErr != "" {
			if !errors.Is(err, authn.ErrInvalidCredentials) || !strings.Contains(err.Error(), st.wantErr) {
				t.Errorf("%s: err = %v, want invalid with %q", st.name, err, st.wantErr)
			}
		} else if err != nil || !id.Authenticated {
			t.Errorf("%s: identity %+v, err %v", st.name, id, err)
		}
		if got := srv.hits.Load(); got != st.wantHits {
			t.Errorf("%s: %d fetches, want %d", st.name, got, st.wantHits)
		}
	}
}

func TestJWKSURLFailures(t *testing.T) {
	k1, k2 := newEdKey(t), newEdKey(t)
	srv := newJWKSServer(t, jwks(t, pub(k1, "k1")))
	srv.status.Store(http.StatusServiceUnavailable)
	clk := newClock()
	a := newURLAuthenticator(t, srv, clk, nil)
	ctx := context.Background()
	tok1 := func() string { return sign(t, k1, jose.EdDSA, "k1", claims(clk.Now())) }

	// The key set cannot be fetched yet: tokens are invalid, never allowed.
	id, err := a.Authenticate(ctx, bearer(tok1()))
	wantInvalid(t, id, err, "not loaded")
	id, err = a.Authenticate(ctx, bearer(tok1()))
	wantInvalid(t, id, err, "not loaded")
	if got := srv.hits.Load(); got != 1 {
		t.Fatalf("%d fetches while down, want 1 (rate-limited)", got)
	}

	// The server recovers; the next fetch is allowed after the interval.
	srv.status.Store(http.StatusOK)
	clk.Advance(authn.MinRefetchInterval)
	if _, err := a.Authenticate(ctx, bearer(tok1())); err != nil {
		t.Fatalf("after recovery: %v", err)
	}

	// Failed refreshes keep the previous key set.
	bad := []struct {
		name  string
		setup func()
	}{
		{name: "server error", setup: func() { srv.status.Store(http.StatusInternalServerError) }},
		{name: "body over 1 MiB", setup: func() {
			// A valid key set holding k2: only the size limit rejects it.
			srv.status.Store(http.StatusOK)
			body := jwks(t, pub(k1, "k1"), pub(k2, "k2"))
			body = append(body[:len(body)-1], `,"pad":"`+strings.Repeat("x", 1<<20)+`"}`...)
			srv.setBody(body)
		}},
		{name: "not JSON", setup: func() { srv.setBody([]byte("<html>")) }},
		{name: "empty key set", setup: func() { srv.setBody(jwks(t)) }},
		{name: "only a private key", setup: func() {
			srv.setBody(jwks(t, jose.JSONWebKey{Key: k2, KeyID: "k2", Use: "sig"}))
		}},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			b.setup()
			clk.Advance(authn.MinRefetchInterval)
			before := srv.hits.Load()
			// An unknown kid forces a refetch, which fails.
			id, err := a.Authenticate(ctx, bearer(sign(t, k2, jose.EdDSA, "k2", claims(clk.Now()))))
			wantInvalid(t, id, err, "no key")
			if srv.hits.Load() != before+1 {
				t.Fatalf("no refetch happened")
			}
			if _, err := a.Authenticate(ctx, bearer(tok1())); err != nil {
				t.Errorf("previous key set lost: %v", err)
			}
		})
	}
}

func TestJWKSRedirectToPlainHTTPRefused(t *testing.T) {
	k1 := newEdKey(t)
	srv := newJWKSServer(t, jwks(t, pub(k1, "k1")))
	clk := newClock()
	a, err := authn.New(authn.Config{JWT: &authn.JWTConfig{
		JWKSURL:   srv.srv.URL + "/downgrade",
		Issuer:    issuer,
		Audiences: []string{audience},
	}}, authn.Options{HTTPClient: srv.srv.Client(), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.Authenticate(context.Background(), bearer(sign(t, k1, jose.EdDSA, "k1", claims(clk.Now()))))
	wantInvalid(t, id, err, "not loaded")
	if got := srv.hits.Load(); got != 1 {
		t.Errorf("%d requests, want 1", got)
	}
}

// eventHandler closes ch when a record with message msg is logged.
type eventHandler struct {
	msg  string
	ch   chan struct{}
	once sync.Once
}

func (h *eventHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *eventHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(func() { close(h.ch) })
	}
	return nil
}
func (h *eventHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *eventHandler) WithGroup(string) slog.Handler      { return h }

func TestRun(t *testing.T) {
	k1 := newEdKey(t)
	srv := newJWKSServer(t, jwks(t, pub(k1, "k1")))
	clk := newClock()
	loaded := &eventHandler{msg: "jwks loaded", ch: make(chan struct{})}
	a := newURLAuthenticator(t, srv, clk, slog.New(loaded))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case <-loaded.ch:
	case <-time.After(waitTimeout):
		t.Fatal("Run did not load the key set")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return after cancel")
	}

	if _, err := a.Authenticate(context.Background(), bearer(sign(t, k1, jose.EdDSA, "k1", claims(clk.Now())))); err != nil {
		t.Fatal(err)
	}
	if got := srv.hits.Load(); got != 1 {
		t.Errorf("%d fetches, want 1 (the one Run made)", got)
	}
}

func TestRunWithoutURL(t *testing.T) {
	a, err := authn.New(authn.Config{}, authn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestAPIKeys(t *testing.T) {
	const (
		ciSecret  = "s3cr3t-ci-0123456789abcdef"
		opsSecret = "s3cr3t-ops-fedcba9876543210"
	)
	dir := t.TempDir()
	writeFile(t, dir, "keys.yaml", []byte("- id: ops\n  sha256: "+strings.ToUpper(authn.HashKey(opsSecret))+"\n  subject: alice\n  groups: [admins]\n"))
	a, err := authn.New(authn.Config{
		APIKeyHeader: "x-api-key",
		APIKeys:      []authn.APIKey{{ID: "ci", SHA256: authn.HashKey(ciSecret)}},
		APIKeysFile:  "keys.yaml",
	}, authn.Options{BaseDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ci := decision.Identity{Authenticated: true, Method: decision.MethodAPIKey, Subject: "ci", KeyID: "ci", Groups: []string{}, Claims: map[string]any{}}
	ops := decision.Identity{Authenticated: true, Method: decision.MethodAPIKey, Subject: "alice", KeyID: "ops", Groups: []string{"admins"}, Claims: map[string]any{}}

	tests := []struct {
		name    string
		header  http.Header
		want    decision.Identity
		wantErr string
	}{
		{name: "no credential", header: http.Header{"Accept": {"*/*"}}, want: decision.Anonymous()},
		{name: "only Proxy-Authorization", header: http.Header{"Proxy-Authorization": {"Basic Zm9vOmJhcg=="}}, want: decision.Anonymous()},
		{name: "bearer key", header: bearer(ciSecret), want: ci},
		{name: "bearer key, lowercase scheme", header: http.Header{"Authorization": {"bearer " + opsSecret}}, want: ops},
		{name: "header key", header: http.Header{"X-Api-Key": {ciSecret}}, want: ci},
		{name: "header key, non-canonical map key", header: http.Header{"x-api-key": {opsSecret}}, want: ops},
		{name: "basic with the key id", header: basic("ops", opsSecret), want: ops},
		{name: "basic with another key's id", header: basic("ci", opsSecret), wantErr: "username"},
		{name: "basic with an unknown user", header: basic("root", ciSecret), wantErr: "username"},
		{name: "basic with an unknown secret", header: basic("ci", "guess"), wantErr: "unknown key"},
		{name: "basic without colon", header: http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("ci"))}}, wantErr: "basic"},
		{name: "basic with empty password", header: basic("ci", ""), wantErr: "basic"},
		{name: "basic not base64", header: http.Header{"Authorization": {"Basic !!!"}}, wantErr: "base64"},
		{name: "unknown bearer key", header: bearer("not-a-key"), wantErr: "unknown key"},
		{name: "JWT-shaped bearer without jwt config is an api key", header: bearer("aaa.bbb.ccc"), wantErr: "unknown key"},
		{name: "unknown header key", header: http.Header{"X-Api-Key": {"not-a-key"}}, wantErr: "unknown key"},
		{name: "empty header key", header: http.Header{"X-Api-Key": {""}}, wantErr: "empty"},
		{name: "bearer without token", header: http.Header{"Authorization": {"Bearer"}}, wantErr: "malformed"},
		{name: "empty Authorization", header: http.Header{"Authorization": {""}}, wantErr: "malformed"},
		{name: "unsupported scheme", header: http.Header{"Authorization": {"Digest username=ci"}}, wantErr: "scheme"},
		{name: "Authorization and header key", header: http.Header{"Authorization": {"Bearer " + ciSecret}, "X-Api-Key": {ciSecret}}, wantErr: "both"},
		{name: "two Authorization values", header: http.Header{"Authorization": {"Bearer " + ciSecret, "Bearer " + opsSecret}}, wantErr: "more than one"},
		{name: "Authorization under two spellings", header: http.Header{"Authorization": {"Bearer " + ciSecret}, "authorization": {"Bearer " + ciSecret}}, wantErr: "more than one"},
		{name: "two header keys", header: http.Header{"X-Api-Key": {ciSecret, ciSecret}}, wantErr: "more than one"},
		{name: "oversized token", header: bearer(strings.Repeat("a", 70<<10)), wantErr: "longer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := a.Authenticate(context.Background(), tt.header)
			if tt.wantErr != "" {
				wantInvalid(t, id, err, tt.wantErr)
				for _, s := range []string{ciSecret, opsSecret} {
					if strings.Contains(err.Error(), s) {
						t.Errorf("error text contains a secret: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Authenticate: %v", err)
			}
			if !reflect.DeepEqual(id, tt.want) {
				t.Errorf("identity = %#v, want %#v", id, tt.want)
			}
		})
	}

	// Identities do not share the configured groups slice.
	id, _ := a.Authenticate(context.Background(), bearer(opsSecret))
	id.Groups[0] = "root"
	if id, _ := a.Authenticate(context.Background(), bearer(opsSecret)); id.Groups[0] != "admins" {
		t.Errorf("groups mutated through a returned identity: %v", id.Groups)
	}
}

func TestCredentialHeaders(t *testing.T) {
	tests := []struct {
		name string
		cfg  authn.Config
		want []string
	}{
		{name: "no api key header", want: []string{"Authorization", "Proxy-Authorization"}},
		{name: "api key header canonicalized", cfg: authn.Config{APIKeyHeader: "x-admin-token"}, want: []string{"Authorization", "Proxy-Authorization", "X-Admin-Token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := authn.New(tt.cfg, authn.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := a.CredentialHeaders(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("CredentialHeaders() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHashKey(t *testing.T) {
	const want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" // SHA-256("abc")
	if got := authn.HashKey("abc"); got != want {
		t.Errorf("HashKey(abc) = %s, want %s", got, want)
	}
}

func TestConfigErrors(t *testing.T) {
	rsaPriv := testRSAKey(t)
	edPriv := newEdKey(t)
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeFile(t, dir, "jwks.json", jwks(t, pub(edPriv, "ed1")))
	writeFile(t, dir, "private.json", jwks(t, jose.JSONWebKey{Key: edPriv, KeyID: "ed1", Use: "sig"}))
	writeFile(t, dir, "symmetric.json", jwks(t, jose.JSONWebKey{Key: []byte("0123456789abcdef0123456789abcdef"), KeyID: "h1", Algorithm: "HS256"}))
	writeFile(t, dir, "weak.json", jwks(t, pub(weak, "weak")))
	writeFile(t, dir, "rsa-only.json", jwks(t, pub(rsaPriv, "rsa1")))
	writeFile(t, dir, "nokeys.json", []byte(`{}`))
	writeFile(t, dir, "unknown-field.yaml", []byte("- id: a\n  sha256: "+authn.HashKey("a")+"\n  secret: a\n"))
	writeFile(t, dir, "bad-hash.yaml", []byte("- id: a\n  sha256: abc\n"))
	writeFile(t, dir, "dup.yaml", []byte("- id: ci\n  sha256: "+authn.HashKey("other")+"\n- id: b\n  sha256: "+authn.HashKey("ci")+"\n"))

	okKey := func(id, secret string) authn.APIKey { return authn.APIKey{ID: id, SHA256: authn.HashKey(secret)} }
	okJWT := func(mod func(*authn.JWTConfig)) *authn.JWTConfig {
		c := &authn.JWTConfig{JWKSFile: "jwks.json", Issuer: issuer, Audiences: []string{audience}}
		if mod != nil {
			mod(c)
		}
		return c
	}

	tests := []struct {
		name string
		cfg  authn.Config
		want []string // every substring must appear
	}{
		{name: "key id required", cfg: authn.Config{APIKeys: []authn.APIKey{okKey("a", "a"), {SHA256: authn.HashKey("b")}}}, want: []string{"api_keys[1].id: required"}},
		{name: "key id with colon", cfg: authn.Config{APIKeys: []authn.APIKey{okKey("a:b", "a")}}, want: []string{"api_keys[0].id: must not contain ':'"}},
		{name: "key id with control character", cfg: authn.Config{APIKeys: []authn.APIKey{okKey("a\nb", "a")}}, want: []string{"api_keys[0].id: must not contain control"}},
		{name: "hash too short", cfg: authn.Config{APIKeys: []authn.APIKey{okKey("a", "a"), okKey("b", "b"), {ID: "c", SHA256: "abc"}}}, want: []string{"api_keys[2].sha256: not 64 hex characters"}},
		{name: "hash not hex", cfg: authn.Config{APIKeys: []authn.APIKey{{ID: "a", SHA256: strings.Repeat("zz", 32)}}}, want: []string{"api_keys[0].sha256: not 64 hex characters"}},
		{name: "hash missing", cfg: authn.Config{APIKeys: []authn.APIKey{{ID: "a"}}}, want: []string{"api_keys[0].sha256: not 64 hex characters"}},
		{name: "duplicate id", cfg: authn.Config{APIKeys: []authn.APIKey{okKey("a", "a"), okKey("a", "b")}}, want: []string{`api_keys[1].id: duplicate key id "a"`}},
		{name: "duplicate hash, case-insensitive", cfg: authn.Config{APIKeys: []authn.APIKey{okKey("a", "a"), {ID: "b", SHA256: strings.ToUpper(authn.HashKey("a"))}}}, want: []string{"api_keys[1].sha256: duplicate hash"}},
		{name: "empty group", cfg: authn.Config{APIKeys: []authn.APIKey{{ID: "a", SHA256: authn.HashKey("a"), Groups: []string{"ops", ""}}}}, want: []string{"api_keys[0].groups[1]: empty"}},
		{name: "bad header name", cfg: authn.Config{APIKeyHeader: "X Api Key"}, want: []string{"api_key_header: "}},
		{name: "reserved header name", cfg: authn.Config{APIKeyHeader: "authorization"}, want: []string{"api_key_header: ", "reserved"}},
		{name: "keys file missing", cfg: authn.Config{APIKeysFile: "absent.yaml"}, want: []string{"api_keys_file: ", "absent.yaml"}},
		{name: "keys file unknown field", cfg: authn.Config{APIKeysFile: "unknown-field.yaml"}, want: []string{"api_keys_file: ", "secret"}},
		{name: "keys file bad hash", cfg: authn.Config{APIKeysFile: "bad-hash.yaml"}, want: []string{"api_keys_file[0].sha256: not 64 hex characters"}},
		{name: "keys file duplicates inline keys", cfg: authn.Config{APIKeys: []authn.APIKey{okKey("ci", "ci")}, APIKeysFile: "dup.yaml"},
			want: []string{`api_keys_file[0].id: duplicate key id "ci" (first in api_keys[0])`, "api_keys_file[1].sha256: duplicate hash (first in api_keys[0])"}},
		{name: "jwt issuer required", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.Issuer = "" })}, want: []string{"jwt.issuer: required"}},
		{name: "jwt audiences required", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.Audiences = nil })}, want: []string{"jwt.audiences: required"}},
		{name: "jwt empty audience", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.Audiences = []string{"a", ""} })}, want: []string{"jwt.audiences[1]: empty"}},
		{name: "jwt no key source", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.JWKSFile = "" })}, want: []string{"jwt: one of jwks_file or jwks_url is required"}},
		{name: "jwt two key sources", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.JWKSURL = "https://idp.example.test/jwks" })}, want: []string{"jwt: jwks_file and jwks_url are mutually exclusive"}},
		{name: "jwt leeway not a duration", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.Leeway = "30" })}, want: []string{"jwt.leeway: "}},
		{name: "jwt leeway negative", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.Leeway = "-1s" })}, want: []string{"jwt.leeway: -1s is negative"}},
		{name: "jwt leeway too large", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.Leeway = "1h" })}, want: []string{"jwt.leeway: 1h exceeds"}},
		{name: "jwt refresh interval with a file", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.RefreshInterval = "5m" })}, want: []string{"jwt.refresh_interval: only valid with jwks_url"}},
		{name: "jwt refresh interval too short", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) {
			c.JWKSFile, c.JWKSURL, c.RefreshInterval = "", "https://idp.example.test/jwks", "1s"
		})}, want: []string{"jwt.refresh_interval: 1s is below"}},
		{name: "jwt refresh interval not a duration", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) {
			c.JWKSFile, c.JWKSURL, c.RefreshInterval = "", "https://idp.example.test/jwks", "often"
		})}, want: []string{"jwt.refresh_interval: "}},
		{name: "jwt url over plain http", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.JWKSFile, c.JWKSURL = "", "http://idp.example.test/jwks" })}, want: []string{"jwt.jwks_url: ", "https"}},
		{name: "jwt url unsupported scheme", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.JWKSFile, c.JWKSURL = "", "file:///etc/jwks.json" })}, want: []string{"jwt.jwks_url: "}},
		{name: "jwt alg none", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.Algorithms = []string{"EdDSA", "none"} })}, want: []string{`jwt.algorithms[1]: "none" is not allowed`}},
		{name: "jwt alg HS256", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.Algorithms = []string{"HS256"} })}, want: []string{`jwt.algorithms[0]: "HS256" is not allowed`}},
		{name: "jwt alg unknown", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.Algorithms = []string{"ES256K"} })}, want: []string{`jwt.algorithms[0]: unsupported algorithm "ES256K"`}},
		{name: "jwt jwks file missing", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.JWKSFile = "absent.json" })}, want: []string{"jwt.jwks_file: ", "absent.json"}},
		{name: "jwt jwks file with a private key", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.JWKSFile = "private.json" })}, want: []string{"jwt.jwks_file: ", "private key material"}},
		{name: "jwt jwks file with a symmetric key", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.JWKSFile = "symmetric.json" })}, want: []string{"jwt.jwks_file: ", "symmetric"}},
		{name: "jwt jwks file with a weak RSA key", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.JWKSFile = "weak.json" })}, want: []string{"jwt.jwks_file: ", "1024 bits"}},
		{name: "jwt jwks file without keys member", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.JWKSFile = "nokeys.json" })}, want: []string{"jwt.jwks_file: ", `no "keys"`}},
		{name: "jwt jwks file without a key for the algorithms", cfg: authn.Config{JWT: okJWT(func(c *authn.JWTConfig) { c.JWKSFile, c.Algorithms = "rsa-only.json", []string{"EdDSA"} })}, want: []string{"jwt.jwks_file: ", "no usable key"}},
		{name: "all errors reported together", cfg: authn.Config{
			APIKeys: []authn.APIKey{{ID: "a", SHA256: "x"}},
			JWT:     &authn.JWTConfig{JWKSFile: "jwks.json", Leeway: "soon"},
		}, want: []string{"api_keys[0].sha256", "jwt.issuer: required", "jwt.audiences: required", "jwt.leeway: "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := authn.New(tt.cfg, authn.Options{BaseDir: dir})
			if err == nil {
				t.Fatalf("New succeeded, want errors containing %q", tt.want)
			}
			if a != nil {
				t.Errorf("New returned an Authenticator with an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestConfigValid(t *testing.T) {
	edPriv := newEdKey(t)
	dir := t.TempDir()
	writeFile(t, dir, "jwks.json", jwks(t, pub(edPriv, "ed1"), jose.JSONWebKey{Key: edPriv.Public(), KeyID: "enc", Use: "enc"}))
	writeFile(t, dir, "empty.yaml", nil)
	tests := []struct {
		name string
		cfg  authn.Config
	}{
		{name: "zero config"},
		{name: "empty keys file", cfg: authn.Config{APIKeysFile: filepath.Join(dir, "empty.yaml")}},
		{name: "jwks file with an encryption key ignored", cfg: authn.Config{JWT: &authn.JWTConfig{JWKSFile: "jwks.json", Issuer: issuer, Audiences: []string{audience}}}},
		{name: "loopback http jwks url", cfg: authn.Config{JWT: &authn.JWTConfig{JWKSURL: "http://127.0.0.1:8080/jwks", Issuer: issuer, Audiences: []string{audience}, RefreshInterval: "1m", Leeway: "0s"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := authn.New(tt.cfg, authn.Options{BaseDir: dir}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestImports holds the import direction of DESIGN.md: authn may use the
// root decision package only, and never bundles or xds.
func TestImports(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not found")
	}
	const module = "github.com/policygate/policygate"
	out, err := exec.Command(goTool, "list", "-deps", module+"/gateway/authn").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{module + "/decision/", module + "/bundles", module + "/xds"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("gateway/authn depends on %s", dep)
			}
		}
	}
}
