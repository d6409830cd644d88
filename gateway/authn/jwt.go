package authn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/policygate/policygate/decision"
)

// verifyJWT verifies a compact JWS bearer token and maps its claims to an
// identity.
//
// Claims are decoded once with encoding/json, both into jwt.Claims for the
// registered claims and into a map for identity.claims, so the checks and
// the policy see the same document (no parser differential on duplicate
// members). In identity.claims every JSON number is a float64, as OPA
// itself would read it; integers beyond 2^53 lose precision.
//
// A token verified before is answered from the token cache (see tokenCache
// for when an entry may be reused); the identity it returns shares Groups
// and Claims with the other requests presenting that token.
func (a *Authenticator) verifyJWT(ctx context.Context, token string) (decision.Identity, error) {
	now := a.now()
	key, cacheable := tokenKey(token)
	cacheable = cacheable && a.tokens != nil
	if cacheable {
		if id, ok := a.tokens.get(key, a.currentKeys(), now); ok {
			return id, nil
		}
	}
	s := a.jwt
	jws, err := jose.ParseSignedCompact(token, s.algorithms)
	if err != nil {
		return invalid(fmt.Errorf("jwt: parse: %w", err))
	}
	hdr := jws.Signatures[0].Protected
	for _, name := range []jose.HeaderKey{"crit", "b64"} {
		// go-jose understands the unencoded-payload extension, but a JWT
		// never uses it; refusing it keeps one payload encoding.
		if _, ok := hdr.ExtraHeaders[name]; ok {
			return invalid(fmt.Errorf("jwt: header %q not accepted", name))
		}
	}
	alg := jose.SignatureAlgorithm(hdr.Algorithm)

	keys, ks, err := a.verificationKeys(ctx, hdr.KeyID, alg)
	if err != nil {
		return invalid(fmt.Errorf("jwt: %w", err))
	}
	var payload []byte
	for _, k := range keys {
		if payload, err = jws.Verify(k.key); err == nil {
			break
		}
	}
	if err != nil {
		return invalid(fmt.Errorf("jwt: verify signature (kid %q): %w", hdr.KeyID, err))
	}

	var std jwt.Claims
	if err := json.Unmarshal(payload, &std); err != nil {
		return invalid(fmt.Errorf("jwt: registered claims: %w", err))
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil || claims == nil {
		return invalid(errors.New("jwt: payload is not a JSON object"))
	}
	if std.Expiry == nil {
		return invalid(errors.New("jwt: exp claim required"))
	}
	expected := jwt.Expected{Issuer: s.issuer, AnyAudience: s.audiences, Time: now}
	if err := std.ValidateWithLeeway(expected, s.leeway); err != nil {
		return invalid(fmt.Errorf("jwt: %w", err))
	}

	subject, _ := claims[s.subjectClaim].(string)
	if subject == "" {
		return invalid(fmt.Errorf("jwt: claim %q must be a non-empty string", s.subjectClaim))
	}
	groups, err := groupsOf(claims[s.groupsClaim])
	if err != nil {
		return invalid(fmt.Errorf("jwt: claim %q: %w", s.groupsClaim, err))
	}
	id := decision.Identity{
		Authenticated: true,
		Method:        decision.MethodJWT,
		Subject:       subject,
		Issuer:        s.issuer,
		KeyID:         hdr.KeyID,
		Groups:        groups,
		Claims:        claims,
	}
	if cacheable {
		a.tokens.add(key, id, ks, now, std.Expiry.Time())
	}
	return id, nil
}

// currentKeys is the key set tokens are verified with now: the JWKS file's,
// or the latest fetched from the JWKS URL (nil before the first fetch).
func (a *Authenticator) currentKeys() *keySet {
	if a.remote != nil {
		return a.remote.current.Load()
	}
	return a.static
}

// groupsOf reads a groups claim: absent or null is no groups, a string is
// split on spaces (the OAuth "scope" convention), an array must hold only
// strings. Anything else is an error rather than silently no groups.
func groupsOf(v any) ([]string, error) {
	switch t := v.(type) {
	case nil:
		return []string{}, nil
	case string:
		return strings.Fields(t), nil
	case []any:
		groups := make([]string, 0, len(t))
		for i, g := range t {
			s, ok := g.(string)
			if !ok {
				return nil, fmt.Errorf("element %d is not a string", i)
			}
			groups = append(groups, s)
		}
		return groups, nil
	default:
		return nil, fmt.Errorf("want an array of strings or a string, got %T", v)
	}
}

// verificationKeys returns the keys that may verify a token with kid and
// alg, and the key set they belong to. For a JWKS URL, a miss (an unknown
// kid, or no key set yet) triggers one refetch, rate-limited to one per
// MinRefetchInterval, so that a key rotated in at the issuer is picked up
// without waiting for Run.
func (a *Authenticator) verificationKeys(ctx context.Context, kid string, alg jose.SignatureAlgorithm) ([]verifyKey, *keySet, error) {
	ks := a.currentKeys()
	if ks != nil {
		keys, err := ks.candidates(kid, alg)
		if err != nil || len(keys) > 0 {
			return keys, ks, err
		}
	}
	if a.remote == nil {
		return nil, nil, fmt.Errorf("no key for kid %q and %s", kid, alg)
	}

	// A failed fetch is logged here, at most once per MinRefetchInterval;
	// the rejected token itself is reported through the returned error.
	err := a.remote.update(ctx, context.WithoutCancel(ctx), false)
	if err != nil && !errors.Is(err, errRateLimited) && ctx.Err() == nil {
		a.log.Warn("jwks refetch failed; keeping the previous key set", "error", err)
	}
	ks = a.remote.current.Load()
	if ks == nil {
		return nil, nil, errors.New("key set not loaded yet")
	}
	keys, err := ks.candidates(kid, alg)
	if err != nil {
		return nil, nil, err
	}
	if len(keys) == 0 {
		return nil, nil, fmt.Errorf("no key for kid %q and %s", kid, alg)
	}
	return keys, ks, nil
}
