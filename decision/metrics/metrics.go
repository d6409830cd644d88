// Package metrics provides the Prometheus collectors of the decision path:
// decision and evaluation latency histograms and the decision cache's hits,
// misses, evictions, expirations and size. It implements decision.Metrics,
// so the decision root stays free of the Prometheus client (which depends
// on net/http).
//
// It must not import OPA, gateway, bundles or xds.
//
// Concurrency: a *Metrics is safe for concurrent use; observing never
// blocks on I/O.
package metrics

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/policygate/policygate/decision"
)

// Metric names, stable and listed in the README.
const (
	NameDecisionDuration = "policygate_decision_duration_seconds"
	NameEvalDuration     = "policygate_eval_duration_seconds"
	NameCacheHits        = "policygate_decision_cache_hits_total"
	NameCacheMisses      = "policygate_decision_cache_misses_total"
	NameCacheEvictions   = "policygate_decision_cache_evictions_total"
	NameCacheExpirations = "policygate_decision_cache_expirations_total"
	NameCacheEntries     = "policygate_decision_cache_entries"
)

// CacheStats reads a cache's counters (decision/cache.Cache).
type CacheStats interface {
	Len() int
	Evictions() uint64
	Expirations() uint64
}

// Config wires the collectors.
type Config struct {
	// Registerer receives the collectors. Required.
	Registerer prometheus.Registerer
	// Cache, when set, exports the decision cache's evictions, expirations
	// and entries. Nil: those three are not registered.
	Cache CacheStats
	// Buckets are the latency histogram buckets in seconds. Nil means
	// DefaultBuckets.
	Buckets []float64
}

// DefaultBuckets span a cache hit (microseconds) to a slow evaluation
// near the default 1s timeout.
var DefaultBuckets = []float64{
	0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
}

// Metrics records decisions into Prometheus collectors.
type Metrics struct {
	decision *prometheus.HistogramVec
	eval     *prometheus.HistogramVec
	hits     prometheus.Counter
	misses   prometheus.Counter
}

var _ decision.Metrics = (*Metrics)(nil)

// New creates the collectors and registers them with cfg.Registerer.
func New(cfg Config) (*Metrics, error) {
	if cfg.Registerer == nil {
		return nil, errors.New("metrics: registerer is required")
	}
	buckets := cfg.Buckets
	if buckets == nil {
		buckets = DefaultBuckets
	}
	m := &Metrics{
		decision: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    NameDecisionDuration,
			Help:    "Time to decide one request (cache lookup, evaluation, interpretation), by rule path, outcome and cache status (hit, miss, shared, off).",
			Buckets: buckets,
		}, []string{"path", "outcome", "cache"}),
		eval: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    NameEvalDuration,
			Help:    "Time of one policy evaluation, by rule path.",
			Buckets: buckets,
		}, []string{"path"}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: NameCacheHits,
			Help: "Decisions served from the decision cache.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: NameCacheMisses,
			Help: "Cacheable decisions not found in the decision cache (evaluated, or waiting for an identical evaluation).",
		}),
	}
	cs := []prometheus.Collector{m.decision, m.eval, m.hits, m.misses}
	if c := cfg.Cache; c != nil {
		cs = append(cs,
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: NameCacheEvictions,
				Help: "Decision cache entries evicted to make room for newer ones.",
			}, func() float64 { return float64(c.Evictions()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: NameCacheExpirations,
				Help: "Decision cache entries dropped because their time to live had passed.",
			}, func() float64 { return float64(c.Expirations()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: NameCacheEntries,
				Help: "Entries in the decision cache, expired ones not yet dropped included.",
			}, func() float64 { return float64(c.Len()) }),
		)
	}
	for _, c := range cs {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: register: %w", err)
		}
	}
	return m, nil
}

// ObserveDecision implements decision.Metrics.
func (m *Metrics) ObserveDecision(path string, outcome decision.Outcome, cache decision.CacheStatus, took time.Duration) {
	m.decision.WithLabelValues(path, string(outcome), string(cache)).Observe(took.Seconds())
	switch cache {
	case decision.CacheHit:
		m.hits.Inc()
	case decision.CacheMiss, decision.CacheShared:
		m.misses.Inc()
	}
}

// ObserveEval implements decision.Metrics.
func (m *Metrics) ObserveEval(path string, took time.Duration) {
	m.eval.WithLabelValues(path).Observe(took.Seconds())
}
