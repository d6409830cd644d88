package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

const (
	// maxJWKSSize bounds a fetched key set; real ones are a few KiB.
	maxJWKSSize = 1 << 20
	// fetchTimeout bounds one JWKS fetch, whatever the HTTP client allows.
	fetchTimeout = 10 * time.Second
	// minRSABits rejects RSA keys too short to be trusted.
	minRSABits = 2048
)

// errRateLimited reports that an on-demand JWKS fetch was skipped because
// the previous one is younger than MinRefetchInterval.
var errRateLimited = errors.New("authn: jwks refetch rate-limited")

// verifyKey is one usable public key of a key set.
type verifyKey struct {
	kid string
	alg string // the JWK "alg" member; "" when the key does not pin one
	key any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// keySet is an immutable set of verification keys.
type keySet struct {
	keys []verifyKey
}

// candidates returns the keys that may verify a token signed with alg that
// names kid. A token without kid is accepted only when exactly one key fits,
// so that an unlabelled token never gets to try every key in turn.
func (ks *keySet) candidates(kid string, alg jose.SignatureAlgorithm) ([]verifyKey, error) {
	var out []verifyKey
	for _, k := range ks.keys {
		if kid != "" && k.kid != kid {
			continue
		}
		if (k.alg != "" && k.alg != string(alg)) || !compatible(alg, k.key) {
			continue
		}
		out = append(out, k)
	}
	if kid == "" && len(out) > 1 {
		return nil, fmt.Errorf("token has no kid and %d keys fit %s", len(out), alg)
	}
	return out, nil
}

// compatible reports whether key can verify signatures made with alg; it
// pins the curve for ECDSA so that a P-256 key is never used for ES512.
func compatible(alg jose.SignatureAlgorithm, key any) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		switch alg {
		case jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512:
			return true
		}
	case *ecdsa.PublicKey:
		switch alg {
		case jose.ES256:
			return k.Curve == elliptic.P256()
		case jose.ES384:
			return k.Curve == elliptic.P384()
		case jose.ES512:
			return k.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == jose.EdDSA
	}
	return false
}

// parseJWKS parses a JSON Web Key Set and keeps the public signature keys
// usable with algs. Each member is parsed on its own so that one key of a
// type this package does not know cannot void the whole set; such keys, and
// private, symmetric or weak keys, are returned in skipped. Keys meant for
// encryption, or for algorithms not in algs, are ignored silently. err is
// set when no usable key remains.
func parseJWKS(data []byte, algs []jose.SignatureAlgorithm) (ks *keySet, skipped []error, err error) {
	var doc struct {
		Keys *[]json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("parse key set: %w", err)
	}
	if doc.Keys == nil {
		return nil, nil, errors.New("parse key set: no \"keys\" member")
	}
	ks = &keySet{}
	for i, raw := range *doc.Keys {
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(raw); err != nil {
			skipped = append(skipped, fmt.Errorf("keys[%d]: %w", i, err))
			continue
		}
		if jwk.Use != "" && jwk.Use != "sig" {
			continue
		}
		if !jwk.IsPublic() {
			if _, ok := jwk.Key.([]byte); ok {
				skipped = append(skipped, fmt.Errorf("keys[%d] (kid %q): symmetric keys are not allowed", i, jwk.KeyID))
			} else {
				skipped = append(skipped, fmt.Errorf("keys[%d] (kid %q): private key material is not allowed", i, jwk.KeyID))
			}
			continue
		}
		if k, ok := jwk.Key.(*rsa.PublicKey); ok && k.N.BitLen() < minRSABits {
			skipped = append(skipped, fmt.Errorf("keys[%d] (kid %q): RSA key of %d bits is below %d", i, jwk.KeyID, k.N.BitLen(), minRSABits))
			continue
		}
		usable := false
		for _, alg := range algs {
			if (jwk.Algorithm == "" || jwk.Algorithm == string(alg)) && compatible(alg, jwk.Key) {
				usable = true
				break
			}
		}
		if usable {
			ks.keys = append(ks.keys, verifyKey{kid: jwk.KeyID, alg: jwk.Algorithm, key: jwk.Key})
		}
	}
	if len(ks.keys) == 0 {
		return nil, skipped, fmt.Errorf("no usable key for algorithms %v", algs)
	}
	return ks, skipped, nil
}

