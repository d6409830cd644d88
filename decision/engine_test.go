package decision_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/decision/rego"
)

// Named bounds for the waits in these tests. They only fail a broken
// engine; a correct one returns long before.
const (
	evalTimeout = 50 * time.Millisecond
	waitBound   = 5 * time.Second
)

// fakePolicy is a hand-written decision.Policy.
type fakePolicy struct {
	eval    func(ctx context.Context, path string, in *decision.Input) (any, bool, error)
	bundles map[string]string
}

func (f *fakePolicy) Eval(ctx context.Context, path string, in *decision.Input) (any, bool, error) {
	return f.eval(ctx, path, in)
}

func (f *fakePolicy) Bundles() map[string]string { return f.bundles }

// fakeLogger is a hand-written decision.Logger.
type fakeLogger struct {
	log func(ctx context.Context, ev *decision.Event) error
}

func (f *fakeLogger) Log(ctx context.Context, ev *decision.Event) error { return f.log(ctx, ev) }

func constPolicy(rev string, v any) *fakePolicy {
	return &fakePolicy{
		bundles: map[string]string{"main": rev},
		eval: func(context.Context, string, *decision.Input) (any, bool, error) {
			return v, true, nil
		},
	}
}

// writeBundle writes files (relative path → content) into a new temp dir.
func writeBundle(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// engineRego is the policy of the real-OPA engine tests, one revision per
// manifest.
const engineRego = `package gate

decision := {"allow": true, "reason": data.gate.reason} if input.request.method == "GET"

decision := {"allow": false, "reason": "not_get"} if input.request.method != "GET"

boom := 1 / (count(input.request.segments) - count(input.request.segments))

never if input.request.method == "NEVER"

slow if {
	some i in numbers.range(1, 100000000)
	i == -1
}
`

func loadRego(t *testing.T, revision string) *rego.Policy {
	t.Helper()
	dir := writeBundle(t, map[string]string{
		"gate.rego":      engineRego,
		"gate/data.json": `{"reason": "` + revision + `"}`,
		".manifest":      `{"revision": "` + revision + `"}`,
	})
	p, err := rego.LoadDir(context.Background(), dir, "main", []string{
		"data.gate.decision", "data.gate.boom", "data.gate.never", "data.gate.slow",
	})
	if err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	return p
}

func getInput() *decision.Input {
	return &decision.Input{
		Request:  decision.Request{Method: "GET", Path: "/admin/users", Segments: []string{"admin", "users"}},
		Identity: decision.Identity{Authenticated: true, Method: decision.MethodAPIKey, Subject: "ci-bot"},
		Route:    decision.Route{Name: "admin", Labels: map[string]string{"team": "iam"}},
	}
}

func TestEngineNotReady(t *testing.T) {
	e := decision.NewEngine(decision.Config{})
	if e.Ready() {
		t.Fatal("new engine reports ready")
	}
	in := getInput()
	d := e.Decide(context.Background(), "data.gate.decision", in)
	if d.Result.Allow || d.Result.Outcome != decision.OutcomeNotReady {
		t.Fatalf("outcome = %q allow=%v, want not_ready deny", d.Result.Outcome, d.Result.Allow)
	}
	if d.Result.Code() != "not_ready" || d.Result.HTTPStatus() != 503 {
		t.Errorf("code %q status %d, want not_ready 503", d.Result.Code(), d.Result.HTTPStatus())
	}
	if d.Err == nil {
		t.Error("Err is nil for a not-ready decision")
	}
	if d.ID == "" || d.ID != in.Request.ID {
		t.Errorf("decision id %q, input id %q: want the same non-empty id", d.ID, in.Request.ID)
	}
}

func TestEngineDecideOutcomes(t *testing.T) {
	blockUntilDone := &fakePolicy{
		bundles: map[string]string{"main": "r1"},
		eval: func(ctx context.Context, _ string, _ *decision.Input) (any, bool, error) {
			<-ctx.Done()
			return nil, false, ctx.Err()
		},
	}
	evalErr := &fakePolicy{
		bundles: map[string]string{"main": "r1"},
		eval: func(context.Context, string, *decision.Input) (any, bool, error) {
			return nil, false, errors.New("builtin failed")
		},
	}
	tests := []struct {
		name    string
		policy  func(t *testing.T) decision.Policy
		path    string
		outcome decision.Outcome
		allow   bool
		reason  string
		wantErr bool
	}{
		{name: "fake allow", policy: func(*testing.T) decision.Policy {
			return constPolicy("r1", map[string]any{"allow": true, "reason": "ok"})
		}, outcome: decision.OutcomeAllow, allow: true, reason: "ok"},
		{name: "fake deny", policy: func(*testing.T) decision.Policy { return constPolicy("r1", false) }, outcome: decision.OutcomeDeny},
		{name: "fake undefined", policy: func(*testing.T) decision.Policy {
			return &fakePolicy{bundles: map[string]string{"main": "r1"}, eval: func(context.Context, string, *decision.Input) (any, bool, error) { return nil, false, nil }}
		}, outcome: decision.OutcomeUndefined},
		{name: "fake malformed", policy: func(*testing.T) decision.Policy { return constPolicy("r1", map[string]any{"allow": "yes"}) }, outcome: decision.OutcomeError, wantErr: true},
		{name: "fake eval error", policy: func(*testing.T) decision.Policy { return evalErr }, outcome: decision.OutcomeError, wantErr: true},
		{name: "fake blocks until deadline", policy: func(*testing.T) decision.Policy { return blockUntilDone }, outcome: decision.OutcomeTimeout, wantErr: true},

		{name: "rego allow", policy: func(t *testing.T) decision.Policy { return loadRego(t, "r1") }, path: "data.gate.decision", outcome: decision.OutcomeAllow, allow: true, reason: "r1"},
		{name: "rego undefined", policy: func(t *testing.T) decision.Policy { return loadRego(t, "r1") }, path: "data.gate.never", outcome: decision.OutcomeUndefined},
		{name: "rego eval error", policy: func(t *testing.T) decision.Policy { return loadRego(t, "r1") }, path: "data.gate.boom", outcome: decision.OutcomeError, wantErr: true},
		{name: "rego timeout", policy: func(t *testing.T) decision.Policy { return loadRego(t, "r1") }, path: "data.gate.slow", outcome: decision.OutcomeTimeout, wantErr: true},
		{name: "rego unprepared path", policy: func(t *testing.T) decision.Policy { return loadRego(t, "r1") }, path: "data.gate.other", outcome: decision.OutcomeError, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.path
			if path == "" {
				path = "data.gate.decision"
			}
			e := decision.NewEngine(decision.Config{Timeout: evalTimeout})
			e.Activate(tt.policy(t))
			if !e.Ready() {
				t.Fatal("engine not ready after Activate")
			}
			start := time.Now()
			d := e.Decide(context.Background(), path, getInput())
			elapsed := time.Since(start)
			if d.Result.Outcome != tt.outcome || d.Result.Allow != tt.allow || d.Result.Reason != tt.reason {
				t.Fatalf("got outcome %q allow %v reason %q (err %v), want %q %v %q", d.Result.Outcome, d.Result.Allow, d.Result.Reason, d.Err, tt.outcome, tt.allow, tt.reason)
			}
			if (d.Err != nil) != tt.wantErr {
				t.Errorf("Err = %v, want error %v", d.Err, tt.wantErr)
			}
			if d.Bundles["main"] != "r1" {
				t.Errorf("Bundles = %v, want main: r1", d.Bundles)
			}
			if tt.outcome == decision.OutcomeTimeout && elapsed > evalTimeout+waitBound {
				t.Errorf("timed-out evaluation took %v with a %v timeout", elapsed, evalTimeout)
			}
		})
	}
}

