package decision

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// Policy is one compiled, immutable policy revision. decision/rego provides
// the OPA implementation.
type Policy interface {
	// Eval evaluates the prepared query for path (e.g. "data.rabbitmq.decision")
	// against in. defined is false when the rule produced no value.
	Eval(ctx context.Context, path string, in *Input) (value any, defined bool, err error)
	// Bundles names each bundle in this revision with its revision string.
	Bundles() map[string]string
}

// Logger receives one event per decision. Log must not retain ev's maps
// after it returns unless it copies them.
type Logger interface {
	Log(ctx context.Context, ev *Event) error
}

// Config configures an Engine.
type Config struct {
	// Timeout bounds one evaluation. Zero means 1s.
	Timeout time.Duration
	// Logger receives decision events. Nil discards them.
	Logger Logger
	// Log reports failures of the side paths. Nil discards.
	Log *slog.Logger
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

// Engine decides requests with the active policy and logs every decision.
type Engine struct {
	policy  atomic.Pointer[activePolicy]
	timeout time.Duration
	logger  Logger
	log     *slog.Logger
	now     func() time.Time
}

type activePolicy struct {
	p       Policy
	bundles map[string]string
}

// NewEngine returns an Engine with no policy: until Activate is called it
// is not ready and denies everything.
func NewEngine(cfg Config) *Engine {
	e := &Engine{timeout: cfg.Timeout, logger: cfg.Logger, log: cfg.Log, now: cfg.Now}
	if e.timeout <= 0 {
		e.timeout = time.Second
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.now == nil {
		e.now = time.Now
	}
	return e
}

// Activate makes p the policy for every decision that starts after it
// returns. p must already be compiled and checked.
func (e *Engine) Activate(p Policy) {
	e.policy.Store(&activePolicy{p: p, bundles: p.Bundles()})
}

// Ready reports whether a policy has been activated.
func (e *Engine) Ready() bool { return e.policy.Load() != nil }

// Decision is one evaluated request: what was asked, under which revision,
// and what the policy answered. Err holds internal error text for the log
// only; it never reaches a client.
type Decision struct {
	ID        string
	Path      string
	Input     *Input
	Result    Result
	Bundles   map[string]string
	Timestamp time.Time
	EvalTime  time.Duration
	Err       error
}

// Decide evaluates path for in under the engine's timeout. The decision id
// is in.Request.ID, assigned here when empty. It never returns
// an allow for an undefined, malformed, failed or timed-out evaluation.
func (e *Engine) Decide(ctx context.Context, path string, in *Input) *Decision {
	if in.Request.ID == "" {
		in.Request.ID = NewID()
	}
	d := &Decision{ID: in.Request.ID, Path: path, Input: in, Timestamp: e.now()}
	ap := e.policy.Load()
	if ap == nil {
		d.Result = Result{Outcome: OutcomeNotReady}
		d.Err = errors.New("no policy activated")
		return d
	}
	d.Bundles = ap.bundles
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	start := time.Now()
	v, defined, err := ap.p.Eval(ctx, path, in)
	d.EvalTime = time.Since(start)
	switch {
	case err != nil && (errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded):
		d.Result = Result{Outcome: OutcomeTimeout}
		d.Err = fmt.Errorf("evaluate %s: %w", path, err)
	case err != nil:
		d.Result = Result{Outcome: OutcomeError}
		d.Err = fmt.Errorf("evaluate %s: %w", path, err)
	default:
		d.Result, err = Interpret(v, defined)
		if err != nil {
			d.Err = err
		}
	}
	return d
}

// Outcome of the whole request, known once the response is written.
type Completion struct {
	Status          int           // status sent to the client
	UpstreamStatus  int           // 0 when the upstream was not called
	UpstreamLatency time.Duration // 0 when the upstream was not called
	Latency         time.Duration // whole request, as seen by the gateway
	Error           string        // internal error (upstream failure), log only
}

// Record logs d with how the request ended. Logging failures are reported
// through the engine's slog logger and returned.
func (e *Engine) Record(ctx context.Context, d *Decision, c Completion) error {
	if e.logger == nil {
		return nil
	}
	ev := NewEvent(d, c)
	if err := e.logger.Log(ctx, ev); err != nil {
		e.log.Error("decision log write failed", "decision_id", d.ID, "err", err)
		return err
	}
	return nil
}

// NewID returns a random 128-bit identifier in hex, used for decision ids.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}
