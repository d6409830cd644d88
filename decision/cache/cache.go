// Package cache provides a bounded, expiring in-process cache: at most Size
// entries, least recently used evicted first, each entry with its own time
// to live. The decision engine keeps interpreted policy results in it.
//
// It must not import OPA, gateway, bundles, xds or any other policygate
// package: it knows nothing about what it stores, and what a key means
// (policy revision, rule path, input hash) is the caller's business.
//
// Concurrency: a *Cache is safe for concurrent use. One mutex guards the
// LRU list; Get reorders it, so reads take the mutex too. No callback, I/O or
// clock other than the injected one runs under it. Stored values are handed
// out as they were added: callers that share them must treat them as
// read-only.
package cache

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// MaxSize bounds Config.Size, so that a typo cannot reserve unbounded
// memory.
const MaxSize = 1 << 24

// Config configures a Cache.
type Config struct {
	// Size is the most entries the cache holds; adding one more evicts the
	// least recently used. Zero (the default) means no cache: New refuses
	// it, and callers leave caching off instead of building one. At most
	// MaxSize.
	Size int `yaml:"size"`
}

// Validate checks c; errors name the key.
func (c Config) Validate() error {
	if c.Size < 0 || c.Size > MaxSize {
		return fmt.Errorf("size: %d must be between 0 (off) and %d", c.Size, MaxSize)
	}
	return nil
}

// Options are the cache's collaborators.
type Options struct {
	// Now is the clock entries expire by. Nil means time.Now.
	Now func() time.Time
}

// Cache is a size-bounded LRU whose entries expire individually.
type Cache[K comparable, V any] struct {
	now func() time.Time

	mu  sync.Mutex
	lru *simplelru.LRU[K, entry[V]]

	evictions   atomic.Uint64
	expirations atomic.Uint64
}

type entry[V any] struct {
	value   V
	expires time.Time
}

// New returns an empty cache holding at most cfg.Size entries.
func New[K comparable, V any](cfg Config, opts Options) (*Cache[K, V], error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if cfg.Size == 0 {
		return nil, errors.New("cache: size: 0 means no cache; do not build one")
	}
	lru, err := simplelru.NewLRU[K, entry[V]](cfg.Size, nil)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c := &Cache[K, V]{now: opts.Now, lru: lru}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// Get returns the value stored under k if it has not expired. An expired
// entry is removed and reported as absent.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Get(k)
	if !ok {
		var zero V
		return zero, false
	}
	if !now.Before(e.expires) {
		c.lru.Remove(k)
		c.expirations.Add(1)
		var zero V
		return zero, false
	}
	return e.value, true
}

// Add stores v under k for ttl, replacing any entry under k. A ttl of zero
// or less stores nothing.
func (c *Cache[K, V]) Add(k K, v V, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	e := entry[V]{value: v, expires: c.now().Add(ttl)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lru.Add(k, e) {
		c.evictions.Add(1)
	}
}

// Len is the number of entries held, expired ones not yet dropped included.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Evictions counts entries dropped so far to make room for newer ones.
func (c *Cache[K, V]) Evictions() uint64 { return c.evictions.Load() }

// Expirations counts entries found past their time to live and dropped.
func (c *Cache[K, V]) Expirations() uint64 { return c.expirations.Load() }