// TestEngineTimeoutBounded checks that the timeout ends a blocked
// evaluation at the configured deadline, with an injected clock for the
// decision timestamp.
func TestEngineTimeoutBounded(t *testing.T) {
	fixed := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	var deadline, entered time.Time
	p := &fakePolicy{
		bundles: map[string]string{"main": "r1"},
		eval: func(ctx context.Context, _ string, _ *decision.Input) (any, bool, error) {
			entered = time.Now()
			deadline, _ = ctx.Deadline()
			<-ctx.Done()
			return nil, false, ctx.Err()
		},
	}
	e := decision.NewEngine(decision.Config{Timeout: evalTimeout, Now: func() time.Time { return fixed }})
	e.Activate(p)
	start := time.Now()
	d := e.Decide(context.Background(), "data.gate.decision", getInput())
	if d.Result.Outcome != decision.OutcomeTimeout || d.Result.HTTPStatus() != 503 || d.Result.Code() != "policy_timeout" {
		t.Fatalf("outcome %q status %d code %q, want timeout 503 policy_timeout", d.Result.Outcome, d.Result.HTTPStatus(), d.Result.Code())
	}
	if !errors.Is(d.Err, context.DeadlineExceeded) {
		t.Errorf("Err = %v, want it to wrap context.DeadlineExceeded", d.Err)
	}
	elapsed := time.Since(start)
	// The deadline is set between start and the call into the policy.
	if deadline.Before(start.Add(evalTimeout)) || deadline.After(entered.Add(evalTimeout)) {
		t.Errorf("evaluation deadline %v after start, want the configured %v", deadline.Sub(start), evalTimeout)
	}
	if elapsed < evalTimeout || elapsed > evalTimeout+waitBound {
		t.Errorf("Decide returned after %v, want shortly after %v", elapsed, evalTimeout)
	}
	if !d.Timestamp.Equal(fixed) {
		t.Errorf("Timestamp = %v, want the injected clock's %v", d.Timestamp, fixed)
	}
}

