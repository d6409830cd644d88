package ratelimit_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/policygate/policygate/gateway/ratelimit"
)

// fakeClock is a manually advanced clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func lim(key string, limit int64, period time.Duration) ratelimit.Limit {
	return ratelimit.Limit{Key: key, Limit: limit, Period: period, Burst: limit, Cost: 1, Source: ratelimit.SourceRoute}
}

func TestMemoryGCRA(t *testing.T) {
	ctx := context.Background()
	type step struct {
		advance    time.Duration
		limits     []ratelimit.Limit
		allowed    bool
		index      int
		remaining  int64
		retryAfter time.Duration
		resetAfter time.Duration
	}
	tenPerMin := lim("caller:a", 10, time.Minute) // one unit per 6s
	burst3 := ratelimit.Limit{Key: "k", Limit: 1, Period: time.Second, Burst: 3, Cost: 1}
	cost2 := ratelimit.Limit{Key: "k", Limit: 4, Period: time.Second, Burst: 4, Cost: 2}
	steps := func(n int, l ratelimit.Limit) []step {
		var s []step
		for i := 1; i <= n; i++ {
			s = append(s, step{limits: []ratelimit.Limit{l}, allowed: true, remaining: int64(n - i), resetAfter: time.Duration(i) * l.Period / time.Duration(l.Limit)})
		}
		return s
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "burst of limit, then one per interval",
			steps: append(steps(10, tenPerMin),
				step{limits: []ratelimit.Limit{tenPerMin}, allowed: false, retryAfter: 6 * time.Second, resetAfter: time.Minute},
				step{advance: 5 * time.Second, limits: []ratelimit.Limit{tenPerMin}, allowed: false, retryAfter: time.Second, resetAfter: 55 * time.Second},
				step{advance: time.Second, limits: []ratelimit.Limit{tenPerMin}, allowed: true, remaining: 0, resetAfter: time.Minute},
				step{limits: []ratelimit.Limit{tenPerMin}, allowed: false, retryAfter: 6 * time.Second, resetAfter: time.Minute},
				step{advance: time.Minute, limits: []ratelimit.Limit{tenPerMin}, allowed: true, remaining: 9, resetAfter: 6 * time.Second},
			),
		},
		{
			name: "burst above limit",
			steps: []step{
				{limits: []ratelimit.Limit{burst3}, allowed: true, remaining: 2, resetAfter: time.Second},
				{limits: []ratelimit.Limit{burst3}, allowed: true, remaining: 1, resetAfter: 2 * time.Second},
				{limits: []ratelimit.Limit{burst3}, allowed: true, remaining: 0, resetAfter: 3 * time.Second},
				{limits: []ratelimit.Limit{burst3}, allowed: false, retryAfter: time.Second, resetAfter: 3 * time.Second},
			},
		},
		{
			name: "cost",
			steps: []step{
				{limits: []ratelimit.Limit{cost2}, allowed: true, remaining: 2, resetAfter: 500 * time.Millisecond},
				{limits: []ratelimit.Limit{cost2}, allowed: true, remaining: 0, resetAfter: time.Second},
				{limits: []ratelimit.Limit{cost2}, allowed: false, retryAfter: 500 * time.Millisecond, resetAfter: time.Second},
				{advance: 250 * time.Millisecond, limits: []ratelimit.Limit{cost2}, allowed: false, retryAfter: 250 * time.Millisecond, resetAfter: 750 * time.Millisecond},
			},
		},
		{
			name: "allowed reports the most exhausted limit",
			steps: []step{
				{limits: []ratelimit.Limit{lim("a", 10, time.Minute), lim("b", 2, time.Minute)}, allowed: true, index: 1, remaining: 1, resetAfter: 30 * time.Second},
			},
		},
		{
			name: "rejected reports the limit that frees up last",
			steps: []step{
				{limits: []ratelimit.Limit{lim("a", 1, time.Minute), lim("b", 1, time.Hour)}, allowed: true, index: 1, remaining: 0, resetAfter: time.Hour},
				{limits: []ratelimit.Limit{lim("a", 1, time.Minute), lim("b", 1, time.Hour)}, allowed: false, index: 1, retryAfter: time.Hour, resetAfter: time.Hour},
			},
		},
		{
			name: "same key with another limit is another budget",
			steps: []step{
				{limits: []ratelimit.Limit{lim("k", 1, time.Minute)}, allowed: true, resetAfter: time.Minute},
				{limits: []ratelimit.Limit{lim("k", 1, time.Minute)}, allowed: false, retryAfter: time.Minute, resetAfter: time.Minute},
				{limits: []ratelimit.Limit{lim("k", 2, time.Minute)}, allowed: true, remaining: 1, resetAfter: 30 * time.Second},
			},
		},
		{
			name: "a budget listed twice spends both costs",
			steps: []step{
				{limits: []ratelimit.Limit{lim("k", 3, time.Minute), lim("k", 3, time.Minute)}, allowed: true, remaining: 1, resetAfter: 40 * time.Second},
				{limits: []ratelimit.Limit{lim("k", 3, time.Minute), lim("k", 3, time.Minute)}, allowed: false, index: 1, retryAfter: 20 * time.Second, resetAfter: 40 * time.Second},
				{limits: []ratelimit.Limit{lim("k", 3, time.Minute)}, allowed: true, remaining: 0, resetAfter: time.Minute},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			m := ratelimit.NewMemory(100, clk.Now)
			for i, s := range tt.steps {
				clk.Advance(s.advance)
				d, err := m.Allow(ctx, "scope", s.limits)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				want := ratelimit.Decision{Allowed: s.allowed, Index: s.index, Remaining: s.remaining, RetryAfter: s.retryAfter, ResetAfter: s.resetAfter}
				if d != want {
					t.Fatalf("step %d: Allow = %+v, want %+v", i, d, want)
				}
			}
		})
	}
}

