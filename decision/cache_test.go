package decision_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/decision/cache"
	"github.com/policygate/policygate/decision/rego"
)

func TestParseCache(t *testing.T) {
	tests := []struct {
		name    string
		v       any
		ttl     time.Duration
		off     bool
		set     bool
		wantErr bool
	}{
		{name: "absent", v: nil},
		{name: "false", v: false, off: true, set: true},
		{name: "duration string", v: map[string]any{"ttl": "10s"}, ttl: 10 * time.Second, set: true},
		{name: "seconds json.Number", v: map[string]any{"ttl": json.Number("30")}, ttl: 30 * time.Second, set: true},
		{name: "fractional seconds", v: map[string]any{"ttl": json.Number("0.5")}, ttl: 500 * time.Millisecond, set: true},
		{name: "seconds float64", v: map[string]any{"ttl": float64(2)}, ttl: 2 * time.Second, set: true},
		{name: "seconds int", v: map[string]any{"ttl": 3}, ttl: 3 * time.Second, set: true},
		{name: "zero is off", v: map[string]any{"ttl": "0s"}, off: true, set: true},
		{name: "zero seconds is off", v: map[string]any{"ttl": json.Number("0")}, off: true, set: true},
		{name: "max", v: map[string]any{"ttl": "24h"}, ttl: 24 * time.Hour, set: true},
		{name: "true", v: true, wantErr: true},
		{name: "string", v: "10s", wantErr: true},
		{name: "array", v: []any{"10s"}, wantErr: true},
		{name: "missing ttl", v: map[string]any{}, wantErr: true},
		{name: "unknown key", v: map[string]any{"ttl": "1s", "scope": "user"}, wantErr: true},
		{name: "typo", v: map[string]any{"tll": "1s"}, wantErr: true},
		{name: "bad duration", v: map[string]any{"ttl": "ten seconds"}, wantErr: true},
		{name: "negative", v: map[string]any{"ttl": "-1s"}, wantErr: true},
		{name: "negative seconds", v: map[string]any{"ttl": json.Number("-1")}, wantErr: true},
		{name: "too long", v: map[string]any{"ttl": "25h"}, wantErr: true},
		{name: "too many seconds", v: map[string]any{"ttl": json.Number("1e30")}, wantErr: true},
		{name: "not a number", v: map[string]any{"ttl": json.Number("NaN")}, wantErr: true},
		{name: "bool ttl", v: map[string]any{"ttl": true}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ttl, off, set, err := decision.ParseCache(tt.v)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseCache(%v) error = %v, want error %v", tt.v, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if ttl != tt.ttl || off != tt.off || set != tt.set {
				t.Errorf("ParseCache(%v) = %v, %v, %v; want %v, %v, %v", tt.v, ttl, off, set, tt.ttl, tt.off, tt.set)
			}
		})
	}
}

func TestInterpretCache(t *testing.T) {
	res, err := decision.Interpret(map[string]any{"allow": true, "cache": map[string]any{"ttl": "5s"}}, true)
	if err != nil || res.Cache != (decision.CacheDirective{TTL: 5 * time.Second}) || !res.Allow {
		t.Fatalf("Interpret = %+v, %v; want allow with a 5s cache ttl", res, err)
	}
	res, err = decision.Interpret(map[string]any{"allow": true, "cache": "forever"}, true)
	if err == nil || res.Allow || res.Outcome != decision.OutcomeError {
		t.Fatalf("malformed cache: Interpret = %+v, %v; want an error that denies", res, err)
	}
}

// countingPolicy counts the evaluations of a real policy, optionally
// holding each one until release is closed.
type countingPolicy struct {
	*rego.Policy
	evals   atomic.Int64
	release chan struct{}
}

