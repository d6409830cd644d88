package decision

import "time"

// Metrics observes the decision path. decision/metrics implements it with
// Prometheus collectors; the root package stays free of the client library
// (which depends on net/http). Implementations must be safe for concurrent
// use and must not block.
type Metrics interface {
	// ObserveDecision records one Decide call: the rule path, its outcome,
	// how the cache served it and how long it took end to end.
	ObserveDecision(path string, outcome Outcome, cache CacheStatus, took time.Duration)
	// ObserveEval records one policy evaluation of path.
	ObserveEval(path string, took time.Duration)
}

// CacheStatus says how the decision cache served a decision.
type CacheStatus string

// Cache statuses, the values of the "cache" label.
const (
	// CacheOff: no cache is configured, the policy cannot report what its
	// rules read, or the key could not be built; the request was evaluated.
	CacheOff CacheStatus = "off"
	// CacheHit: the result came from the cache; nothing was evaluated.
	CacheHit CacheStatus = "hit"
	// CacheMiss: the cache had no live entry; this request evaluated.
	CacheMiss CacheStatus = "miss"
	// CacheShared: the cache had no live entry and an identical request was
	// already being evaluated; this one waited for that evaluation.
	CacheShared CacheStatus = "shared"
)

type noMetrics struct{}

func (noMetrics) ObserveDecision(string, Outcome, CacheStatus, time.Duration) {}
func (noMetrics) ObserveEval(string, time.Duration)                           {}
