package ratelimit_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/gateway/ratelimit"
)

func benchLimits(n int) []ratelimit.Limit {
	keys := []string{"caller:alice", "group:ci", "ip:192.0.2.1"}
	out := make([]ratelimit.Limit, n)
	for i := range out {
		out[i] = lim(keys[i], 1_000_000_000, time.Hour)
	}
	return out
}

func BenchmarkMemoryAllow(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run("limits="+strconv.Itoa(n), func(b *testing.B) {
			m := ratelimit.NewMemory(0, nil)
			limits := benchLimits(n)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.Allow(ctx, "api", limits); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// Many callers at once: each goroutine its own caller key, one shared
	// group key (the contended shard).
	b.Run("parallel/limits=2", func(b *testing.B) {
		m := ratelimit.NewMemory(0, nil)
		var id atomic.Int64
		ctx := context.Background()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			limits := []ratelimit.Limit{lim("caller:"+strconv.FormatInt(id.Add(1), 10), 1_000_000_000, time.Hour), lim("group:ci", 1_000_000_000, time.Hour)}
			for pb.Next() {
				if _, err := m.Allow(ctx, "api", limits); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	// Distinct keys beyond max_keys: the eviction path.
	b.Run("churn", func(b *testing.B) {
		m := ratelimit.NewMemory(10_000, nil)
		keys := make([]string, 100_000)
		for i := range keys {
			keys[i] = "caller:" + strconv.Itoa(i)
		}
		ctx := context.Background()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := m.Allow(ctx, "api", []ratelimit.Limit{lim(keys[i%len(keys)], 10, time.Minute)}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkEnforcerCheck is the per-request cost on the memory backend:
// two templated route limits and one decision limit.
func BenchmarkEnforcerCheck(b *testing.B) {
	e, err := ratelimit.NewEnforcer(memorySettings(), nil, ratelimit.Options{})
	if err != nil {
		b.Fatal(err)
	}
	rt, err := ratelimit.ParseRoute("api", ratelimit.RouteConfig{Limits: []ratelimit.LimitConfig{
		{Key: "caller:{subject}", Limit: 1_000_000_000, Period: "1h"},
		{Key: "ip:{remote_addr}", Limit: 1_000_000_000, Period: "1h"},
	}})
	if err != nil {
		b.Fatal(err)
	}
	v := &ratelimit.Values{Subject: "alice", RemoteAddr: "192.0.2.1"}
	dec := []decision.RateLimit{{Key: "group:ci", Limit: 1_000_000_000, Period: time.Hour, Burst: 1_000_000_000, Cost: 1}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if o := e.Check(ctx, rt, v, dec); !o.Allowed() {
			b.Fatal(o)
		}
	}
}