func (c *countingPolicy) Eval(ctx context.Context, path string, in *decision.Input) (any, bool, error) {
	c.evals.Add(1)
	if c.release != nil {
		select {
		case <-c.release:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
	return c.Policy.Eval(ctx, path, in)
}

var _ decision.CachePolicy = (*countingPolicy)(nil)

// recordingMetrics is a hand-written decision.Metrics.
type recordingMetrics struct {
	mu        sync.Mutex
	decisions []decision.CacheStatus
	evals     int
}

func (m *recordingMetrics) ObserveDecision(_ string, _ decision.Outcome, c decision.CacheStatus, _ time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.decisions = append(m.decisions, c)
}

func (m *recordingMetrics) ObserveEval(string, time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.evals++
}

func (m *recordingMetrics) statuses() map[decision.CacheStatus]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[decision.CacheStatus]int{}
	for _, s := range m.decisions {
		out[s]++
	}
	return out
}

// cachePolicy is the policy of the cache tests. Its rules read the method,
// the path, the caller's subject, and (nd) the clock.
const cachePolicy = `package c

default decision := false

decision if {
	input.identity.subject == "alice"
	input.request.method == "GET"
}

other := {"allow": false, "reason": "other"}

nd := {"allow": true, "now": time.now_ns()}

nd_ttl := {"allow": true, "now": time.now_ns(), "cache": {"ttl": "10s"}}

no_cache := {"allow": true, "cache": false}

rev := {"allow": true, "reason": data.c.revision}

boom := 1 / (count(input.request.segments) - count(input.request.segments))

by_id := {"allow": true, "headers": {"x-request": input.request.id}}
`

var cachePaths = []string{
	"data.c.decision", "data.c.other", "data.c.nd", "data.c.nd_ttl", "data.c.no_cache",
	"data.c.rev", "data.c.boom", "data.c.by_id",
}

func loadCachePolicy(t *testing.T, revision string) *rego.Policy {
	t.Helper()
	dir := writeBundle(t, map[string]string{
		"c.rego":      cachePolicy,
		"c/data.json": `{"revision": "` + revision + `"}`,
		".manifest":   `{"revision": "` + revision + `"}`,
	})
	p, err := rego.LoadDir(context.Background(), dir, "main", cachePaths)
	if err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	return p
}

// cacheClock is a hand-driven clock for cache expiry.
type cacheClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *cacheClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *cacheClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type cacheEnv struct {
	engine  *decision.Engine
	policy  *countingPolicy
	metrics *recordingMetrics
	clock   *cacheClock
}

func newCacheEnv(t *testing.T, p *rego.Policy) *cacheEnv {
	t.Helper()
	clk := &cacheClock{now: time.Unix(1_900_000_000, 0)}
	c, err := cache.New[decision.CacheKey, decision.Result](cache.Config{Size: 100}, cache.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	env := &cacheEnv{policy: &countingPolicy{Policy: p}, metrics: &recordingMetrics{}, clock: clk}
	env.engine = decision.NewEngine(decision.Config{Timeout: waitBound, Cache: c, Metrics: env.metrics})
	env.engine.Activate(env.policy)
	return env
}

// caller returns the input of a GET by subject (empty: anonymous).
func caller(subject string) *decision.Input {
	in := getInput()
	if subject == "" {
		in.Identity = decision.Anonymous()
	} else {
		in.Identity.Subject = subject
	}
	return in
}

type step struct {
	name    string
	path    string
	in      *decision.Input
	allow   bool
	hit     bool
	outcome decision.Outcome // default: allow or deny by allow
}

func runSteps(t *testing.T, env *cacheEnv, routeTTL time.Duration, steps []step) {
	t.Helper()
	for _, s := range steps {
		path := s.path
		if path == "" {
			path = "data.c.decision"
		}
		d := env.engine.Decide(context.Background(), path, s.in, decision.WithCacheTTL(routeTTL))
		want := s.outcome
		if want == "" {
			want = decision.OutcomeDeny
			if s.allow {
				want = decision.OutcomeAllow
			}
		}
		if d.Result.Allow != s.allow || d.Result.Outcome != want || d.CacheHit != s.hit {
			t.Fatalf("%s: allow %v outcome %q hit %v (err %v); want allow %v outcome %q hit %v",
				s.name, d.Result.Allow, d.Result.Outcome, d.CacheHit, d.Err, s.allow, want, s.hit)
		}
	}
}

// TestCacheKeyIncludesIdentity is the "cache key too narrow" fault class:
// token A is allowed, then the same request with token B and with no token
// must be decided afresh.
func TestCacheKeyIncludesIdentity(t *testing.T) {
	env := newCacheEnv(t, loadCachePolicy(t, "r1"))
	runSteps(t, env, time.Minute, []step{
		{name: "A first", in: caller("alice"), allow: true},
		{name: "A again", in: caller("alice"), allow: true, hit: true},
		{name: "B", in: caller("bob")},
		{name: "no token", in: caller("")},
		{name: "B again", in: caller("bob"), hit: true},
	})
	// Identities differing in a field the rule does not read are still
	// different callers.
	groups := caller("alice")
	groups.Identity.Groups = []string{"other"}
	claims := caller("alice")
	claims.Identity.Claims = map[string]any{"jti": "token-2"}
	runSteps(t, env, time.Minute, []step{
		{name: "A other groups", in: groups, allow: true},
		{name: "A other claims", in: claims, allow: true},
	})
	if n := env.policy.evals.Load(); n != 5 {
		t.Errorf("%d evaluations, want 5 (one per distinct caller)", n)
	}
}

// TestCacheNewRevision is the "stale after policy change" fault class: the
// very next request after an activation is decided by the new revision,
// even when the new revision reuses the old one's name.
func TestCacheNewRevision(t *testing.T) {
	r1 := loadCachePolicy(t, "r1")
	env := newCacheEnv(t, r1)
	in := caller("alice")
	runSteps(t, env, time.Minute, []step{
		{name: "r1", path: "data.c.rev", in: in, allow: true},
		{name: "r1 cached", path: "data.c.rev", in: in, allow: true, hit: true},
	})
	env.engine.Activate(&countingPolicy{Policy: loadCachePolicy(t, "r2")})
	d := env.engine.Decide(context.Background(), "data.c.rev", in, decision.WithCacheTTL(time.Minute))
	if d.CacheHit || d.Result.Reason != "r2" {
		t.Fatalf("after activating r2: hit %v reason %q, want a fresh decision by r2", d.CacheHit, d.Result.Reason)
	}
	// Re-activating the very same compiled revision starts a new generation
	// too: a bundle whose revision string did not change is not trusted to
	// be unchanged.
	env.engine.Activate(env.policy)
	d = env.engine.Decide(context.Background(), "data.c.rev", in, decision.WithCacheTTL(time.Minute))
	if d.CacheHit || d.Result.Reason != "r1" {
		t.Fatalf("after re-activating r1: hit %v reason %q, want a fresh decision by r1", d.CacheHit, d.Result.Reason)
	}
}

func TestCacheTTLRules(t *testing.T) {
	tests := []struct {
		name     string
		routeTTL time.Duration
		path     string
		steps    []bool // want a hit at each of three decisions of the same request
	}{
		{name: "route ttl caches a deterministic rule", routeTTL: time.Minute, path: "data.c.decision", steps: []bool{false, true, true}},
		{name: "no route ttl, no decision ttl", routeTTL: 0, path: "data.c.decision", steps: []bool{false, false, false}},
		{name: "non-deterministic rule ignores the route ttl", routeTTL: time.Minute, path: "data.c.nd", steps: []bool{false, false, false}},
		{name: "non-deterministic rule with its own ttl", routeTTL: 0, path: "data.c.nd_ttl", steps: []bool{false, true, true}},
		{name: "cache false beats the route ttl", routeTTL: time.Minute, path: "data.c.no_cache", steps: []bool{false, false, false}},
		{name: "a rule reading request.id is not cached", routeTTL: time.Minute, path: "data.c.by_id", steps: []bool{false, false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newCacheEnv(t, loadCachePolicy(t, "r1"))
			var first *decision.Decision
			for i, wantHit := range tt.steps {
				d := env.engine.Decide(context.Background(), tt.path, caller("alice"), decision.WithCacheTTL(tt.routeTTL))
				if d.Err != nil || d.CacheHit != wantHit {
					t.Fatalf("decision %d: hit %v err %v, want hit %v", i, d.CacheHit, d.Err, wantHit)
				}
				if i == 0 {
					first = d
				} else if wantHit && fmt.Sprint(d.Result.Raw) != fmt.Sprint(first.Result.Raw) {
					t.Errorf("decision %d: cached result %v differs from the first %v", i, d.Result.Raw, first.Result.Raw)
				}
			}
		})
	}
}

func TestCacheExpires(t *testing.T) {
	env := newCacheEnv(t, loadCachePolicy(t, "r1"))
	in := caller("alice")
	runSteps(t, env, time.Minute, []step{
		{name: "nd_ttl first", path: "data.c.nd_ttl", in: in, allow: true},
		{name: "nd_ttl cached", path: "data.c.nd_ttl", in: in, allow: true, hit: true},
	})
	env.clock.Advance(10 * time.Second)
	runSteps(t, env, time.Minute, []step{
		{name: "nd_ttl after its 10s", path: "data.c.nd_ttl", in: in, allow: true},
		{name: "route default still live", path: "data.c.decision", in: in, allow: true},
	})
	env.clock.Advance(time.Minute)
	runSteps(t, env, time.Minute, []step{{name: "route default after 1m", in: in, allow: true}})
}

// TestCacheKeyFields: what the rule reads splits the cache; what it does
// not read (a header, the request id) does not.
func TestCacheKeyFields(t *testing.T) {
	env := newCacheEnv(t, loadCachePolicy(t, "r1"))
	base := caller("alice")
	otherID := caller("alice")
	otherID.Request.ID = "another-request"
	otherUA := caller("alice")
	otherUA.Request.Headers = map[string]string{"user-agent": "curl/8"}
	otherPath := caller("alice")
	otherPath.Request.Path, otherPath.Request.Segments = "/admin/keys", []string{"admin", "keys"}
	post := caller("alice")
	post.Request.Method = "POST"
	runSteps(t, env, time.Minute, []step{
		{name: "first", in: base, allow: true},
		{name: "another request id", in: otherID, allow: true, hit: true},
		{name: "another user-agent", in: otherUA, allow: true, hit: true},
		{name: "another path (not read)", in: otherPath, allow: true, hit: true},
		{name: "another method (read)", in: post},
		{name: "the first again", in: base, allow: true, hit: true},
		{name: "another rule path", path: "data.c.other", in: base},
	})
}

// TestCacheErrorsNotCached: a failed evaluation is never stored.
func TestCacheErrorsNotCached(t *testing.T) {
	env := newCacheEnv(t, loadCachePolicy(t, "r1"))
	for i := range 2 {
		d := env.engine.Decide(context.Background(), "data.c.boom", caller("alice"), decision.WithCacheTTL(time.Minute))
		if d.Result.Allow || d.Result.Outcome != decision.OutcomeError || d.CacheHit || d.Err == nil {
			t.Fatalf("decision %d: %+v hit %v err %v, want an uncached error", i, d.Result, d.CacheHit, d.Err)
		}
	}
	if n := env.policy.evals.Load(); n != 2 {
		t.Errorf("%d evaluations, want 2", n)
	}
}

// TestCacheSingleflight: concurrent identical misses evaluate once; every
// waiter gets the result. The bubble's synctest.Wait makes sure all of
// them are waiting before the evaluation may finish.
func TestCacheSingleflight(t *testing.T) {
	const callers = 50
	tests := []struct {
		name     string
		path     string
		routeTTL time.Duration
		outcome  decision.Outcome
	}{
		{name: "allow, cached", path: "data.c.decision", routeTTL: time.Minute, outcome: decision.OutcomeAllow},
		{name: "allow, not cached", path: "data.c.decision", routeTTL: 0, outcome: decision.OutcomeAllow},
		{name: "error reaches every waiter", path: "data.c.boom", routeTTL: time.Minute, outcome: decision.OutcomeError},
	}
	p := loadCachePolicy(t, "r1")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				env := newCacheEnv(t, p)
				env.policy.release = make(chan struct{})
				results := make(chan *decision.Decision, callers)
				for range callers {
					go func() {
						results <- env.engine.Decide(context.Background(), tt.path, caller("alice"), decision.WithCacheTTL(tt.routeTTL))
					}()
				}
				synctest.Wait() // every caller is waiting for the one evaluation
				close(env.policy.release)
				for range callers {
					d := <-results
					if d.Result.Outcome != tt.outcome || d.CacheHit {
						t.Fatalf("outcome %q hit %v (err %v), want %q from the shared evaluation", d.Result.Outcome, d.CacheHit, d.Err, tt.outcome)
					}
				}
				if n := env.policy.evals.Load(); n != 1 {
					t.Errorf("%d evaluations for %d concurrent identical requests, want 1", n, callers)
				}
				st := env.metrics.statuses()
				if st[decision.CacheMiss] != 1 || st[decision.CacheShared] != callers-1 {
					t.Errorf("cache statuses %v, want 1 miss and %d shared", st, callers-1)
				}
			})
		})
	}
}

