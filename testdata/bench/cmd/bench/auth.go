package main

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const (
	issuer   = "https://idp.bench.invalid"
	audience = "policygate"
	keyID    = "bench-rs256"
	// jwtAlg is what most identity providers sign with, and the cheapest of
	// policygate's default algorithms to verify.
	jwtAlg = jose.RS256
	// tokenLifetime outlives any bounded run (see maxDuration and maxReps).
	tokenLifetime = 48 * time.Hour
)

// authSetup is the bench's own identity provider: a fresh RSA-2048 key whose
// public half is written as a JWKS file for policygate and the sidecar.
type authSetup struct {
	jwks   string // path of the JWKS file
	signer jose.Signer
}

// identity is one caller of the load: a signed JWT with roles.
type identity struct {
	subject string
	roles   []string
	token   string
	claims  map[string]any // as a policy sees them after JSON decoding
}

func newAuth(jwksPath string) (*authSetup, error) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &priv.PublicKey, KeyID: keyID, Algorithm: string(jwtAlg), Use: "sig"}}}
	raw, err := json.Marshal(set)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(jwksPath, raw, 0o600); err != nil {
		return nil, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jwtAlg, Key: priv},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader(jose.HeaderKey("kid"), keyID))
	if err != nil {
		return nil, err
	}
	return &authSetup{jwks: jwksPath, signer: signer}, nil
}

// identity signs a token for subject carrying roles in the "roles" claim.
func (a *authSetup) identity(subject string, roles []string) (identity, error) {
	now := time.Now()
	std := jwt.Claims{
		Issuer:   issuer,
		Subject:  subject,
		Audience: jwt.Audience{audience},
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(tokenLifetime)),
	}
	extra := map[string]any{"roles": roles}
	token, err := jwt.Signed(a.signer).Claims(std).Claims(extra).Serialize()
	if err != nil {
		return identity{}, fmt.Errorf("sign token for %s: %w", subject, err)
	}
	// The claims as the gateway decodes them from the token's payload.
	raw, err := json.Marshal(std)
	if err != nil {
		return identity{}, err
	}
	var claims map[string]any
	if err := json.Unmarshal(raw, &claims); err != nil {
		return identity{}, err
	}
	claims["roles"] = stringsToAny(roles)
	return identity{subject: subject, roles: roles, token: token, claims: claims}, nil
}

func stringsToAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