func TestMemoryScopesAreSeparate(t *testing.T) {
	m := ratelimit.NewMemory(100, newFakeClock().Now)
	l := []ratelimit.Limit{lim("k", 1, time.Minute)}
	for _, scope := range []string{"a", "b"} {
		if d, _ := m.Allow(context.Background(), scope, l); !d.Allowed {
			t.Errorf("scope %q: first request rejected", scope)
		}
	}
}

func TestMemoryRejectsInvalidLimits(t *testing.T) {
	m := ratelimit.NewMemory(100, nil)
	for _, l := range []ratelimit.Limit{
		{Key: "k", Limit: 0, Period: time.Second, Burst: 1, Cost: 1},
		{Key: "k", Limit: 1, Period: 0, Burst: 1, Cost: 1},
		{Key: "k", Limit: 1, Period: time.Second, Burst: 0, Cost: 1},
		{Key: "k", Limit: 1, Period: time.Second, Burst: 1, Cost: 2},
		{Key: "", Limit: 1, Period: time.Second, Burst: 1, Cost: 1},
	} {
		if _, err := m.Allow(context.Background(), "s", []ratelimit.Limit{l}); err == nil {
			t.Errorf("Allow(%+v) accepted an invalid limit", l)
		}
	}
	if d, err := m.Allow(context.Background(), "s", nil); err != nil || !d.Allowed || d.Index != -1 {
		t.Errorf("Allow(no limits) = %+v, %v; want allowed, index -1", d, err)
	}
}

// TestMemoryRejectedSpendsNothing: limits per caller (10/min) and per
// group (8/min); once alice is over her own limit, her rejected requests
// must leave the group's budget untouched for bob.
func TestMemoryRejectedSpendsNothing(t *testing.T) {
	ctx := context.Background()
	m := ratelimit.NewMemory(100, newFakeClock().Now)
	caller := func(name string) ratelimit.Limit { return lim("caller:"+name, 10, time.Minute) }
	group := lim("group:ci", 8, time.Minute)
	// alice spends her own budget on requests that carry only her limit.
	for i := 0; i < 10; i++ {
		if d, _ := m.Allow(ctx, "api", []ratelimit.Limit{caller("alice")}); !d.Allowed {
			t.Fatalf("alice request %d rejected", i)
		}
	}
	for i := 0; i < 50; i++ {
		d, _ := m.Allow(ctx, "api", []ratelimit.Limit{caller("alice"), group})
		if d.Allowed || d.Index != 0 {
			t.Fatalf("alice over her limit: %+v, want rejected by limit 0", d)
		}
	}
	allowed := 0
	for i := 0; i < 20; i++ {
		if d, _ := m.Allow(ctx, "api", []ratelimit.Limit{caller("bob"), group}); d.Allowed {
			allowed++
		}
	}
	if allowed != 8 {
		t.Errorf("bob got %d of the group's 8, want 8: alice's rejected requests spent group quota", allowed)
	}
}

func TestMemoryBoundedKeys(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	const maxKeys = 256
	m := ratelimit.NewMemory(maxKeys, clk.Now)
	for i := 0; i < 10*maxKeys; i++ {
		if _, err := m.Allow(ctx, "s", []ratelimit.Limit{lim(fmt.Sprint("k", i), 1, time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if n := m.Len(); n > maxKeys+memShardSlack {
			t.Fatalf("after %d keys Len = %d, want at most %d", i+1, n, maxKeys)
		}
	}
	if m.Evictions() == 0 {
		t.Error("no evictions counted while live keys were dropped")
	}

	// Keys whose budget is restored are dropped without counting as
	// evictions.
	clk.Advance(2 * time.Hour)
	before := m.Evictions()
	for i := 0; i < 10*maxKeys; i++ {
		if _, err := m.Allow(ctx, "s", []ratelimit.Limit{lim(fmt.Sprint("new", i), 1, time.Millisecond)}); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Millisecond)
	}
	if got := m.Evictions() - before; got != 0 {
		t.Errorf("%d evictions of expired keys, want 0", got)
	}
}

// memShardSlack allows for rounding maxKeys up to a multiple of the shard
// count.
const memShardSlack = 64

func TestMemoryConcurrentExact(t *testing.T) {
	m := ratelimit.NewMemory(1000, newFakeClock().Now)
	const limit, workers, each = 50, 8, 40
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				d, err := m.Allow(context.Background(), "s", []ratelimit.Limit{
					lim("shared", limit, time.Hour), lim(fmt.Sprint("w", w), 1000, time.Hour), lim("other", 1000, time.Hour),
				})
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					allowed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if got := allowed.Load(); got != limit {
		t.Errorf("allowed %d of %d concurrent requests, want exactly %d", got, workers*each, limit)
	}
}