func TestEngineCallerCancelIsNotAllow(t *testing.T) {
	p := &fakePolicy{
		bundles: map[string]string{"main": "r1"},
		eval: func(ctx context.Context, _ string, _ *decision.Input) (any, bool, error) {
			<-ctx.Done()
			return true, true, ctx.Err()
		},
	}
	e := decision.NewEngine(decision.Config{Timeout: waitBound})
	e.Activate(p)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d := e.Decide(ctx, "data.gate.decision", getInput())
	if d.Result.Allow || d.Result.Outcome != decision.OutcomeError || d.Err == nil {
		t.Fatalf("outcome %q allow %v err %v, want error deny", d.Result.Outcome, d.Result.Allow, d.Err)
	}
}

func TestEngineKeepsRequestID(t *testing.T) {
	e := decision.NewEngine(decision.Config{})
	e.Activate(constPolicy("r1", true))
	in := getInput()
	in.Request.ID = "req-1"
	if d := e.Decide(context.Background(), "data.gate.decision", in); d.ID != "req-1" {
		t.Fatalf("decision id %q, want the request's id", d.ID)
	}
	a := e.Decide(context.Background(), "data.gate.decision", getInput())
	b := e.Decide(context.Background(), "data.gate.decision", getInput())
	if a.ID == "" || a.ID == b.ID {
		t.Fatalf("assigned ids %q and %q, want distinct non-empty ids", a.ID, b.ID)
	}
}

