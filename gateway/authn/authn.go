// Package authn owns authentication of admin-API callers: it turns the
// credential headers of a request (an API key in Authorization Bearer or
// Basic, or in a configured header; a bearer JWT verified against a JSON Web
// Key Set) into a decision.Identity holding only verified facts.
//
// It must not import decision internals (only the root decision package's
// types), bundles or xds. go-jose is its only JOSE dependency.
//
// Concurrency: an Authenticator is safe for concurrent use. API keys and a
// JWKS file are immutable after New. The key set of a JWKS URL is an
// immutable value behind an atomic pointer, replaced whole by Run or by an
// on-demand refetch (at most one per MinRefetchInterval, one at a time);
// no lock is held during I/O. Verified JWTs are remembered in a bounded
// cache (tokenCache) under its own mutex; an entry never outlives the
// token's exp nor the key set that verified it.
package authn

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/policygate/policygate/decision"
)

// ErrInvalidCredentials is wrapped by every error Authenticate returns: a
// credential was presented and could not be verified. The gateway answers
// 401; the error text is meant for the log and never contains a secret.
var ErrInvalidCredentials = errors.New("authn: invalid credentials")

// maxTokenLen bounds a bearer token before any parsing.
const maxTokenLen = 64 << 10

// Options carries the dependencies of an Authenticator.
type Options struct {
	// BaseDir resolves relative api_keys_file and jwt.jwks_file paths,
	// usually the directory of the config file. Default "": the working
	// directory.
	BaseDir string
	// HTTPClient fetches jwt.jwks_url. Default: a client with a 10s timeout.
	// Each fetch is bounded to 10s and 1 MiB whatever the client allows.
	// Unless the client sets its own CheckRedirect, redirects must meet the
	// same https rule as jwt.jwks_url.
	HTTPClient *http.Client
	// Log receives JWKS fetch problems. Default: discard.
	Log *slog.Logger
	// Now is the clock used for token lifetimes and the refetch rate limit.
	// Default: time.Now.
	Now func() time.Time
}

// Authenticator verifies request credentials. Create it with New.
type Authenticator struct {
	header string   // canonical API key header; "" when not configured
	keys   []apiKey // immutable
	jwt    *jwtSettings
	static *keySet     // key set of jwt.jwks_file
	remote *remoteKeys // key set of jwt.jwks_url
	tokens *tokenCache // verified JWTs; nil when off
	now    func() time.Time
	log    *slog.Logger
}