// maxRedirects bounds the redirects followed by a JWKS fetch.
const maxRedirects = 5

// checkRedirect holds every redirect of a JWKS fetch to the rule of
// jwt.jwks_url, so that an https URL cannot be redirected to plain http.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	if _, err := parseJWKSURL(req.URL.String()); err != nil {
		return fmt.Errorf("redirect: %w", err)
	}
	return nil
}

// remoteKeys holds the key set of a JWKS URL.
type remoteKeys struct {
	url     *url.URL
	client  *http.Client
	algs    []jose.SignatureAlgorithm
	refresh time.Duration
	now     func() time.Time
	log     *slog.Logger

	current atomic.Pointer[keySet] // nil until the first successful fetch

	mu        sync.Mutex
	lastFetch time.Time     // start of the latest fetch attempt
	inflight  chan struct{} // closed when the running fetch ends; nil when none runs
}

// update fetches the key set. When a fetch is already running it waits for
// that one instead of starting another; unless force is set it fetches
// only if the latest attempt is at least MinRefetchInterval old, and
// returns errRateLimited otherwise. The wait honours ctx; the fetch itself
// runs under fetchCtx, which the request path detaches from its own
// cancellation so that other waiters still get a result. A failed fetch
// keeps the current key set.
func (r *remoteKeys) update(ctx, fetchCtx context.Context, force bool) error {
	r.mu.Lock()
	if ch := r.inflight; ch != nil {
		r.mu.Unlock()
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	now := r.now()
	if !force && !r.lastFetch.IsZero() && now.Sub(r.lastFetch) < MinRefetchInterval {
		r.mu.Unlock()
		return errRateLimited
	}
	r.lastFetch = now
	ch := make(chan struct{})
	r.inflight = ch
	r.mu.Unlock()

	err := r.fetch(fetchCtx)

	r.mu.Lock()
	r.inflight = nil
	r.mu.Unlock()
	close(ch)
	return err
}

// fetch downloads, parses and installs the key set.
func (r *remoteKeys) fetch(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	where := r.url.Redacted()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url.String(), nil)
	if err != nil {
		return fmt.Errorf("authn: fetch jwks %s: %w", where, err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return fmt.Errorf("authn: fetch jwks: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("authn: fetch jwks %s: unexpected status %s", where, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSSize+1))
	if err != nil {
		return fmt.Errorf("authn: fetch jwks %s: read body: %w", where, err)
	}
	if len(body) > maxJWKSSize {
		return fmt.Errorf("authn: fetch jwks %s: body exceeds %d bytes", where, maxJWKSSize)
	}
	ks, skipped, err := parseJWKS(body, r.algs)
	for _, s := range skipped {
		r.log.Warn("jwks key ignored", "url", where, "error", s)
	}
	if err != nil {
		return fmt.Errorf("authn: fetch jwks %s: %w", where, err)
	}
	r.current.Store(ks)
	r.log.Debug("jwks loaded", "url", where, "keys", len(ks.keys))
	return nil
}

// run refreshes the key set every r.refresh until ctx is done. A failed
// fetch is retried sooner, backing off from MinRefetchInterval up to
// r.refresh, and keeps the previous key set meanwhile.
func (r *remoteKeys) run(ctx context.Context) {
	failures := 0
	for {
		wait := r.refresh
		if err := r.update(ctx, ctx, true); err != nil {
			if ctx.Err() != nil {
				return
			}
			r.log.Warn("jwks refresh failed; keeping the previous key set", "error", err)
			wait = MinRefetchInterval << min(failures, 16)
			wait = min(wait, r.refresh)
			failures++
		} else {
			failures = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
