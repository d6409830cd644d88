package ratelimit

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	checks         *prometheus.CounterVec
	backendSeconds prometheus.Observer
	errTimeout     prometheus.Counter
	errOther       prometheus.Counter
	errBreaker     prometheus.Counter
	breakerOpen    prometheus.Gauge
}

// newMetrics creates the Enforcer's instruments and registers them on reg
// (nil: created, not registered). primary and local are the in-process
// limiters whose size is exported; either may be nil.
func newMetrics(reg prometheus.Registerer, backend string, primary, local *Memory) (*metrics, error) {
	m := &metrics{
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "policygate_ratelimit_checks_total",
			Help: "Rate-limit checks of requests that carried at least one limit, by route and result.",
		}, []string{"route", "result"}),
		breakerOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "policygate_ratelimit_breaker_open",
			Help: "1 while the circuit breaker in front of the rate-limit backend is open or probing.",
		}),
	}
	seconds := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "policygate_ratelimit_backend_seconds",
		Help:    "Latency of rate-limit backend calls (none are made while the breaker is open).",
		Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1},
	}, []string{"backend"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "policygate_ratelimit_backend_errors_total",
		Help: "Rate-limit backend failures by reason: timeout, error, breaker_open (call not made).",
	}, []string{"backend", "reason"})
	m.backendSeconds = seconds.WithLabelValues(backend)
	m.errTimeout = errs.WithLabelValues(backend, "timeout")
	m.errOther = errs.WithLabelValues(backend, "error")
	m.errBreaker = errs.WithLabelValues(backend, "breaker_open")
	collectors := []prometheus.Collector{m.checks, m.breakerOpen, seconds, errs}
	for _, l := range []struct {
		name string
		mem  *Memory
	}{{"primary", primary}, {"local", local}} {
		if l.mem == nil {
			continue
		}
		mem := l.mem
		collectors = append(collectors,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name:        "policygate_ratelimit_memory_keys",
				Help:        "Keys held by an in-process limiter (primary: the memory backend; local: the fallback budget).",
				ConstLabels: prometheus.Labels{"limiter": l.name},
			}, func() float64 { return float64(mem.Len()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name:        "policygate_ratelimit_memory_evictions_total",
				Help:        "Keys evicted from an in-process limiter while their budget was still in use (max_keys too small).",
				ConstLabels: prometheus.Labels{"limiter": l.name},
			}, func() float64 { return float64(mem.Evictions()) }),
		)
	}
	if reg == nil {
		return m, nil
	}
	var regErrs []error
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			regErrs = append(regErrs, err)
		}
	}
	if err := errors.Join(regErrs...); err != nil {
		return nil, fmt.Errorf("ratelimit: register metrics: %w", err)
	}
	return m, nil
}
