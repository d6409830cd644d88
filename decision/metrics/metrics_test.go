package metrics_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/decision/metrics"
)

// fakeStats is a hand-written metrics.CacheStats.
type fakeStats struct{ len, evictions, expirations int }

func (f *fakeStats) Len() int            { return f.len }
func (f *fakeStats) Evictions() uint64   { return uint64(f.evictions) }
func (f *fakeStats) Expirations() uint64 { return uint64(f.expirations) }

// sample is what one gathered series says: a counter's or gauge's value, a
// histogram's sample count.
type sample struct {
	value float64
	count uint64
}

// gather returns every series by name and label pairs, e.g.
// `policygate_eval_duration_seconds{path="data.a.decision"}`.
func gather(t *testing.T, g prometheus.Gatherer) map[string]sample {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]sample{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			if len(m.GetLabel()) > 0 {
				key += "{"
				for i, lp := range m.GetLabel() {
					if i > 0 {
						key += ","
					}
					key += lp.GetName() + `="` + lp.GetValue() + `"`
				}
				key += "}"
			}
			var s sample
			switch {
			case m.GetCounter() != nil:
				s.value = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				s.value = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				s.count = m.GetHistogram().GetSampleCount()
			}
			out[key] = s
		}
	}
	return out
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	stats := &fakeStats{len: 7, evictions: 3, expirations: 2}
	m, err := metrics.New(metrics.Config{Registerer: reg, Cache: stats})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	const p = "data.a.decision"
	m.ObserveDecision(p, decision.OutcomeAllow, decision.CacheHit, time.Microsecond)
	m.ObserveDecision(p, decision.OutcomeAllow, decision.CacheHit, time.Microsecond)
	m.ObserveDecision(p, decision.OutcomeDeny, decision.CacheMiss, time.Millisecond)
	m.ObserveDecision(p, decision.OutcomeDeny, decision.CacheShared, time.Millisecond)
	m.ObserveDecision(p, decision.OutcomeError, decision.CacheOff, time.Millisecond)
	m.ObserveEval(p, 2*time.Millisecond)

	got := gather(t, reg)
	want := map[string]sample{
		"policygate_decision_cache_entries":                                                          {value: 7},
		"policygate_decision_cache_evictions_total":                                                  {value: 3},
		"policygate_decision_cache_expirations_total":                                                {value: 2},
		"policygate_decision_cache_hits_total":                                                       {value: 2},
		"policygate_decision_cache_misses_total":                                                     {value: 2},
		`policygate_decision_duration_seconds{cache="hit",outcome="allow",path="data.a.decision"}`:   {count: 2},
		`policygate_decision_duration_seconds{cache="miss",outcome="deny",path="data.a.decision"}`:   {count: 1},
		`policygate_decision_duration_seconds{cache="shared",outcome="deny",path="data.a.decision"}`: {count: 1},
		`policygate_decision_duration_seconds{cache="off",outcome="error",path="data.a.decision"}`:   {count: 1},
		`policygate_eval_duration_seconds{path="data.a.decision"}`:                                   {count: 1},
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("%s = %+v (present %v), want %+v", k, g, ok, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("gathered %d series, want %d: %v", len(got), len(want), got)
	}
}

func TestMetricsWithoutCache(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if _, err := metrics.New(metrics.Config{Registerer: reg}); err != nil {
		t.Fatalf("New: %v", err)
	}
	for _, name := range []string{metrics.NameCacheEntries, metrics.NameCacheEvictions, metrics.NameCacheExpirations} {
		if _, ok := gather(t, reg)[name]; ok {
			t.Errorf("%s registered without a cache", name)
		}
	}
	if _, err := metrics.New(metrics.Config{Registerer: reg}); err == nil {
		t.Error("registering twice succeeded; want the duplicate reported")
	}
	if _, err := metrics.New(metrics.Config{}); err == nil {
		t.Error("New without a registerer succeeded")
	}
}