// New validates cfg, reads the API keys file and the JWKS file it names, and
// returns an Authenticator. All problems are reported together, each naming
// its key relative to the authn section. A JWKS URL is not fetched here: the
// first JWT or Run fetches it.
func New(cfg Config, opts Options) (*Authenticator, error) {
	v, err := validate(cfg, opts.BaseDir)
	if err != nil {
		return nil, err
	}
	a := &Authenticator{
		header: v.header,
		keys:   v.keys,
		jwt:    v.jwt,
		static: v.static,
		now:    opts.Now,
		log:    opts.Log,
	}
	if a.now == nil {
		a.now = time.Now
	}
	if v.jwt != nil {
		a.tokens = newTokenCache(v.jwt.cacheSize, v.jwt.cacheTTL)
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.log = a.log.With("component", "authn")
	if v.jwt != nil && v.jwt.jwksURL != nil {
		client := &http.Client{Timeout: fetchTimeout}
		if opts.HTTPClient != nil {
			c := *opts.HTTPClient
			client = &c
		}
		if client.CheckRedirect == nil {
			client.CheckRedirect = checkRedirect
		}
		a.remote = &remoteKeys{
			url:     v.jwt.jwksURL,
			client:  client,
			algs:    v.jwt.algorithms,
			refresh: v.jwt.refresh,
			now:     a.now,
			log:     a.log,
		}
	}
	return a, nil
}

// Run keeps the key set of jwt.jwks_url fresh: it fetches at once, then
// every jwt.refresh_interval, retrying failures sooner, until ctx is done.
// A failed refresh keeps the previous key set. Without a JWKS URL it only
// waits for ctx. Run returns nil once ctx is done. It starts no goroutine,
// so there is nothing to close.
func (a *Authenticator) Run(ctx context.Context) error {
	if a.remote == nil {
		<-ctx.Done()
		return nil
	}
	a.remote.run(ctx)
	return nil
}

// CredentialHeaders returns the canonical names of the headers that carry
// credentials: Authorization, Proxy-Authorization and the API key header if
// configured. The gateway strips them before forwarding and keeps them out
// of the policy input. Proxy-Authorization is never used to authenticate.
func (a *Authenticator) CredentialHeaders() []string {
	hs := []string{"Authorization", "Proxy-Authorization"}
	if a.header != "" {
		hs = append(hs, a.header)
	}
	return hs
}

// HashKey returns the hex SHA-256 of an API key secret, the form stored in
// APIKey.SHA256.
func HashKey(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Authenticate verifies the credential in h. With no credential it returns
// decision.Anonymous() and nil. A credential that cannot be verified, or
// more than one credential, yields a zero Identity and an error wrapping
// ErrInvalidCredentials. Header names are matched case-insensitively, so h
// need not be canonicalized. The Groups and Claims of a returned Identity
// may be shared with other requests (a JWT's identity is remembered, see
// JWTConfig.CacheTTL) and must not be modified.
func (a *Authenticator) Authenticate(ctx context.Context, h http.Header) (decision.Identity, error) {
	var authz, apiKey []string
	for name, vs := range h {
		switch {
		case strings.EqualFold(name, "Authorization"):
			authz = append(authz, vs...)
		case a.header != "" && strings.EqualFold(name, a.header):
			apiKey = append(apiKey, vs...)
		}
	}
	switch {
	case len(authz) == 0 && len(apiKey) == 0:
		return decision.Anonymous(), nil
	case len(authz) > 0 && len(apiKey) > 0:
		return invalid(errors.New("both Authorization and " + a.header + " present"))
	case len(authz) > 1:
		return invalid(errors.New("more than one Authorization value"))
	case len(apiKey) > 1:
		return invalid(errors.New("more than one " + a.header + " value"))
	case len(apiKey) == 1:
		return a.apiKey(strings.TrimSpace(apiKey[0]), "", false)
	}

	scheme, cred, _ := strings.Cut(strings.TrimSpace(authz[0]), " ")
	cred = strings.TrimSpace(cred)
	switch {
	case cred == "":
		return invalid(errors.New("malformed Authorization header"))
	case len(cred) > maxTokenLen:
		return invalid(fmt.Errorf("credential longer than %d bytes", maxTokenLen))
	case strings.EqualFold(scheme, "Bearer"):
		if a.jwt != nil && isCompactJWS(cred) {
			return a.verifyJWT(ctx, cred)
		}
		return a.apiKey(cred, "", false)
	case strings.EqualFold(scheme, "Basic"):
		user, pass, err := parseBasic(cred)
		if err != nil {
			return invalid(err)
		}
		return a.apiKey(pass, user, true)
	default:
		return invalid(errors.New("unsupported Authorization scheme"))
	}
}

// apiKey authenticates an API key secret. For Basic, user must equal the
// matching key's ID.
//
// Timing: the secret is hashed and compared with every stored hash in
// constant time, and the match is selected without a branch, so the time
// taken depends on the number of keys only, never on which key (if any)
// matched or on how many leading bytes agreed. A map from hash to key would
// be as fast but its lookup compares bytes with an early exit; since a
// caller knows the hash of what it sends, that could leak prefixes of the
// stored hashes and with them an offline guess at a weak secret. A few
// hundred 32-byte comparisons cost well under a microsecond.
func (a *Authenticator) apiKey(secret, user string, basic bool) (decision.Identity, error) {
	if secret == "" {
		return invalid(errors.New("api key: empty secret"))
	}
	sum := sha256.Sum256([]byte(secret))
	match := 0 // index+1 of the matching key, 0 for none
	for i := range a.keys {
		eq := subtle.ConstantTimeCompare(sum[:], a.keys[i].hash[:])
		match = subtle.ConstantTimeSelect(eq, i+1, match)
	}
	if match == 0 {
		return invalid(errors.New("api key: unknown key"))
	}
	k := &a.keys[match-1]
	if basic && user != k.id {
		// The ID is not secret; checking it after the scan keeps the
		// scan's timing independent of the username.
		return invalid(fmt.Errorf("api key: basic username does not match key id %q", k.id))
	}
	groups := make([]string, len(k.groups))
	copy(groups, k.groups)
	return decision.Identity{
		Authenticated: true,
		Method:        decision.MethodAPIKey,
		Subject:       k.subject,
		KeyID:         k.id,
		Groups:        groups,
		Claims:        map[string]any{},
	}, nil
}

// parseBasic decodes RFC 7617 credentials. Neither part may be empty.
func parseBasic(cred string) (user, pass string, err error) {
	raw, err := base64.StdEncoding.DecodeString(cred)
	if err != nil {
		return "", "", fmt.Errorf("basic: malformed base64: %w", err)
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok || user == "" || pass == "" {
		return "", "", errors.New("basic: want user-id:password")
	}
	return user, pass, nil
}

// isCompactJWS reports whether s has the shape of a JWS in compact
// serialization: three base64url parts, the first two non-empty. An empty
// signature part still counts, so that alg "none" is rejected as a JWT
// rather than looked up as an API key.
func isCompactJWS(s string) bool {
	dots := 0
	start := 0
	for i := 0; i < len(s); i++ {
		if base64URL[s[i]] {
			continue
		}
		if s[i] != '.' || i == start || dots == 2 {
			return false
		}
		dots++
		start = i + 1
	}
	return dots == 2
}

// base64URL marks the bytes of the unpadded base64url alphabet.
var base64URL = func() (t [256]bool) {
	for c := range 256 {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
	}
	return t
}()

// invalid wraps cause with ErrInvalidCredentials.
func invalid(cause error) (decision.Identity, error) {
	return decision.Identity{}, fmt.Errorf("%w: %w", ErrInvalidCredentials, cause)
}