// TestCacheSharedTimeout: when the shared evaluation outlives the timeout,
// every waiter is denied with a timeout, and nothing is stored.
func TestCacheSharedTimeout(t *testing.T) {
	p := loadCachePolicy(t, "r1")
	synctest.Test(t, func(t *testing.T) {
		c, err := cache.New[decision.CacheKey, decision.Result](cache.Config{Size: 10}, cache.Options{})
		if err != nil {
			t.Fatal(err)
		}
		cp := &countingPolicy{Policy: p, release: make(chan struct{})} // never released
		e := decision.NewEngine(decision.Config{Timeout: evalTimeout, Cache: c})
		e.Activate(cp)
		results := make(chan *decision.Decision, 3)
		for range 3 {
			go func() {
				results <- e.Decide(context.Background(), "data.c.decision", caller("alice"), decision.WithCacheTTL(time.Minute))
			}()
		}
		for range 3 {
			d := <-results
			if d.Result.Allow || d.Result.Outcome != decision.OutcomeTimeout || !errors.Is(d.Err, context.DeadlineExceeded) {
				t.Fatalf("outcome %q allow %v err %v, want a timeout deny", d.Result.Outcome, d.Result.Allow, d.Err)
			}
		}
		synctest.Wait() // the evaluation has given up too
		if n := c.Len(); n != 0 {
			t.Errorf("cache holds %d entries after a timed-out evaluation, want 0", n)
		}
	})
}

