package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// selfSigned returns PEM cert and key for 127.0.0.1 and a pool trusting it.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "policygate test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), pool
}

// TestTLSListenerWithJWT serves the gateway over its TLS listener only and
// authenticates callers with JWTs verified against a JWKS file: a valid
// admin token is allowed, an expired or wrongly signed one is 401, and the
// policy sees scheme https and the verified claims.
func TestTLSListenerWithJWT(t *testing.T) {
	certPEM, keyPEM, pool := selfSigned(t)
	signKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &signKey.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	token := func(k *ecdsa.PrivateKey, exp time.Time, groups []string) string {
		sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := jwt.Signed(sig).Claims(jwt.Claims{
			Issuer: "https://idp.test", Subject: "svc-deployer", Audience: jwt.Audience{"policygate"},
			Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(time.Now().Add(-time.Minute)),
		}).Claims(map[string]any{"groups": groups}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	up := newRecorder(t)
	cfg := fmt.Sprintf(`server:
  tls:
    listen: 127.0.0.1:0
    cert_file: gw.crt
    key_file: gw.key
policy:
  dir: %s
authn:
  jwt:
    jwks_file: jwks.json
    issuer: https://idp.test
    audiences: [policygate]
routes:
  - name: admin
    path_prefix: /admin
    upstream: %s
    policy: faults/decision
decision_log:
  output: file
  path: LOGFILE
  flush_interval: 5ms
`, repoPath(t, "testdata/security/policy"), up.srv.URL)
	g := startGateway(t, cfg, map[string]string{"gw.crt": string(certPEM), "gw.key": string(keyPEM), "jwks.json": string(jwks)})
	if g.TLSURL == "" || g.URL != "" {
		t.Fatalf("listeners: https %q http %q", g.TLSURL, g.URL)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(tok string) *http.Response {
		req, _ := http.NewRequest("GET", g.TLSURL+"/admin/users", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := get(token(signKey, time.Now().Add(time.Hour), []string{"admin"}))
	if resp.StatusCode != 200 {
		t.Fatalf("valid admin token: %d", resp.StatusCode)
	}
	ev := g.WaitEvent(t, resp.Header.Get("X-Decision-Id"))
	if at(ev, "input", "request", "scheme") != "https" || at(ev, "input", "identity", "method") != "jwt" ||
		at(ev, "input", "identity", "subject") != "svc-deployer" || at(ev, "input", "identity", "issuer") != "https://idp.test" {
		t.Errorf("input %v", ev["input"])
	}
	for name, tok := range map[string]string{
		"expired":     token(signKey, time.Now().Add(-time.Hour), []string{"admin"}),
		"wrong key":   token(otherKey, time.Now().Add(time.Hour), []string{"admin"}),
		"not a token": "a.b.c",
		"no admin":    "",
	} {
		want := 401
		if name == "no admin" {
			want = 403
		}
		if resp := get(tok); resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", name, resp.StatusCode, want)
		}
	}
	if n := len(up.take()); n != 1 {
		t.Errorf("upstream got %d requests, want 1", n)
	}
}
