package authn

import (
	"container/list"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/policygate/policygate/decision"
)

// maxCachedTokenLen is the longest token the cache keeps: real tokens are
// one or two KiB, and the bound keeps the cache's memory proportional to
// its size whatever callers present.
const maxCachedTokenLen = 8 << 10

// tokenCache remembers the identities of verified JWTs, so that a caller
// reusing its token — as clients do until it expires — is not verified
// again (an RSA or ECDSA verification and two JSON decodes) on every
// request.
//
// An entry is keyed by the SHA-256 of the exact token string, so only the
// very bytes that were verified can hit. It is reused only while all of
// these hold, and dropped at the first lookup where one does not:
//
//   - the key set that verified it is still the current one: a rotation
//     (any JWKS fetch, even of identical content) retires every entry at
//     once;
//   - the clock is before the token's exp (the leeway is not applied: past
//     exp the token is verified in full again, leeway included) and before
//     the entry's own deadline, at most the cache TTL after verification;
//   - the clock has not gone back before the verification, so nbf and iat
//     hold as they did then.
//
// Only successful verifications are stored. The cache is bounded by size
// (least recently used entries go first). Concurrency: safe for concurrent
// use; one mutex, held for map and list operations only.
type tokenCache struct {
	size int
	ttl  time.Duration

	mu    sync.Mutex
	items map[[sha256.Size]byte]*list.Element
	lru   list.List // of *tokenEntry, most recently used first
}

type tokenEntry struct {
	key      [sha256.Size]byte
	id       decision.Identity
	keys     *keySet   // the key set that verified the token
	verified time.Time // when it was verified
	until    time.Time // exclusive: min(exp, verified+ttl)
}

// newTokenCache returns a cache of size entries, each kept at most ttl; nil
// (no cache) when either is zero.
func newTokenCache(size int, ttl time.Duration) *tokenCache {
	if size <= 0 || ttl <= 0 {
		return nil
	}
	return &tokenCache{size: size, ttl: ttl, items: make(map[[sha256.Size]byte]*list.Element)}
}

// tokenKey is the cache key of a token; ok is false for tokens the cache
// does not keep.
func tokenKey(token string) (key [sha256.Size]byte, ok bool) {
	if len(token) > maxCachedTokenLen {
		return key, false
	}
	// Typical tokens are hashed from a copy on the stack rather than from
	// a []byte conversion, which would allocate on every request.
	var buf [2048]byte
	if len(token) <= len(buf) {
		n := copy(buf[:], token)
		return sha256.Sum256(buf[:n]), true
	}
	return sha256.Sum256([]byte(token)), true
}

// get returns the identity stored under key if it may still be used at now
// with the current key set ks.
func (c *tokenCache) get(key [sha256.Size]byte, ks *keySet, now time.Time) (decision.Identity, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return decision.Identity{}, false
	}
	e := el.Value.(*tokenEntry)
	if ks == nil || e.keys != ks || now.Before(e.verified) || !now.Before(e.until) {
		c.lru.Remove(el)
		delete(c.items, key)
		return decision.Identity{}, false
	}
	c.lru.MoveToFront(el)
	return e.id, true
}

// add stores the identity of a token verified at now with the key set ks,
// for use until the token's exp and at most the cache TTL.
func (c *tokenCache) add(key [sha256.Size]byte, id decision.Identity, ks *keySet, now, exp time.Time) {
	until := now.Add(c.ttl)
	if exp.Before(until) {
		until = exp
	}
	if ks == nil || !now.Before(until) {
		return
	}
	e := &tokenEntry{key: key, id: id, keys: ks, verified: now, until: until}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		el.Value = e
		c.lru.MoveToFront(el)
		return
	}
	for c.lru.Len() >= c.size {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.items, old.Value.(*tokenEntry).key)
	}
	c.items[key] = c.lru.PushFront(e)
}

// len reports the number of entries, expired ones not yet dropped
// included.
func (c *tokenCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
