// Package ratelimit owns request rate limiting chosen by configuration and
// by policy: the Limit and Decision types, the Limiter interface a backend
// implements, the in-process GCRA limiter (Memory), and the Enforcer that
// the front doors call once per request. The Enforcer combines a route's
// static limits with the decision's rate_limit entries, checks them all
// together (a request rejected by one limit spends nothing from the
// others), bounds every backend call by a timeout, stops calling a dead
// backend with a circuit breaker, and applies the route's failure mode
// (fail_closed: 503, fail_open: forward and count, local: an in-process
// budget) when the backend is down or slow. A backend failure is never a
// 500 and never a 429.
//
// The algorithm is GCRA (the generic cell rate algorithm, as in
// go-redis/redis_rate): each limit keeps one timestamp, the theoretical
// arrival time. A limit of L per period P admits one unit every P/L, and a
// caller that has been quiet may spend up to Burst units at once (Burst
// defaults to L, so "10 per minute" admits 10 at once and then one every 6s).
//
// It must not import its own subpackages (the Redis backend lives in
// gateway/ratelimit/redis, the only home of go-redis), gateway/proxy,
// bundles, xds or decision internals; from decision it uses only the
// RateLimit type.
//
// Concurrency: Memory, Enforcer and Route are safe for concurrent use.
// Memory holds no lock while calling out and starts no goroutine; the
// Enforcer starts none either.
//
// Metrics (registered on the injected prometheus.Registerer):
//
//	policygate_ratelimit_checks_total{route,result}   result: allowed, rejected, fail_open, fail_closed, local_allowed, local_rejected
//	policygate_ratelimit_backend_seconds{backend}      latency of backend calls (not made while the breaker is open)
//	policygate_ratelimit_backend_errors_total{backend,reason}  reason: timeout, error, breaker_open
//	policygate_ratelimit_breaker_open                  1 while the breaker is open or probing
//	policygate_ratelimit_memory_keys{limiter}          keys held in memory; limiter: primary, local
//	policygate_ratelimit_memory_evictions_total{limiter}  live keys evicted to stay within max_keys
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/policygate/policygate/decision"
)

// Source says where a Limit came from.
type Source string

// Sources of limits.
const (
	SourceRoute    Source = "route"    // the route's static configuration
	SourceDecision Source = "decision" // the policy decision's rate_limit field
)

// Limit is one resolved limit for one request: Limit units per Period under
// Key, bursts of up to Burst units, and this request costs Cost units.
// Backends expect a valid Limit (see Validate); the Enforcer only passes
// validated ones.
type Limit struct {
	Key    string
	Limit  int64
	Period time.Duration
	Burst  int64
	Cost   int64
	Source Source
}

// Validate reports whether a backend can enforce l. Limits come already
// validated from configuration and from decision.ParseRateLimits; backends
// check again because their arithmetic depends on it.
func (l Limit) Validate() error {
	return decision.RateLimit{Key: l.Key, Limit: l.Limit, Period: l.Period, Burst: l.Burst, Cost: l.Cost}.Validate()
}

// interval is the emission interval: the time one unit takes to replenish.
func (l *Limit) interval() time.Duration { return l.Period / time.Duration(l.Limit) }

// FromDecision converts the decision's limits, appending them to dst.
func FromDecision(dst []Limit, rls []decision.RateLimit) []Limit {
	for _, rl := range rls {
		dst = append(dst, Limit{Key: rl.Key, Limit: rl.Limit, Period: rl.Period, Burst: rl.Burst, Cost: rl.Cost, Source: SourceDecision})
	}
	return dst
}

// Decision is a backend's answer for all the limits of one request.
type Decision struct {
	// Allowed is true when every limit admitted the request; only then was
	// any quota spent.
	Allowed bool
	// Index is the limit that decided: when rejected, the one that frees
	// up last (its RetryAfter is the longest); when allowed, the one with
	// the fewest units remaining. -1 when there were no limits.
	Index int
	// Remaining is the number of units still available under the limit at
	// Index after this request (0 when rejected).
	Remaining int64
	// RetryAfter is how long until the request could be admitted. Zero
	// when allowed.
	RetryAfter time.Duration
	// ResetAfter is how long until the limit at Index has its full burst
	// available again.
	ResetAfter time.Duration
}

// Limiter checks and spends the limits of one request, all or nothing:
// either every limit admits the request and each spends its cost, or
// nothing is spent. Limits share state when Key, Limit and Period are equal
// and scope is the same; scope partitions keys (the Redis backend keeps one
// scope in one cluster slot). Allow must return promptly once ctx is done.
type Limiter interface {
	Allow(ctx context.Context, scope string, limits []Limit) (Decision, error)
}

// ErrInvalidLimit is returned by backends for a Limit that fails Validate.
var ErrInvalidLimit = errors.New("ratelimit: invalid limit")

// ValidateLimits checks every limit; backends call it before any work.
func ValidateLimits(limits []Limit) error {
	for i := range limits {
		if err := limits[i].Validate(); err != nil {
			return fmt.Errorf("%w: limits[%d] %q: %w", ErrInvalidLimit, i, limits[i].Key, err)
		}
	}
	return nil
}
