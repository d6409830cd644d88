package redis_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/policygate/policygate/gateway/ratelimit"
	rlredis "github.com/policygate/policygate/gateway/ratelimit/redis"
)

func lim(key string, limit int64, period time.Duration) ratelimit.Limit {
	return ratelimit.Limit{Key: key, Limit: limit, Period: period, Burst: limit, Cost: 1, Source: ratelimit.SourceRoute}
}

func newLimiter(tb testing.TB, c *goredis.Client) *rlredis.Limiter {
	tb.Helper()
	l, err := rlredis.New(c, rlredis.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

func TestGCRA(t *testing.T) {
	srv := startRedis(t)
	c := srv.client()
	l := newLimiter(t, c)
	ctx := context.Background()

	t.Run("burst then retry after one interval", func(t *testing.T) {
		five := []ratelimit.Limit{lim("caller:a", 5, time.Hour)} // one unit per 12 min
		for i := 4; i >= 0; i-- {
			d, err := l.Allow(ctx, "api", five)
			if err != nil {
				t.Fatal(err)
			}
			if !d.Allowed || d.Remaining != int64(i) || d.Index != 0 {
				t.Fatalf("request %d: %+v, want allowed with %d remaining", 5-i, d, i)
			}
		}
		d, err := l.Allow(ctx, "api", five)
		if err != nil {
			t.Fatal(err)
		}
		// Server time moves between calls: allow a second of drift.
		if d.Allowed || d.RetryAfter > 12*time.Minute || d.RetryAfter < 12*time.Minute-time.Second ||
			d.ResetAfter > time.Hour || d.ResetAfter < time.Hour-time.Second {
			t.Fatalf("sixth request: %+v, want rejected, retry ≈ 12m, reset ≈ 1h", d)
		}
		key := rlredis.Key(rlredis.KeyTag("pg:", "api"), &five[0])
		if key != "pg:{api}:5:3600000:caller:a" {
			t.Errorf("key = %q", key)
		}
		ttl, err := c.PTTL(ctx, key).Result()
		if err != nil || ttl <= 59*time.Minute || ttl > time.Hour+time.Second {
			t.Errorf("PTTL(%s) = %v, %v; want about the time until the budget is restored (1h)", key, ttl, err)
		}
	})

	t.Run("cost and burst", func(t *testing.T) {
		l1 := ratelimit.Limit{Key: "k", Limit: 10, Period: time.Hour, Burst: 20, Cost: 7}
		var allowed []bool
		for i := 0; i < 4; i++ {
			d, err := l.Allow(ctx, "cost", []ratelimit.Limit{l1})
			if err != nil {
				t.Fatal(err)
			}
			allowed = append(allowed, d.Allowed)
		}
		if fmt.Sprint(allowed) != "[true true false false]" {
			t.Errorf("cost 7 of burst 20: %v, want two admitted", allowed)
		}
	})

	t.Run("scopes and limits are separate budgets", func(t *testing.T) {
		for _, c := range []struct {
			scope string
			l     ratelimit.Limit
		}{
			{"s1", lim("k", 1, time.Hour)},
			{"s2", lim("k", 1, time.Hour)},
			{"s1", lim("k", 2, time.Hour)},
			{"s1", lim("k", 1, time.Minute)},
			{"", lim("k", 1, time.Hour)},
			{"{weird}%", lim("k", 1, time.Hour)},
		} {
			if d, err := l.Allow(ctx, c.scope, []ratelimit.Limit{c.l}); err != nil || !d.Allowed {
				t.Errorf("scope %q limit %+v: %+v, %v; want a fresh budget", c.scope, c.l, d, err)
			}
		}
	})

	t.Run("a budget listed twice spends both costs", func(t *testing.T) {
		two := []ratelimit.Limit{lim("dup", 3, time.Hour), lim("dup", 3, time.Hour)}
		d1, _ := l.Allow(ctx, "dup", two)
		d2, _ := l.Allow(ctx, "dup", two)
		d3, _ := l.Allow(ctx, "dup", two[:1])
		d4, _ := l.Allow(ctx, "dup", two[:1])
		if !d1.Allowed || d1.Remaining != 1 || d2.Allowed || d2.Index != 1 || !d3.Allowed || d4.Allowed {
			t.Errorf("got %+v %+v %+v %+v", d1, d2, d3, d4)
		}
	})

	t.Run("invalid limits never reach redis", func(t *testing.T) {
		if _, err := l.Allow(ctx, "x", []ratelimit.Limit{{Key: "k", Limit: 1, Period: time.Second, Burst: 1, Cost: 2}}); err == nil {
			t.Error("cost above burst accepted")
		}
	})
}

// TestRetryAfterIsExact waits for the reported Retry-After and expects the
// request to pass then: the script's arithmetic matches the server clock.
func TestRetryAfterIsExact(t *testing.T) {
	l := newLimiter(t, startRedis(t).client())
	ctx := context.Background()
	ten := []ratelimit.Limit{lim("k", 10, time.Second)}
	for i := 0; i < 10; i++ {
		if d, err := l.Allow(ctx, "s", ten); err != nil || !d.Allowed {
			t.Fatalf("burst request %d: %+v, %v", i, d, err)
		}
	}
	d, err := l.Allow(ctx, "s", ten)
	if err != nil || d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > 100*time.Millisecond {
		t.Fatalf("over the burst: %+v, %v; want rejected with retry ≤ 100ms", d, err)
	}
	time.Sleep(d.RetryAfter + time.Millisecond) // the wait the client is told to make
	if d, err := l.Allow(ctx, "s", ten); err != nil || !d.Allowed {
		t.Errorf("after Retry-After: %+v, %v; want allowed", d, err)
	}
}

// accuracy runs 4 limiter instances (each with its own client, as 4
// gateway replicas would) against one Redis deployment: for each scope a
// group limit of n per hour in the same script call as a per-caller limit,
// hammered by 8 goroutines. Exactly n must pass per scope (the issue allows
// ±1).
func accuracy(t *testing.T, cfg ratelimit.RedisConfig, scopes []string) {
	const (
		n         = 50
		instances = 4
		perInst   = 2
		attempts  = 30
	)
	s, err := ratelimit.ParseConfig(ratelimit.Config{Backend: "redis", Timeout: "2s", Redis: cfg}, ratelimit.ParseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	limiters := make([]*rlredis.Limiter, instances)
	for i := range limiters {
		l, err := rlredis.Open(s)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		limiters[i] = l
	}
	allowed := make([]atomic.Int64, len(scopes))
	var wg sync.WaitGroup
	for _, l := range limiters {
		for g := 0; g < perInst; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for a := 0; a < attempts; a++ {
					for si, scope := range scopes {
						ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
						d, err := l.Allow(ctx, scope, []ratelimit.Limit{
							lim(fmt.Sprintf("caller:%d", g), 1000, time.Hour),
							lim("group:ci", n, time.Hour),
						})
						cancel()
						if err != nil {
							t.Error(err)
							return
						}
						if d.Allowed {
							allowed[si].Add(1)
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	for si, scope := range scopes {
		got := allowed[si].Load()
		t.Logf("scope %q: %d of %d attempts from %d instances allowed under a limit of %d", scope, got, instances*perInst*attempts, instances, n)
		if got < n-1 || got > n+1 {
			t.Errorf("scope %q: allowed %d, want %d ± 1", scope, got, n)
		}
	}
}

func TestAccuracyStandalone(t *testing.T) {
	srv := startRedis(t)
	accuracy(t, ratelimit.RedisConfig{Addrs: []string{srv.addr()}}, []string{"api"})
}

func TestAccuracySentinel(t *testing.T) {
	master := startRedis(t)
	sentinel := startSentinel(t, master)
	accuracy(t, ratelimit.RedisConfig{Addrs: []string{sentinel.addr()}, MasterName: "mymaster"}, []string{"api"})
	if n, err := master.client().DBSize(context.Background()).Result(); err != nil || n == 0 {
		t.Errorf("master holds %d keys (%v): the limiter did not reach it through Sentinel", n, err)
	}
}

func TestAccuracyCluster(t *testing.T) {
	nodes := startCluster(t, 3)
	addrs := []string{nodes[0].addr(), nodes[1].addr(), nodes[2].addr()}
	// Braces and the empty scope must still keep each request in one slot.
	scopes := []string{"api", "billing", "users", "keys", "{tricky}", "tenant:7", ""}
	accuracy(t, ratelimit.RedisConfig{Addrs: addrs, Cluster: true}, scopes)

	// The scopes' slots spread over the masters: more than one holds keys.
	holding := 0
	for _, node := range nodes {
		n, err := node.client().DBSize(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			holding++
		}
	}
	if holding < 2 {
		t.Errorf("keys of %d scopes sit on %d of 3 masters, want them spread", len(scopes), holding)
	}
}

// TestRateAccuracyOverTime hammers one limit of 20/s (burst 20) from 4
// instances for about a second: GCRA admits at most burst + elapsed/T, and
// under continuous demand no fewer (server time measured around the run).
func TestRateAccuracyOverTime(t *testing.T) {
	srv := startRedis(t)
	admin := srv.client()
	const (
		limit     = 20
		instances = 4
		run       = 1200 * time.Millisecond
	)
	limiters := make([]*rlredis.Limiter, instances)
	for i := range limiters {
		c := goredis.NewClient(&goredis.Options{Addr: srv.addr(), MaxRetries: -1})
		t.Cleanup(func() { _ = c.Close() })
		limiters[i] = newLimiter(t, c)
		if _, err := limiters[i].Allow(context.Background(), "warm", []ratelimit.Limit{lim("k", limit, time.Second)}); err != nil {
			t.Fatal(err) // connect before the clock starts
		}
	}
	ctx := context.Background()
	t0, err := admin.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	var allowed, attempts atomic.Int64
	stop := time.Now().Add(run)
	var wg sync.WaitGroup
	for _, l := range limiters {
		for g := 0; g < 2; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(stop) {
					d, err := l.Allow(ctx, "rate", []ratelimit.Limit{lim("k", limit, time.Second)})
					if err != nil {
						t.Error(err)
						return
					}
					attempts.Add(1)
					if d.Allowed {
						allowed.Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()
	t1, err := admin.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	elapsed := t1.Sub(t0)
	interval := time.Second / limit
	// The upper bound is GCRA's guarantee. The lower one allows for demand
	// lost to scheduling on a busy machine (up to 4 intervals, 200ms).
	upper := int64(limit) + int64(elapsed/interval) + 1
	lower := int64(limit) + int64(elapsed/interval) - 4
	got := allowed.Load()
	t.Logf("%d of %d attempts allowed over %v of server time; GCRA bound burst+elapsed/T = %d", got, attempts.Load(), elapsed.Round(time.Millisecond), int64(limit)+int64(elapsed/interval))
	if got > upper || got < lower {
		t.Errorf("allowed %d, want within [%d, %d]", got, lower, upper)
	}
}

// TestOneRoundTripPerRequest counts commands on the server: every check,
// whatever its number of limits, is one EVALSHA.
func TestOneRoundTripPerRequest(t *testing.T) {
	srv := startRedis(t)
	admin := srv.client()
	c := goredis.NewClient(&goredis.Options{Addr: srv.addr(), MaxRetries: -1, PoolSize: 4})
	t.Cleanup(func() { _ = c.Close() })
	sent := &sentCounter{}
	c.AddHook(sent)
	l := newLimiter(t, c)
	ctx := context.Background()
	if err := l.Load(ctx); err != nil {
		t.Fatal(err)
	}
	three := []ratelimit.Limit{lim("caller:a", 1_000_000, time.Hour), lim("group:ci", 1_000_000, time.Hour), lim("ip:192.0.2.1", 1_000_000, time.Hour)}
	if _, err := l.Allow(ctx, "warm", three); err != nil { // open the connection
		t.Fatal(err)
	}
	if err := admin.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	sent.n.Store(0)
	const requests = 300
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < requests/4; i++ {
				if _, err := l.Allow(ctx, "api", three[:1+i%3]); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	stats := commandStats(t, admin)
	scripts := stats["evalsha"] + stats["eval"]
	t.Logf("%d requests (1–3 limits each): %d commands sent by the client (+%d connection hand-shake); server: evalsha=%d eval=%d (inside the script: time=%d get=%d set=%d)",
		requests, sent.n.Load(), sent.setup.Load(), stats["evalsha"], stats["eval"], stats["time"], stats["get"], stats["set"])
	if scripts != requests || stats["eval"] != 0 {
		t.Errorf("%d script calls for %d requests (eval %d), want exactly one EVALSHA per request", scripts, requests, stats["eval"])
	}
	if n := sent.n.Load(); n != requests {
		t.Errorf("the client sent %d commands for %d requests, want one each", n, requests)
	}
	for cmd, n := range stats {
		switch cmd {
		case "evalsha", "time", "get", "set", // the script and what it runs inside the server
			"config|resetstat", "hello", "client|setinfo", "client|setname": // this test, connection set-up
		default:
			t.Errorf("unexpected command %s called %d times", cmd, n)
		}
	}

	// After SCRIPT FLUSH (or a restart), the first check pays one EVAL;
	// later ones are single EVALSHAs again.
	if err := admin.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if _, err := l.Allow(ctx, "api", three); err != nil {
			t.Fatal(err)
		}
	}
	stats = commandStats(t, admin)
	if stats["evalsha"] != 10 || stats["eval"] != 1 {
		t.Errorf("after SCRIPT FLUSH: evalsha=%d eval=%d, want 10 and 1", stats["evalsha"], stats["eval"])
	}
}

// sentCounter counts the commands (round trips) a client sends, apart
// from the hand-shake of each new connection.
type sentCounter struct{ n, setup atomic.Int64 }

func (h *sentCounter) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (h *sentCounter) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if isSetup(cmd) {
			h.setup.Add(1)
		} else {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (h *sentCounter) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		setup := true
		for _, c := range cmds {
			setup = setup && isSetup(c)
		}
		if setup {
			h.setup.Add(1)
		} else {
			h.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

func isSetup(cmd goredis.Cmder) bool {
	switch cmd.Name() {
	case "hello", "client", "auth", "select":
		return true
	}
	return false
}

// TestRejectedSpendNothing is the "rejected requests spend quota" fault
// row against Redis: limits per caller (10/min) and per group (8/min);
// alice over her own limit must not drain the group.
func TestRejectedSpendNothing(t *testing.T) {
	l := newLimiter(t, startRedis(t).client())
	ctx := context.Background()
	caller := func(name string) ratelimit.Limit { return lim("caller:"+name, 10, time.Minute) }
	group := lim("group:ci", 8, time.Minute)
	for i := 0; i < 10; i++ {
		if d, err := l.Allow(ctx, "api", []ratelimit.Limit{caller("alice")}); err != nil || !d.Allowed {
			t.Fatalf("alice %d: %+v %v", i, d, err)
		}
	}
	for i := 0; i < 50; i++ {
		d, err := l.Allow(ctx, "api", []ratelimit.Limit{caller("alice"), group})
		if err != nil || d.Allowed || d.Index != 0 {
			t.Fatalf("alice over her limit: %+v %v, want rejected by her own limit", d, err)
		}
	}
	allowed := 0
	for i := 0; i < 20; i++ {
		d, err := l.Allow(ctx, "api", []ratelimit.Limit{caller("bob"), group})
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed {
			allowed++
		}
	}
	if allowed != 8 {
		t.Errorf("bob got %d of the group's 8: alice's rejected requests spent group quota", allowed)
	}
}

// fakeClock drives the Enforcer's breaker so the tests decide when a probe
// is due.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

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

// counting wraps the real limiter to count the calls that reach it.
type counting struct {
	ratelimit.Limiter
	calls atomic.Int64
}

func (c *counting) Allow(ctx context.Context, scope string, limits []ratelimit.Limit) (ratelimit.Decision, error) {
	c.calls.Add(1)
	return c.Limiter.Allow(ctx, scope, limits)
}

type enforcerRig struct {
	srv *redisServer
	clk *fakeClock
	lim *counting
	e   *ratelimit.Enforcer
}

func newRig(t *testing.T, timeout time.Duration) *enforcerRig {
	t.Helper()
	srv := startRedis(t)
	s, err := ratelimit.ParseConfig(ratelimit.Config{
		Backend: "redis",
		Timeout: timeout.String(),
		Redis:   ratelimit.RedisConfig{Addrs: []string{srv.addr()}, PoolSize: 4},
		Breaker: ratelimit.BreakerConfig{Failures: 3, OpenFor: "1s"},
	}, ratelimit.ParseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := rlredis.Open(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rl.Close() })
	if err := rl.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	cl := &counting{Limiter: rl}
	e, err := ratelimit.NewEnforcer(s, cl, ratelimit.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return &enforcerRig{srv: srv, clk: clk, lim: cl, e: e}
}

// TestBackendDown is the "backend down" fault row with a real Redis killed
// mid-test and restarted: fail_open forwards (counted), fail_closed
// answers 503, local uses the in-process budget; never 500, never 429 for
// the failure; the breaker stops the calls; recovery is automatic.
func TestBackendDown(t *testing.T) {
	tests := []struct {
		mode   ratelimit.FailureMode
		result ratelimit.Result
		status int
	}{
		{ratelimit.FailClosed, ratelimit.ResultFailClosed, http.StatusServiceUnavailable},
		{ratelimit.FailOpen, ratelimit.ResultFailOpen, 0},
		{ratelimit.FailLocal, ratelimit.ResultLocalAllowed, 0},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			rig := newRig(t, 250*time.Millisecond) // refused connections fail at once; the margin is for a busy machine
			rt, err := ratelimit.ParseRoute("api", ratelimit.RouteConfig{
				// Large enough that neither Redis nor the local budget
				// rejects under the load phase: every outcome below is the
				// backend's or the failure mode's.
				Limits:      []ratelimit.LimitConfig{{Key: "caller:{subject}", Limit: 1_000_000, Period: "1h"}},
				FailureMode: string(tt.mode),
			})
			if err != nil {
				t.Fatal(err)
			}
			v := &ratelimit.Values{Subject: "alice"}
			ctx := context.Background()
			for i := 0; i < 3; i++ {
				if o := rig.e.Check(ctx, rt, v, nil); o.Result != ratelimit.ResultAllowed || o.Backend != "redis" {
					t.Fatalf("healthy: %+v", o)
				}
			}

			rig.srv.kill()
			before := rig.lim.calls.Load()
			const n = 30
			for i := 0; i < n; i++ {
				o := rig.e.Check(ctx, rt, v, nil)
				if o.Status == http.StatusInternalServerError || o.Status == http.StatusTooManyRequests {
					t.Fatalf("request %d with Redis down: status %d", i, o.Status)
				}
				if o.Result != tt.result || o.Status != tt.status || o.Err == nil {
					t.Fatalf("request %d with Redis down: %+v, want %s/%d", i, o, tt.result, tt.status)
				}
			}
			if calls := rig.lim.calls.Load() - before; calls != 3 {
				t.Errorf("Redis was called %d times for %d requests while down, want 3 (breaker threshold)", calls, n)
			}

			rig.srv.start()
			waitFor(t, recoveryTimeout, "the breaker to close after Redis restarted", func() bool {
				rig.clk.Advance(time.Second) // each attempt is a due probe
				o := rig.e.Check(ctx, rt, v, nil)
				return o.Result == ratelimit.ResultAllowed && o.Backend == "redis"
			})
			if o := rig.e.Check(ctx, rt, v, nil); o.Result != ratelimit.ResultAllowed || o.Backend != "redis" || o.Err != nil {
				t.Errorf("after recovery: %+v", o)
			}

			// Again under concurrent load: Redis dies and comes back while
			// requests are in flight. Every outcome is a Redis answer or
			// the configured mode, never anything else.
			var fromRedis, fromMode, bad atomic.Int64
			var firstBad atomic.Pointer[ratelimit.Outcome]
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for w := 0; w < 4; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						o := rig.e.Check(ctx, rt, v, nil)
						switch {
						case o.Result == ratelimit.ResultAllowed && o.Backend == "redis":
							fromRedis.Add(1)
						case o.Result == tt.result && o.Status == tt.status:
							fromMode.Add(1)
						case tt.result == ratelimit.ResultLocalAllowed && o.Result == ratelimit.ResultLocalRejected && o.Status == http.StatusTooManyRequests:
							// A fast machine can spend the whole local budget
							// during the outage: its exhaustion is still local.
							fromMode.Add(1)
						default:
							bad.Add(1)
							firstBad.CompareAndSwap(nil, &o)
						}
					}
				}()
			}
			waitFor(t, recoveryTimeout, "checks answered by Redis", func() bool { return fromRedis.Load() > 50 })
			rig.srv.kill()
			waitFor(t, recoveryTimeout, "checks answered by the failure mode", func() bool { return fromMode.Load() > 50 })
			rig.srv.start()
			mark := fromRedis.Load()
			waitFor(t, recoveryTimeout, "checks answered by Redis again", func() bool {
				rig.clk.Advance(time.Second)
				return fromRedis.Load() > mark+50
			})
			close(stop)
			wg.Wait()
			t.Logf("under load: %d answered by Redis, %d by %s, %d other", fromRedis.Load(), fromMode.Load(), tt.mode, bad.Load())
			if o := firstBad.Load(); o != nil {
				t.Errorf("%d outcomes under load were neither Redis's nor %s, e.g. %+v", bad.Load(), tt.mode, *o)
			}
		})
	}
}

// TestBackendStalled is the "backend stalled" fault row: Redis accepts
// connections but never answers (SIGSTOP). Each check is bounded by the
// timeout; once the breaker opens no call is made, so the added latency
// disappears; one probe per open_for pays the timeout; SIGCONT recovers.
func TestBackendStalled(t *testing.T) {
	const timeout = 100 * time.Millisecond
	// Generous ceiling on a 2-core machine shared with other builds; the
	// failure it catches is go-redis's 5s default or an unbounded wait.
	const ceiling = timeout + 400*time.Millisecond
	rig := newRig(t, timeout)
	rt, err := ratelimit.ParseRoute("api", ratelimit.RouteConfig{
		Limits:      []ratelimit.LimitConfig{{Key: "caller:{subject}", Limit: 1000, Period: "1h"}},
		FailureMode: "fail_open",
	})
	if err != nil {
		t.Fatal(err)
	}
	v := &ratelimit.Values{Subject: "alice"}
	ctx := context.Background()
	waitFor(t, recoveryTimeout, "a healthy check", func() bool {
		return rig.e.Check(ctx, rt, v, nil).Result == ratelimit.ResultAllowed
	})

	rig.srv.signal(syscall.SIGSTOP)
	// Concurrent checks at the start of the stall: each pays at most the
	// timeout.
	const concurrent = 8
	lat := make([]time.Duration, concurrent)
	var wg sync.WaitGroup
	for i := range lat {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			o := rig.e.Check(ctx, rt, v, nil)
			lat[i] = time.Since(start)
			if o.Result != ratelimit.ResultFailOpen {
				t.Errorf("stalled: %+v, want fail_open", o)
			}
		}()
	}
	wg.Wait()
	maxLat := time.Duration(0)
	for _, l := range lat {
		maxLat = max(maxLat, l)
	}
	t.Logf("stalled Redis, %d concurrent checks before the breaker opened: max added latency %v (timeout %v)", concurrent, maxLat.Round(time.Millisecond), timeout)
	if maxLat > ceiling {
		t.Errorf("a check took %v with Redis stalled, want it bounded by the %v timeout", maxLat, timeout)
	}

	// The breaker is open: no call reaches Redis, checks return at once.
	before := rig.lim.calls.Load()
	var worst time.Duration
	const open = 200
	for i := 0; i < open; i++ {
		start := time.Now()
		if o := rig.e.Check(ctx, rt, v, nil); o.Result != ratelimit.ResultFailOpen || !strings.Contains(o.Err.Error(), "breaker") {
			t.Fatalf("breaker open: %+v", o)
		}
		worst = max(worst, time.Since(start))
	}
	if calls := rig.lim.calls.Load() - before; calls != 0 {
		t.Errorf("%d calls reached a stalled Redis while the breaker was open", calls)
	}
	t.Logf("breaker open: %d checks, worst %v, 0 Redis calls", open, worst)

	// One probe per open_for pays the timeout, and fails.
	rig.clk.Advance(time.Second)
	start := time.Now()
	rig.e.Check(ctx, rt, v, nil)
	probe := time.Since(start)
	rig.e.Check(ctx, rt, v, nil)
	if calls := rig.lim.calls.Load() - before; calls != 1 {
		t.Errorf("%d calls after open_for, want one probe", calls)
	}
	t.Logf("probe into the stalled Redis took %v", probe.Round(time.Millisecond))
	if probe > ceiling {
		t.Errorf("probe took %v, want it bounded by the %v timeout", probe, timeout)
	}

	rig.srv.signal(syscall.SIGCONT)
	waitFor(t, recoveryTimeout, "recovery after SIGCONT", func() bool {
		rig.clk.Advance(time.Second)
		return rig.e.Check(ctx, rt, v, nil).Result == ratelimit.ResultAllowed
	})
}

// TestOpenWithPassword goes from the configuration section to a working
// limiter against a Redis that requires a password.
func TestOpenWithPassword(t *testing.T) {
	srv := startRedis(t, "--requirepass", "s3cret")
	dir := t.TempDir()
	for name, content := range map[string]string{"redis.pass": "s3cret\n", "wrong.pass": "nope\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, pw := range []struct {
		file string
		ok   bool
	}{{"redis.pass", true}, {"wrong.pass", false}} {
		s, err := ratelimit.ParseConfig(ratelimit.Config{
			Backend: "redis",
			Timeout: "1s",
			Redis:   ratelimit.RedisConfig{Addrs: []string{srv.addr()}, PasswordFile: pw.file},
		}, ratelimit.ParseOptions{BaseDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		l, err := rlredis.Open(s)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = l.Allow(ctx, "api", []ratelimit.Limit{lim("k", 1, time.Second)})
		cancel()
		_ = l.Close()
		if (err == nil) != pw.ok {
			t.Errorf("password from %s: err = %v, want ok=%v", pw.file, err, pw.ok)
		}
	}
}

func TestNewRejectsBadPrefix(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	if _, err := rlredis.New(c, rlredis.Options{KeyPrefix: "a{"}); err == nil {
		t.Error("prefix with '{' accepted")
	}
	if _, err := rlredis.Open(&ratelimit.Settings{}); err == nil {
		t.Error("Open without redis settings accepted")
	}
}
