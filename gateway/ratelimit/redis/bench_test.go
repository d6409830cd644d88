package redis_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/policygate/policygate/gateway/ratelimit"
	rlredis "github.com/policygate/policygate/gateway/ratelimit/redis"
)

func benchLimits(n int) []ratelimit.Limit {
	keys := []string{"caller:alice", "group:ci", "ip:192.0.2.1"}
	out := make([]ratelimit.Limit, n)
	for i := range out {
		out[i] = lim(keys[i], 1_000_000_000, time.Hour)
	}
	return out
}

// BenchmarkRedisAllow is one check, one EVALSHA, against a local
// redis-server: sequential ns/op is the round-trip latency.
func BenchmarkRedisAllow(b *testing.B) {
	srv := startRedis(b)
	c := goredis.NewClient(&goredis.Options{Addr: srv.addr(), MaxRetries: -1})
	b.Cleanup(func() { _ = c.Close() })
	l := newLimiter(b, c)
	ctx := context.Background()
	if err := l.Load(ctx); err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{1, 3} {
		b.Run("limits="+strconv.Itoa(n), func(b *testing.B) {
			limits := benchLimits(n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := l.Allow(ctx, "api", limits); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRedisAllowParallel compares plain per-request EVALSHA with
// go-redis's autopipelining (the batching option: concurrent checks share
// one write and one read on the connection), with many and few concurrent
// callers.
func BenchmarkRedisAllowParallel(b *testing.B) {
	srv := startRedis(b)
	ctx := context.Background()
	for _, bc := range []struct {
		mode        string
		parallelism int
	}{{"plain", 32}, {"autopipeline", 32}, {"plain", 1}, {"autopipeline", 1}} {
		mode := bc.mode
		b.Run(mode+"/goroutines="+strconv.Itoa(2*bc.parallelism), func(b *testing.B) {
			c := goredis.NewClient(&goredis.Options{Addr: srv.addr(), MaxRetries: -1})
			b.Cleanup(func() { _ = c.Close() })
			var l *rlredis.Limiter
			if mode == "plain" {
				l = newLimiter(b, c)
			} else {
				ap, err := c.AutoPipeline()
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = ap.Close() })
				if l, err = rlredis.New(ap, rlredis.Options{}); err != nil {
					b.Fatal(err)
				}
			}
			if err := l.Load(ctx); err != nil {
				b.Fatal(err)
			}
			var id atomic.Int64
			b.SetParallelism(bc.parallelism) // × GOMAXPROCS goroutines
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				limits := []ratelimit.Limit{lim("caller:"+strconv.FormatInt(id.Add(1), 10), 1_000_000_000, time.Hour), lim("group:ci", 1_000_000_000, time.Hour)}
				for pb.Next() {
					if _, err := l.Allow(ctx, "api", limits); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkEnforcerRedis is the per-request cost through the Enforcer
// (timeout context, breaker, metrics) on the Redis backend.
func BenchmarkEnforcerRedis(b *testing.B) {
	srv := startRedis(b)
	// A generous timeout: this measures the healthy path, not the machine's
	// scheduling hiccups under other load.
	s, err := ratelimit.ParseConfig(ratelimit.Config{Backend: "redis", Timeout: "1s", Redis: ratelimit.RedisConfig{Addrs: []string{srv.addr()}}}, ratelimit.ParseOptions{})
	if err != nil {
		b.Fatal(err)
	}
	rl, err := rlredis.Open(s)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = rl.Close() })
	if err := rl.Load(context.Background()); err != nil {
		b.Fatal(err)
	}
	e, err := ratelimit.NewEnforcer(s, rl, ratelimit.Options{})
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
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if o := e.Check(ctx, rt, v, nil); o.Result != ratelimit.ResultAllowed {
			b.Fatalf("%+v", o)
		}
	}
}
