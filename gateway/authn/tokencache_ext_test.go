package authn_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/policygate/policygate/gateway/authn"
)

// The verified-token cache must never change what Authenticate accepts:
// each test presents the very same token string again after something
// that must make it fail — expiry, a key-set change, the clock going
// back — and expects the failure a fresh verification gives.

func TestTokenCacheNeverOutlivesExp(t *testing.T) {
	edPriv := newEdKey(t)
	dir := t.TempDir()
	writeFile(t, dir, "jwks.json", jwks(t, pub(edPriv, "ed1")))
	for _, tc := range []struct {
		leeway    string
		accepted  []time.Duration // after exp, still accepted (leeway)
		refusedAt time.Duration   // after exp
	}{
		{leeway: "0s", refusedAt: time.Second},
		{leeway: "30s", accepted: []time.Duration{0, 10 * time.Second, 29 * time.Second}, refusedAt: 31 * time.Second},
	} {
		t.Run("leeway="+tc.leeway, func(t *testing.T) {
			clk := newClock()
			a, err := authn.New(authn.Config{JWT: &authn.JWTConfig{
				JWKSFile: filepath.Join(dir, "jwks.json"), Issuer: issuer, Audiences: []string{audience},
				Leeway: tc.leeway, CacheTTL: "1h",
			}}, authn.Options{Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			exp := baseTime.Add(time.Minute)
			tok := sign(t, edPriv, jose.EdDSA, "ed1", claims(baseTime, set("exp", exp.Unix())))
			ctx := context.Background()
			for _, at := range []time.Duration{0, 30 * time.Second, time.Minute - time.Nanosecond} {
				clk.ns.Store(baseTime.Add(at).UnixNano())
				if _, err := a.Authenticate(ctx, bearer(tok)); err != nil {
					t.Fatalf("at +%s (before exp): %v", at, err)
				}
			}
			for _, after := range tc.accepted {
				clk.ns.Store(exp.Add(after).UnixNano())
				if _, err := a.Authenticate(ctx, bearer(tok)); err != nil {
					t.Fatalf("exp+%s (within the leeway): %v", after, err)
				}
			}
			clk.ns.Store(exp.Add(tc.refusedAt).UnixNano())
			id, err := a.Authenticate(ctx, bearer(tok))
			wantInvalid(t, id, err, "expired")
			// And it stays refused.
			clk.Advance(time.Hour)
			id, err = a.Authenticate(ctx, bearer(tok))
			wantInvalid(t, id, err, "expired")
		})
	}
}

func TestTokenCacheKeySetChange(t *testing.T) {
	k1, k1b, k2 := newEdKey(t), newEdKey(t), newEdKey(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		rotate  []jose.JSONWebKey // served after the token was cached
		wantErr string
	}{
		{name: "key removed", rotate: []jose.JSONWebKey{pub(k2, "k2")}, wantErr: "no key"},
		{name: "key replaced under the same kid", rotate: []jose.JSONWebKey{pub(k1b, "k1")}, wantErr: "verify signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newJWKSServer(t, jwks(t, pub(k1, "k1")))
			clk := newClock()
			a := newURLAuthenticator(t, srv, clk, nil)
			tok := sign(t, k1, jose.EdDSA, "k1", claims(clk.Now(), set("exp", clk.Now().Add(time.Hour).Unix())))
			for range 3 {
				if _, err := a.Authenticate(ctx, bearer(tok)); err != nil {
					t.Fatal(err)
				}
			}
			srv.setBody(jwks(t, tc.rotate...))
			clk.Advance(authn.MinRefetchInterval)
			// A token with a kid the old set does not know makes the
			// gateway fetch the new set, as Run would on its interval.
			if _, err := a.Authenticate(ctx, bearer(sign(t, k2, jose.EdDSA, "k2", claims(clk.Now())))); tc.name == "key removed" && err != nil {
				t.Fatalf("token of the new key: %v", err)
			}
			if got := srv.hits.Load(); got != 2 {
				t.Fatalf("%d fetches, want 2", got)
			}
			id, err := a.Authenticate(ctx, bearer(tok))
			wantInvalid(t, id, err, tc.wantErr)
		})
	}
}

func TestTokenCacheClockBack(t *testing.T) {
	edPriv := newEdKey(t)
	dir := t.TempDir()
	writeFile(t, dir, "jwks.json", jwks(t, pub(edPriv, "ed1")))
	clk := newClock()
	a, err := authn.New(authn.Config{JWT: &authn.JWTConfig{
		JWKSFile: filepath.Join(dir, "jwks.json"), Issuer: issuer, Audiences: []string{audience}, Leeway: "0s",
	}}, authn.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, edPriv, jose.EdDSA, "ed1", claims(baseTime, set("nbf", baseTime.Unix()), set("iat", baseTime.Unix())))
	if _, err := a.Authenticate(context.Background(), bearer(tok)); err != nil {
		t.Fatal(err)
	}
	clk.Advance(-time.Minute)
	id, err := a.Authenticate(context.Background(), bearer(tok))
	wantInvalid(t, id, err, "not valid yet")
}

// TestTokenCacheConcurrent authenticates the same and different tokens
// from many goroutines (run with -race): every caller gets its own
// token's identity.
func TestTokenCacheConcurrent(t *testing.T) {
	edPriv := newEdKey(t)
	dir := t.TempDir()
	writeFile(t, dir, "jwks.json", jwks(t, pub(edPriv, "ed1")))
	a, err := authn.New(authn.Config{JWT: &authn.JWTConfig{
		JWKSFile: filepath.Join(dir, "jwks.json"), Issuer: issuer, Audiences: []string{audience}, CacheSize: 4,
	}}, authn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	subjects := []string{"a", "b", "c", "d", "e", "f"} // more than the cache holds
	tokens := make([]string, len(subjects))
	for i, s := range subjects {
		tokens[i] = sign(t, edPriv, jose.EdDSA, "ed1", claims(now, set("sub", s)))
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				k := (g + i) % len(tokens)
				id, err := a.Authenticate(context.Background(), bearer(tokens[k]))
				if err != nil || id.Subject != subjects[k] {
					t.Errorf("token of %s: identity %q, err %v", subjects[k], id.Subject, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