// TestCacheNeedsCachePolicy: a policy that cannot say what its rules read
// is evaluated every time.
func TestCacheNeedsCachePolicy(t *testing.T) {
	c, err := cache.New[decision.CacheKey, decision.Result](cache.Config{Size: 10}, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var evals atomic.Int64
	p := &fakePolicy{bundles: map[string]string{"main": "r1"}, eval: func(context.Context, string, *decision.Input) (any, bool, error) {
		evals.Add(1)
		return true, true, nil
	}}
	m := &recordingMetrics{}
	e := decision.NewEngine(decision.Config{Cache: c, Metrics: m})
	e.Activate(p)
	for range 3 {
		if d := e.Decide(context.Background(), "data.gate.decision", getInput(), decision.WithCacheTTL(time.Minute)); d.CacheHit || !d.Result.Allow {
			t.Fatalf("hit %v allow %v, want an evaluated allow", d.CacheHit, d.Result.Allow)
		}
	}
	if evals.Load() != 3 || m.statuses()[decision.CacheOff] != 3 {
		t.Errorf("%d evaluations, statuses %v; want 3 evaluations, all off", evals.Load(), m.statuses())
	}
}

// TestCacheHitLogged: the decision-log event says the result was reused.
func TestCacheHitLogged(t *testing.T) {
	env := newCacheEnv(t, loadCachePolicy(t, "r1"))
	var events []*decision.Event
	for range 2 {
		d := env.engine.Decide(context.Background(), "data.c.decision", caller("alice"), decision.WithCacheTTL(time.Minute))
		events = append(events, decision.NewEvent(d, decision.Completion{Status: 200}))
	}
	if events[0].CacheHit || !events[1].CacheHit {
		t.Fatalf("cache_hit = %v, %v; want false, true", events[0].CacheHit, events[1].CacheHit)
	}
	raw, err := json.Marshal(events[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil || m["cache_hit"] != true {
		t.Fatalf("event JSON %s lacks cache_hit: true", raw)
	}
	if events[1].DecisionID == events[0].DecisionID {
		t.Error("a cache hit reused the decision id; ids are per request")
	}
}
