package authn_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/policygate/policygate/gateway/authn"
)

// BenchmarkAuthenticate is the per-request cost of authentication: an
// RS256 JWT against a JWKS file (a few callers, each reusing its token, as
// clients do until it expires) and an API key. It reports numbers; nothing
// here asserts a duration.
func BenchmarkAuthenticate(b *testing.B) {
	priv := testRSAKey(b)
	dir := b.TempDir()
	writeFile(b, dir, "jwks.json", jwks(b, pub(priv, "rsa1")))
	a, err := authn.New(authn.Config{
		APIKeys: []authn.APIKey{{ID: "ci", SHA256: authn.HashKey("s3cret-api-key"), Groups: []string{"ci"}}},
		JWT:     &authn.JWTConfig{JWKSFile: "jwks.json", Issuer: issuer, Audiences: []string{audience}, Algorithms: []string{"RS256"}},
	}, authn.Options{BaseDir: dir})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	var tokens []string
	for i := range 8 {
		tokens = append(tokens, sign(b, priv, jose.RS256, "rsa1", claims(now, set("sub", fmt.Sprintf("svc-%d", i)), set("exp", now.Add(time.Hour).Unix()))))
	}
	for _, c := range []struct {
		name    string
		headers []map[string][]string
	}{
		{name: "jwt-rs256", headers: func() (hs []map[string][]string) {
			for _, tok := range tokens {
				hs = append(hs, bearer(tok))
			}
			return hs
		}()},
		{name: "api-key", headers: []map[string][]string{bearer("s3cret-api-key")}},
	} {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if id, err := a.Authenticate(ctx, c.headers[i%len(c.headers)]); err != nil || !id.Authenticated {
					b.Fatalf("identity %+v, err %v", id, err)
				}
				i++
			}
		})
	}
}
