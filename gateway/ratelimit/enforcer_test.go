package ratelimit_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/gateway/ratelimit"
)

// remoteFunc is a hand-written stand-in for a remote backend whose
// failures the test controls. The real Redis backend is exercised in
// gateway/ratelimit/redis.
type remoteFunc struct {
	calls atomic.Int64
	fn    func(ctx context.Context, scope string, limits []ratelimit.Limit) (ratelimit.Decision, error)
}

func (r *remoteFunc) Allow(ctx context.Context, scope string, limits []ratelimit.Limit) (ratelimit.Decision, error) {
	r.calls.Add(1)
	return r.fn(ctx, scope, limits)
}

func mustRoute(t *testing.T, name string, c ratelimit.RouteConfig) *ratelimit.Route {
	t.Helper()
	r, err := ratelimit.ParseRoute(name, c)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// metricValue returns the value of the counter or gauge name with labels
// (a subset match), or -1 when absent.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1
}

func memorySettings() *ratelimit.Settings {
	s, _ := ratelimit.ParseConfig(ratelimit.Config{}, ratelimit.ParseOptions{})
	return s
}

func TestEnforcerMemoryHeadersAndLog(t *testing.T) {
	clk := newFakeClock()
	reg := prometheus.NewRegistry()
	e, err := ratelimit.NewEnforcer(memorySettings(), nil, ratelimit.Options{Registerer: reg, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	rt := mustRoute(t, "api", ratelimit.RouteConfig{
		Limits:  []ratelimit.LimitConfig{{Key: "caller:{subject}", Limit: 2, Period: "1m"}},
		Headers: true,
	})
	v := &ratelimit.Values{Subject: "alice"}
	ctx := context.Background()

	o := e.Check(ctx, rt, v, nil)
	if !o.Allowed() || o.Result != ratelimit.ResultAllowed || o.Backend != "memory" {
		t.Fatalf("first request: %+v", o)
	}
	h := http.Header{}
	o.SetHeaders(h)
	want := http.Header{"Ratelimit-Limit": {"2"}, "Ratelimit-Remaining": {"1"}, "Ratelimit-Reset": {"30"}, "Ratelimit-Policy": {"2;w=60"}}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("allowed headers = %v, want %v", h, want)
	}

	e.Check(ctx, rt, v, nil)
	o = e.Check(ctx, rt, v, nil)
	if o.Allowed() || o.Status != http.StatusTooManyRequests || o.Code() != "rate_limited" || o.Result != ratelimit.ResultRejected {
		t.Fatalf("third request: %+v, want 429 rate_limited", o)
	}
	h = http.Header{}
	o.SetHeaders(h)
	want = http.Header{"Retry-After": {"30"}, "Ratelimit-Limit": {"2"}, "Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {"60"}, "Ratelimit-Policy": {"2;w=60"}}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("429 headers = %v, want %v", h, want)
	}
	b, err := json.Marshal(o.Log())
	if err != nil {
		t.Fatal(err)
	}
	wantLog := `{"result":"rejected","backend":"memory","failure_mode":"fail_closed","limits":1,` +
		`"limit":{"key":"caller:alice","limit":2,"period":"1m0s","burst":2,"cost":1,"source":"route"},` +
		`"remaining":0,"retry_after_ms":30000,"reset_after_ms":60000}`
	if string(b) != wantLog {
		t.Errorf("log entry =\n  %s\nwant\n  %s", b, wantLog)
	}
	if got := metricValue(t, reg, "policygate_ratelimit_checks_total", map[string]string{"route": "api", "result": "rejected"}); got != 1 {
		t.Errorf("checks_total{rejected} = %v, want 1", got)
	}
	if got := metricValue(t, reg, "policygate_ratelimit_memory_keys", map[string]string{"limiter": "primary"}); got != 1 {
		t.Errorf("memory_keys = %v, want 1", got)
	}

	// Headers off: allowed responses carry none, rejections still do.
	quiet := mustRoute(t, "quiet", ratelimit.RouteConfig{Limits: []ratelimit.LimitConfig{{Key: "k", Limit: 1, Period: "1m", Burst: 1}}})
	o = e.Check(ctx, quiet, v, nil)
	h = http.Header{}
	o.SetHeaders(h)
	if len(h) != 0 {
		t.Errorf("allowed response on a route without headers got %v", h)
	}
	o = e.Check(ctx, quiet, v, nil)
	h = http.Header{}
	o.SetHeaders(h)
	if h.Get("Retry-After") != "60" || h.Get("RateLimit-Remaining") != "0" {
		t.Errorf("429 on a route without headers got %v", h)
	}
}

func TestEnforcerNoLimits(t *testing.T) {
	e, err := ratelimit.NewEnforcer(memorySettings(), nil, ratelimit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	o := e.Check(context.Background(), mustRoute(t, "api", ratelimit.RouteConfig{Headers: true}), &ratelimit.Values{}, nil)
	if !o.Allowed() || o.Result != ratelimit.ResultNone {
		t.Errorf("no limits: %+v", o)
	}
	h := http.Header{}
	o.SetHeaders(h)
	if len(h) != 0 {
		t.Errorf("no limits set headers %v", h)
	}
	if o := e.Check(context.Background(), nil, nil, nil); !o.Allowed() {
		t.Errorf("nil route: %+v", o)
	}
}

// TestEnforcerDecisionAndRouteLimitsTogether is the "rejected requests
// spend quota" fault row through the Enforcer: the route limits each
// caller to 10/min, the policy adds a group limit of 8/min.
func TestEnforcerDecisionAndRouteLimitsTogether(t *testing.T) {
	e, err := ratelimit.NewEnforcer(memorySettings(), nil, ratelimit.Options{Now: newFakeClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	rt := mustRoute(t, "api", ratelimit.RouteConfig{Limits: []ratelimit.LimitConfig{{Key: "caller:{subject}", Limit: 10, Period: "1m"}}})
	group := []decision.RateLimit{{Key: "group:ci", Limit: 8, Period: time.Minute, Burst: 8, Cost: 1}}
	ctx := context.Background()
	alice, bob := &ratelimit.Values{Subject: "alice"}, &ratelimit.Values{Subject: "bob"}
	for i := 0; i < 10; i++ { // alice's own budget, on requests without the group limit
		if o := e.Check(ctx, rt, alice, nil); !o.Allowed() {
			t.Fatalf("alice %d: %+v", i, o)
		}
	}
	for i := 0; i < 30; i++ {
		o := e.Check(ctx, rt, alice, group)
		if o.Allowed() || o.Limit.Key != "caller:alice" || o.Limit.Source != ratelimit.SourceRoute {
			t.Fatalf("alice over her limit: %+v, want rejected by caller:alice", o)
		}
	}
	allowed := 0
	var last ratelimit.Outcome
	for i := 0; i < 12; i++ {
		if last = e.Check(ctx, rt, bob, group); last.Allowed() {
			allowed++
		}
	}
	if allowed != 8 {
		t.Errorf("bob got %d requests through the group limit of 8: rejected requests spent group quota", allowed)
	}
	if last.Limit.Key != "group:ci" || last.Limit.Source != ratelimit.SourceDecision {
		t.Errorf("bob's rejection names %+v, want group:ci from the decision", last.Limit)
	}
}

func redisSettings() *ratelimit.Settings {
	return &ratelimit.Settings{Backend: ratelimit.BackendRedis, Timeout: 20 * time.Millisecond, Failures: 3, OpenFor: time.Second, MaxKeys: 1000, LocalShare: 1}
}

// TestEnforcerFailureModes covers the "backend down" fault row with a
// controlled backend: each mode behaves as configured, never 500 and never
// 429 for the failure itself, the breaker stops calling after the
// threshold, and recovery is automatic.
func TestEnforcerFailureModes(t *testing.T) {
	tests := []struct {
		mode       ratelimit.FailureMode
		result     ratelimit.Result
		status     int
		retryAfter string
	}{
		{mode: ratelimit.FailClosed, result: ratelimit.ResultFailClosed, status: http.StatusServiceUnavailable, retryAfter: "1"},
		{mode: ratelimit.FailOpen, result: ratelimit.ResultFailOpen, status: 0},
		{mode: ratelimit.FailLocal, result: ratelimit.ResultLocalAllowed, status: 0},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			clk := newFakeClock()
			var down atomic.Bool
			down.Store(true)
			remote := &remoteFunc{fn: func(ctx context.Context, _ string, _ []ratelimit.Limit) (ratelimit.Decision, error) {
				if down.Load() {
					return ratelimit.Decision{}, errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
				}
				return ratelimit.Decision{Allowed: true, Index: 0, Remaining: 99}, nil
			}}
			reg := prometheus.NewRegistry()
			e, err := ratelimit.NewEnforcer(redisSettings(), remote, ratelimit.Options{Registerer: reg, Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			rt := mustRoute(t, "api", ratelimit.RouteConfig{
				Limits:      []ratelimit.LimitConfig{{Key: "caller:{subject}", Limit: 100, Period: "1m"}},
				FailureMode: string(tt.mode),
			})
			v := &ratelimit.Values{Subject: "alice"}
			const n = 20
			for i := 0; i < n; i++ {
				o := e.Check(context.Background(), rt, v, nil)
				if o.Status == http.StatusInternalServerError || o.Status == http.StatusTooManyRequests {
					t.Fatalf("request %d: status %d for a backend failure", i, o.Status)
				}
				if o.Result != tt.result || o.Status != tt.status || o.Err == nil || o.Mode != tt.mode {
					t.Fatalf("request %d: %+v, want result %q status %d with the error kept for the log", i, o, tt.result, tt.status)
				}
				h := http.Header{}
				o.SetHeaders(h)
				if got := h.Get("Retry-After"); got != tt.retryAfter {
					t.Errorf("request %d: Retry-After %q, want %q", i, got, tt.retryAfter)
				}
			}
			if got := remote.calls.Load(); got != 3 {
				t.Errorf("backend called %d times for %d requests, want 3 (the breaker threshold)", got, n)
			}
			if got := metricValue(t, reg, "policygate_ratelimit_checks_total", map[string]string{"result": string(tt.result)}); got != n {
				t.Errorf("checks_total{%s} = %v, want %d", tt.result, got, n)
			}
			if got := metricValue(t, reg, "policygate_ratelimit_backend_errors_total", map[string]string{"reason": "breaker_open"}); got != n-3 {
				t.Errorf("backend_errors_total{breaker_open} = %v, want %d", got, n-3)
			}
			if got := metricValue(t, reg, "policygate_ratelimit_breaker_open", nil); got != 1 {
				t.Errorf("breaker_open = %v, want 1", got)
			}

			// Still down at the probe: one call, then open again.
			clk.Advance(time.Second)
			e.Check(context.Background(), rt, v, nil)
			e.Check(context.Background(), rt, v, nil)
			if got := remote.calls.Load(); got != 4 {
				t.Errorf("after one probe the backend was called %d times, want 4", got)
			}
			// Back up: the next probe closes the breaker.
			down.Store(false)
			clk.Advance(time.Second)
			for i := 0; i < 3; i++ {
				if o := e.Check(context.Background(), rt, v, nil); o.Result != ratelimit.ResultAllowed || o.Backend != "redis" || o.Err != nil {
					t.Fatalf("after recovery: %+v", o)
				}
			}
			if got := metricValue(t, reg, "policygate_ratelimit_breaker_open", nil); got != 0 {
				t.Errorf("breaker_open = %v after recovery, want 0", got)
			}
		})
	}
}

func TestEnforcerLocalBudget(t *testing.T) {
	remote := &remoteFunc{fn: func(context.Context, string, []ratelimit.Limit) (ratelimit.Decision, error) {
		return ratelimit.Decision{}, errors.New("down")
	}}
	s := redisSettings()
	s.LocalShare = 0.5
	e, err := ratelimit.NewEnforcer(s, remote, ratelimit.Options{Now: newFakeClock().Now})
	if err != nil {
		t.Fatal(err)
	}
	rt := mustRoute(t, "api", ratelimit.RouteConfig{Limits: []ratelimit.LimitConfig{{Key: "k", Limit: 10, Period: "1h"}}, FailureMode: "local", Headers: true})
	allowed := 0
	var last ratelimit.Outcome
	for i := 0; i < 20; i++ {
		last = e.Check(context.Background(), rt, nil, nil)
		if last.Allowed() {
			allowed++
			if last.Result != ratelimit.ResultLocalAllowed || last.Backend != "local" {
				t.Fatalf("request %d: %+v", i, last)
			}
		}
	}
	if allowed != 5 {
		t.Errorf("local budget with local_share 0.5 of 10 allowed %d, want 5", allowed)
	}
	// The budget's own rejection is a 429 from the local limiter, named
	// as such; the Redis failure is in the log.
	if last.Result != ratelimit.ResultLocalRejected || last.Status != http.StatusTooManyRequests || last.Err == nil {
		t.Errorf("over the local budget: %+v", last)
	}
}

func TestEnforcerTimeout(t *testing.T) {
	remote := &remoteFunc{fn: func(ctx context.Context, _ string, _ []ratelimit.Limit) (ratelimit.Decision, error) {
		<-ctx.Done() // a stalled backend that honours its deadline
		return ratelimit.Decision{}, ctx.Err()
	}}
	reg := prometheus.NewRegistry()
	e, err := ratelimit.NewEnforcer(redisSettings(), remote, ratelimit.Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	rt := mustRoute(t, "api", ratelimit.RouteConfig{Limits: []ratelimit.LimitConfig{{Key: "k", Limit: 10, Period: "1m"}}, FailureMode: "fail_open"})
	o := e.Check(context.Background(), rt, nil, nil)
	if o.Result != ratelimit.ResultFailOpen || !errors.Is(o.Err, context.DeadlineExceeded) {
		t.Fatalf("stalled backend: %+v", o)
	}
	if got := metricValue(t, reg, "policygate_ratelimit_backend_errors_total", map[string]string{"reason": "timeout"}); got != 1 {
		t.Errorf("backend_errors_total{timeout} = %v, want 1", got)
	}
}

func TestEnforcerCallerGoneDoesNotTripBreaker(t *testing.T) {
	remote := &remoteFunc{fn: func(ctx context.Context, _ string, _ []ratelimit.Limit) (ratelimit.Decision, error) {
		<-ctx.Done()
		return ratelimit.Decision{}, ctx.Err()
	}}
	e, err := ratelimit.NewEnforcer(redisSettings(), remote, ratelimit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rt := mustRoute(t, "api", ratelimit.RouteConfig{Limits: []ratelimit.LimitConfig{{Key: "k", Limit: 10, Period: "1m"}}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := 0; i < 10; i++ {
		e.Check(ctx, rt, nil, nil)
	}
	if got := remote.calls.Load(); got != 10 {
		t.Errorf("backend called %d times, want 10: canceled requests opened the breaker", got)
	}
}

func TestEnforcerInvalidLimitFailsClosedWithoutTrippingBreaker(t *testing.T) {
	remote := &remoteFunc{fn: func(context.Context, string, []ratelimit.Limit) (ratelimit.Decision, error) {
		return ratelimit.Decision{Allowed: true}, nil
	}}
	e, err := ratelimit.NewEnforcer(redisSettings(), remote, ratelimit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rt := mustRoute(t, "api", ratelimit.RouteConfig{FailureMode: "fail_open"})
	for i := 0; i < 10; i++ {
		o := e.CheckLimits(context.Background(), rt, "api", []ratelimit.Limit{{Key: "k", Limit: 0, Period: time.Second, Burst: 1, Cost: 1}})
		if o.Allowed() || o.Status != http.StatusServiceUnavailable || !errors.Is(o.Err, ratelimit.ErrInvalidLimit) {
			t.Fatalf("invalid limit: %+v", o)
		}
	}
	if remote.calls.Load() != 0 {
		t.Error("an invalid limit reached the backend")
	}
	if o := e.CheckLimits(context.Background(), rt, "api", []ratelimit.Limit{{Key: "k", Limit: 1, Period: time.Second, Burst: 1, Cost: 1}}); o.Result != ratelimit.ResultAllowed {
		t.Errorf("valid limit after invalid ones: %+v (breaker must stay closed)", o)
	}
}

func TestNewEnforcerErrors(t *testing.T) {
	remote := &remoteFunc{}
	for name, f := range map[string]func() error{
		"nil settings":         func() error { _, err := ratelimit.NewEnforcer(nil, nil, ratelimit.Options{}); return err },
		"redis without remote": func() error { _, err := ratelimit.NewEnforcer(redisSettings(), nil, ratelimit.Options{}); return err },
		"memory with remote": func() error {
			_, err := ratelimit.NewEnforcer(memorySettings(), remote, ratelimit.Options{})
			return err
		},
		"unknown backend": func() error {
			_, err := ratelimit.NewEnforcer(&ratelimit.Settings{Backend: "x"}, nil, ratelimit.Options{})
			return err
		},
		"registered twice": func() error {
			reg := prometheus.NewRegistry()
			if _, err := ratelimit.NewEnforcer(memorySettings(), nil, ratelimit.Options{Registerer: reg}); err != nil {
				return nil
			}
			_, err := ratelimit.NewEnforcer(memorySettings(), nil, ratelimit.Options{Registerer: reg})
			return err
		},
	} {
		if err := f(); err == nil || !strings.HasPrefix(err.Error(), "ratelimit: ") {
			t.Errorf("%s: error %v, want one prefixed ratelimit:", name, err)
		}
	}
}