// TestEngineActivateDuringEvaluation: a request that loaded r1 is decided
// by r1 even if r2 is activated while it evaluates; the next one sees r2.
func TestEngineActivateDuringEvaluation(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	r1 := &fakePolicy{
		bundles: map[string]string{"main": "r1"},
		eval: func(ctx context.Context, _ string, _ *decision.Input) (any, bool, error) {
			close(entered)
			select {
			case <-release:
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
			return map[string]any{"allow": true, "reason": "r1"}, true, nil
		},
	}
	r2 := constPolicy("r2", map[string]any{"allow": false, "reason": "r2"})

	e := decision.NewEngine(decision.Config{Timeout: waitBound})
	e.Activate(r1)
	first := make(chan *decision.Decision, 1)
	go func() { first <- e.Decide(context.Background(), "data.gate.decision", getInput()) }()

	select {
	case <-entered:
	case <-time.After(waitBound):
		t.Fatal("r1 evaluation never started")
	}
	e.Activate(r2)
	close(release)

	var d1 *decision.Decision
	select {
	case d1 = <-first:
	case <-time.After(waitBound):
		t.Fatal("in-flight decision never finished")
	}
	if !d1.Result.Allow || d1.Result.Reason != "r1" || d1.Bundles["main"] != "r1" {
		t.Errorf("in-flight decision: allow %v reason %q bundles %v, want r1's allow under r1", d1.Result.Allow, d1.Result.Reason, d1.Bundles)
	}
	d2 := e.Decide(context.Background(), "data.gate.decision", getInput())
	if d2.Result.Allow || d2.Result.Reason != "r2" || d2.Bundles["main"] != "r2" {
		t.Errorf("next decision: allow %v reason %q bundles %v, want r2's deny under r2", d2.Result.Allow, d2.Result.Reason, d2.Bundles)
	}
}

func TestEngineRecord(t *testing.T) {
	tests := []struct {
		name   string
		policy func(t *testing.T) decision.Policy
	}{
		{name: "fake", policy: func(*testing.T) decision.Policy {
			return constPolicy("r7", map[string]any{"allow": true, "reason": "r7", "labels": map[string]any{"rule": "x"}})
		}},
		{name: "rego", policy: func(t *testing.T) decision.Policy { return loadRego(t, "r7") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []*decision.Event
			logger := &fakeLogger{log: func(_ context.Context, ev *decision.Event) error {
				got = append(got, ev)
				return nil
			}}
			e := decision.NewEngine(decision.Config{Logger: logger})
			e.Activate(tt.policy(t))
			d := e.Decide(context.Background(), "data.gate.decision", getInput())
			if err := e.Record(context.Background(), d, decision.Completion{Status: 200, UpstreamStatus: 201}); err != nil {
				t.Fatalf("Record: %v", err)
			}
			if len(got) != 1 {
				t.Fatalf("logger received %d events, want 1", len(got))
			}
			ev := got[0]
			if ev.DecisionID != d.ID || ev.Bundles["main"].Revision != "r7" || ev.Route != "admin" ||
				ev.Subject != "ci-bot" || ev.Status != 200 || ev.UpstreamStatus != 201 ||
				ev.Decision != decision.OutcomeAllow || !ev.Allowed || ev.Reason != "r7" || ev.Path != "gate/decision" {
				t.Errorf("event = %+v", ev)
			}
			if ev.Labels["team"] != "iam" {
				t.Errorf("event labels %v lack the route's labels", ev.Labels)
			}
			req, _ := ev.InputMap()["request"].(map[string]any)
			if req == nil || req["path"] != "/admin/users" {
				t.Errorf("event input %v lacks the request", ev.Input)
			}
		})
	}
}

func TestEngineRecordFailure(t *testing.T) {
	sinkDown := errors.New("sink down")
	e := decision.NewEngine(decision.Config{Logger: &fakeLogger{log: func(context.Context, *decision.Event) error { return sinkDown }}})
	d := e.Decide(context.Background(), "data.gate.decision", getInput())
	if err := e.Record(context.Background(), d, decision.Completion{Status: 503}); !errors.Is(err, sinkDown) {
		t.Fatalf("Record = %v, want the logger's error", err)
	}
	// Without a logger, Record is a no-op.
	if err := decision.NewEngine(decision.Config{}).Record(context.Background(), d, decision.Completion{}); err != nil {
		t.Fatalf("Record without a logger = %v", err)
	}
}

// TestEngineSwapUnderLoad re-activates two real revisions 100 times while 8
// goroutines decide continuously: no errors, and every decision's reason
// comes from the revision it reports. Decisions run in phases of perPhase;
// the activation that ends a phase overlaps the phase's last evaluations,
// and the phases keep the test's work bounded whatever the scheduler does.
func TestEngineSwapUnderLoad(t *testing.T) {
	const (
		deciders    = 8
		activations = 100
		perPhase    = 24
		bound       = 3 * time.Second
	)
	type phase struct {
		started atomic.Int64
		full    chan struct{} // closed when perPhase decisions have started
		next    chan struct{} // closed when the next phase begins
	}
	newPhase := func() *phase { return &phase{full: make(chan struct{}), next: make(chan struct{})} }

	revs := []*rego.Policy{loadRego(t, "r1"), loadRego(t, "r2")}
	e := decision.NewEngine(decision.Config{Timeout: bound})
	e.Activate(revs[0])

	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	var cur atomic.Pointer[phase]
	cur.Store(newPhase())
	stop := make(chan struct{})
	var (
		wg        sync.WaitGroup
		decisions atomic.Int64
		mu        sync.Mutex
		failures  []string
		seen      = map[string]int{}
	)
	fail := func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 10 {
			failures = append(failures, msg)
		}
	}
	for range deciders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := map[string]int{}
			defer func() {
				mu.Lock()
				for k, n := range local {
					seen[k] += n
				}
				mu.Unlock()
			}()
			for {
				ph := cur.Load()
				switch n := ph.started.Add(1); {
				case n == perPhase:
					close(ph.full)
				case n > perPhase:
					select {
					case <-ph.next:
						continue
					case <-stop:
						return
					case <-ctx.Done():
						return
					}
				}
				d := e.Decide(ctx, "data.gate.decision", getInput())
				decisions.Add(1)
				rev := d.Bundles["main"]
				switch {
				case d.Err != nil || d.Result.Outcome != decision.OutcomeAllow:
					fail("outcome " + string(d.Result.Outcome) + ": " + errString(d.Err))
				case d.Result.Reason != rev:
					fail("reason " + d.Result.Reason + " under revision " + rev)
				}
				local[rev]++
			}
		}()
	}
	for i := 1; i <= activations; i++ {
		ph := cur.Load()
		select {
		case <-ph.full:
		case <-ctx.Done():
			close(stop)
			wg.Wait()
			t.Fatalf("deciders made no progress within %v (activation %d)", bound, i)
		}
		e.Activate(revs[i%2])
		cur.Store(newPhase())
		close(ph.next)
	}
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d decisions, failures: %q", decisions.Load(), failures)
	}
	t.Logf("%d decisions across %d activations: %v", decisions.Load(), activations, seen)
	if seen["r1"] == 0 || seen["r2"] == 0 {
		t.Errorf("decisions per revision %v, want both revisions exercised", seen)
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
