package authn

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/policygate/policygate/decision"
)

// The cache's own rules, tested on the cache directly; the properties the
// gateway relies on (exp, rotation, clock) are tested through Authenticate
// in tokencache_ext_test.go.

var t0 = time.Unix(1_900_000_000, 0)

func TestTokenCacheRules(t *testing.T) {
	ks, other := &keySet{}, &keySet{}
	id := decision.Identity{Authenticated: true, Method: decision.MethodJWT, Subject: "svc"}
	key, _ := tokenKey("header.payload.signature")
	tests := []struct {
		name   string
		ttl    time.Duration
		exp    time.Time
		keys   *keySet // at lookup
		at     time.Time
		wantOK bool
	}{
		{name: "fresh", ttl: time.Minute, exp: t0.Add(time.Hour), keys: ks, at: t0.Add(time.Second), wantOK: true},
		{name: "at verification time", ttl: time.Minute, exp: t0.Add(time.Hour), keys: ks, at: t0, wantOK: true},
		{name: "just before exp", ttl: time.Hour, exp: t0.Add(time.Minute), keys: ks, at: t0.Add(time.Minute - time.Nanosecond), wantOK: true},
		{name: "at exp", ttl: time.Hour, exp: t0.Add(time.Minute), keys: ks, at: t0.Add(time.Minute)},
		{name: "past exp", ttl: time.Hour, exp: t0.Add(time.Minute), keys: ks, at: t0.Add(2 * time.Minute)},
		{name: "at the TTL", ttl: time.Minute, exp: t0.Add(time.Hour), keys: ks, at: t0.Add(time.Minute)},
		{name: "another key set", ttl: time.Minute, exp: t0.Add(time.Hour), keys: other, at: t0.Add(time.Second)},
		{name: "no key set", ttl: time.Minute, exp: t0.Add(time.Hour), keys: nil, at: t0.Add(time.Second)},
		{name: "clock went back", ttl: time.Minute, exp: t0.Add(time.Hour), keys: ks, at: t0.Add(-time.Nanosecond)},
		{name: "expired when verified", ttl: time.Minute, exp: t0.Add(-time.Second), keys: ks, at: t0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTokenCache(10, tt.ttl)
			c.add(key, id, ks, t0, tt.exp)
			got, ok := c.get(key, tt.keys, tt.at)
			if ok != tt.wantOK {
				t.Fatalf("get = %v, want %v", ok, tt.wantOK)
			}
			if ok && got.Subject != "svc" {
				t.Errorf("identity = %+v", got)
			}
			if !ok && c.len() != 0 {
				t.Errorf("%d entries left after a refused lookup, want the entry dropped", c.len())
			}
			// A refused entry stays refused, whatever the clock does next.
			if _, ok2 := c.get(key, ks, t0.Add(time.Second)); !ok && ok2 {
				t.Error("a dropped entry answered again")
			}
		})
	}
}

func TestTokenCacheBounded(t *testing.T) {
	ks := &keySet{}
	c := newTokenCache(3, time.Hour)
	keys := make([][32]byte, 5)
	for i := range keys {
		keys[i], _ = tokenKey(strings.Repeat("x", i+1))
	}
	for _, k := range keys[:3] {
		c.add(k, decision.Identity{}, ks, t0, t0.Add(time.Hour))
	}
	c.get(keys[0], ks, t0) // keys[0] is now the most recently used
	c.add(keys[3], decision.Identity{}, ks, t0, t0.Add(time.Hour))
	c.add(keys[4], decision.Identity{}, ks, t0, t0.Add(time.Hour))
	if n := c.len(); n != 3 {
		t.Fatalf("%d entries, want 3", n)
	}
	for i, want := range []bool{true, false, false, true, true} {
		if _, ok := c.get(keys[i], ks, t0); ok != want {
			t.Errorf("key %d cached = %v, want %v", i, ok, want)
		}
	}
	if _, ok := tokenKey(strings.Repeat("x", maxCachedTokenLen+1)); ok {
		t.Error("a token above maxCachedTokenLen is cacheable")
	}
	if newTokenCache(0, time.Hour) != nil || newTokenCache(10, 0) != nil {
		t.Error("a cache of size 0 or TTL 0 is not off")
	}
}

// TestTokenCacheHit shows that a token verified once is answered from the
// cache afterwards, and verified again once its entry may no longer be
// used: an entry whose identity was altered by the test is returned only
// while the cache answers.
func TestTokenCacheHit(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	raw, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: priv.Public(), KeyID: "k1", Use: "sig"}}})
	if err := os.WriteFile(filepath.Join(dir, "jwks.json"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	now := t0
	a, err := New(Config{JWT: &JWTConfig{JWKSFile: "jwks.json", Issuer: "https://idp.test", Audiences: []string{"pg"}, CacheTTL: "1m"}},
		Options{BaseDir: dir, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: priv}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Issuer: "https://idp.test", Subject: "svc", Audience: jwt.Audience{"pg"},
		Expiry: jwt.NewNumericDate(t0.Add(time.Hour))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{"Authorization": {"Bearer " + tok}}
	subject := func() string {
		t.Helper()
		id, err := a.Authenticate(context.Background(), h)
		if err != nil {
			t.Fatal(err)
		}
		return id.Subject
	}
	if got := subject(); got != "svc" {
		t.Fatalf("subject %q", got)
	}
	key, _ := tokenKey(tok)
	el := a.tokens.items[key]
	if el == nil {
		t.Fatal("verified token not cached")
	}
	el.Value.(*tokenEntry).id.Subject = "from-cache"

	now = t0.Add(59 * time.Second)
	if got := subject(); got != "from-cache" {
		t.Errorf("within the TTL: subject %q, want the cached entry", got)
	}
	now = t0.Add(time.Minute)
	if got := subject(); got != "svc" {
		t.Errorf("at the TTL: subject %q, want a fresh verification", got)
	}
	if a.tokens.len() != 1 {
		t.Errorf("%d entries, want the re-verified token cached again", a.tokens.len())
	}

	// A failed verification is never cached.
	bad := tok[:len(tok)-4] + "AAAA"
	if _, err := a.Authenticate(context.Background(), http.Header{"Authorization": {"Bearer " + bad}}); err == nil {
		t.Fatal("tampered signature accepted")
	}
	if a.tokens.len() != 1 {
		t.Errorf("%d entries after a failed verification, want 1", a.tokens.len())
	}

	// cache_ttl: 0s turns the cache off.
	off, err := New(Config{JWT: &JWTConfig{JWKSFile: "jwks.json", Issuer: "https://idp.test", Audiences: []string{"pg"}, CacheTTL: "0s"}},
		Options{BaseDir: dir, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if off.tokens != nil {
		t.Error("cache_ttl 0s: cache on")
	}
}
