package decision_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/decision/cache"
	"github.com/policygate/policygate/decision/rego"
	"github.com/policygate/policygate/testdata/bench/rbac"
)

// The benchmarks decide the reference RBAC policy (testdata/bench/rbac)
// with its request mix through the whole engine. They report numbers;
// nothing here asserts a duration.

func rbacEngine(b *testing.B, withCache bool) *decision.Engine {
	b.Helper()
	p, err := rego.LoadDir(context.Background(), "../testdata/bench/rbac", "rbac", []string{rbac.RulePath})
	if err != nil {
		b.Fatal(err)
	}
	cfg := decision.Config{Timeout: time.Second}
	if withCache {
		c, err := cache.New[decision.CacheKey, decision.Result](cache.Config{Size: 10000}, cache.Options{})
		if err != nil {
			b.Fatal(err)
		}
		cfg.Cache = c
	}
	e := decision.NewEngine(cfg)
	e.Activate(p)
	return e
}

// rbacRequests returns n inputs cycling through the mix, each with its own
// request id, as a gateway would build them.
func rbacRequests(n int) []*decision.Input {
	ins := make([]*decision.Input, n)
	for i := range ins {
		ins[i] = rbac.Input(rbac.Mix[i%len(rbac.Mix)], fmt.Sprintf("req-%d", i))
	}
	return ins
}

func checkDecisions(b *testing.B, e *decision.Engine, ins []*decision.Input, opts ...decision.DecideOption) {
	b.Helper()
	for i, in := range ins[:len(rbac.Mix)] {
		d := e.Decide(context.Background(), rbac.RulePath, in, opts...)
		if d.Err != nil || d.Result.Allow != rbac.Mix[i].Allow {
			b.Fatalf("%s %s: allow %v err %v, want %v", rbac.Mix[i].Method, rbac.Mix[i].Path, d.Result.Allow, d.Err, rbac.Mix[i].Allow)
		}
	}
}

func BenchmarkDecideCacheHit(b *testing.B) {
	e := rbacEngine(b, true)
	ins := rbacRequests(1024)
	ttl := decision.WithCacheTTL(time.Hour)
	checkDecisions(b, e, ins, ttl) // fills the cache with the four decisions
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if d := e.Decide(ctx, rbac.RulePath, ins[i%len(ins)], ttl); !d.CacheHit {
			b.Fatal("cache miss")
		}
		i++
	}
}

func BenchmarkDecideUncached(b *testing.B) {
	e := rbacEngine(b, false)
	ins := rbacRequests(1024)
	checkDecisions(b, e, ins)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if d := e.Decide(ctx, rbac.RulePath, ins[i%len(ins)]); d.Err != nil {
			b.Fatal(d.Err)
		}
		i++
	}
}

// BenchmarkDecideCacheMiss decides requests that are each new to the
// cache (a distinct caller every time): lookup, evaluation, store.
func BenchmarkDecideCacheMiss(b *testing.B) {
	e := rbacEngine(b, true)
	ins := rbacRequests(len(rbac.Mix))
	ttl := decision.WithCacheTTL(time.Hour)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		in := ins[i%len(ins)]
		in.Identity.KeyID = fmt.Sprint(i) // a new caller: never a hit
		if d := e.Decide(ctx, rbac.RulePath, in, ttl); d.CacheHit || d.Err != nil {
			b.Fatalf("hit %v err %v, want an evaluated miss", d.CacheHit, d.Err)
		}
		i++
	}
}
