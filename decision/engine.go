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

	"golang.org/x/sync/singleflight"
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

// Logger receives one event per decision. Log must not retain ev's maps,
// nor ev.Source (the request's own Input, read-only), after it returns
// unless it copies them.
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
	// Cache keeps decisions between requests (decision/cache). Nil, the
	// default, turns caching off: every request is evaluated.
	Cache Cache
	// Metrics observes decisions and evaluations (decision/metrics). Nil
	// records nothing.
	Metrics Metrics
}

// Engine decides requests with the active policy and logs every decision.
type Engine struct {
	policy  atomic.Pointer[activePolicy]
	timeout time.Duration
	logger  Logger
	log     *slog.Logger
	now     func() time.Time
	cache   Cache
	metrics Metrics
	flight  singleflight.Group // concurrent identical cache misses, by key
}

type activePolicy struct {
	p       Policy
	bundles map[string]string
	cp      CachePolicy // nil when p cannot say what its rules read
	gen     uint64      // unique per activation; part of every cache key
}

// activations numbers activations process-wide, so that no two activations
// (of any engine sharing a cache) ever share cache keys, even for identical
// content: re-activating a bundle whose manifest revision did not change
// but whose data did must not serve the old decisions.
var activations atomic.Uint64

// NewEngine returns an Engine with no policy: until Activate is called it
// is not ready and denies everything.
func NewEngine(cfg Config) *Engine {
	e := &Engine{timeout: cfg.Timeout, logger: cfg.Logger, log: cfg.Log, now: cfg.Now, cache: cfg.Cache, metrics: cfg.Metrics}
	if e.timeout <= 0 {
		e.timeout = time.Second
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.metrics == nil {
		e.metrics = noMetrics{}
	}
	return e
}

// Activate makes p the policy for every decision that starts after it
// returns. p must already be compiled and checked. Every cached decision of
// earlier activations becomes unreachable at once: cache keys include the
// activation.
func (e *Engine) Activate(p Policy) {
	ap := &activePolicy{p: p, bundles: p.Bundles(), gen: activations.Add(1)}
	ap.cp, _ = p.(CachePolicy)
	e.policy.Store(ap)
}

// Ready reports whether a policy has been activated.
func (e *Engine) Ready() bool { return e.policy.Load() != nil }

// Decision is one evaluated request: what was asked, under which revision,
// and what the policy answered. Err holds internal error text for the log
// only; it never reaches a client. The Decision is the request's own; its
// Result may be shared with other requests through the cache, so its maps
// and slices are read-only.
type Decision struct {
	ID        string
	Path      string
	Input     *Input
	Result    Result
	Bundles   map[string]string
	Timestamp time.Time
	EvalTime  time.Duration // zero for a cache hit
	CacheHit  bool          // the result was reused, not evaluated
	Err       error
}

// Decide evaluates path for in under the engine's timeout, or reuses a
// cached decision of the same activation for an input that agrees on
// everything the rule reads (see CachePolicy). The decision id is
// in.Request.ID, assigned here when empty. It never returns an allow for an
// undefined, malformed, failed or timed-out evaluation. in must not change
// while Decide runs.
func (e *Engine) Decide(ctx context.Context, path string, in *Input, opts ...DecideOption) *Decision {
	start := time.Now()
	if in.Request.ID == "" {
		in.Request.ID = NewID()
	}
	d := &Decision{ID: in.Request.ID, Path: path, Input: in, Timestamp: e.now()}
	ap := e.policy.Load()
	if ap == nil {
		d.Result = Result{Outcome: OutcomeNotReady}
		d.Err = errors.New("no policy activated")
		e.metrics.ObserveDecision(path, d.Result.Outcome, CacheOff, time.Since(start))
		return d
	}
	d.Bundles = ap.bundles
	status := CacheOff
	if e.cache != nil && ap.cp != nil {
		var o decideOptions
		for _, opt := range opts {
			opt(&o)
		}
		status = e.decideCached(ctx, ap, path, in, o, d)
	} else {
		ev := e.evaluate(ctx, ap, path, in)
		d.Result, d.EvalTime, d.Err = ev.res, ev.took, ev.err
	}
	e.metrics.ObserveDecision(path, d.Result.Outcome, status, time.Since(start))
	return d
}

// evaluation is the outcome of one policy evaluation.
type evaluation struct {
	res  Result
	took time.Duration
	err  error
}

// evaluate runs the policy under the engine's timeout and interprets what
// it returned.
func (e *Engine) evaluate(ctx context.Context, ap *activePolicy, path string, in *Input) evaluation {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	growStack()
	start := time.Now()
	v, defined, err := safeEval(ctx, ap.p, path, in)
	ev := evaluation{took: time.Since(start)}
	e.metrics.ObserveEval(path, ev.took)
	switch {
	case err != nil && (errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded):
		ev.res = Result{Outcome: OutcomeTimeout}
		ev.err = fmt.Errorf("evaluate %s: %w", path, err)
	case err != nil:
		ev.res = Result{Outcome: OutcomeError}
		ev.err = fmt.Errorf("evaluate %s: %w", path, err)
	default:
		ev.res, ev.err = Interpret(v, defined)
	}
	return ev
}

// safeEval is p.Eval with a panic in the policy engine turned into an
// evaluation error, which denies (503) and is logged: an input that makes
// the engine panic must neither crash the process (a gRPC handler does not
// recover) nor leave its request without a decision event.
func safeEval(ctx context.Context, p Policy, path string, in *Input) (v any, defined bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			v, defined, err = nil, false, fmt.Errorf("panic: %v", r)
		}
	}()
	return p.Eval(ctx, path, in)
}

// Outcome of the whole request, known once the response is written.
type Completion struct {
	Status          int           // status sent to the client
	UpstreamStatus  int           // 0 when the upstream was not called
	UpstreamLatency time.Duration // 0 when the upstream was not called
	Latency         time.Duration // whole request, as seen by the gateway
	Error           string        // internal error (upstream failure), log only
	// RateLimit describes the rate-limit check (which limit applied and
	// its outcome) as a JSON-encodable value; nil when none ran.
	RateLimit any
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

// syncLogger is a Logger that can confirm an event is stored durably
// (decision/log.Logger in durable mode).
type syncLogger interface {
	LogSync(ctx context.Context, ev *Event) error
}

// Commit durably records that d authorized a request, before the request
// is forwarded, for routes where a privileged call must not happen without
// its log event ("no log, no call"). The event has phase "authorized"; the
// completion event Record writes later carries the same decision id. An
// error means the log could not store the event: the caller must refuse.
func (e *Engine) Commit(ctx context.Context, d *Decision) error {
	if e.logger == nil {
		return errors.New("decision log: not configured")
	}
	ev := NewEvent(d, Completion{})
	ev.Phase = PhaseAuthorized
	var err error
	if sl, ok := e.logger.(syncLogger); ok {
		err = sl.LogSync(ctx, ev)
	} else {
		err = e.logger.Log(ctx, ev)
	}
	if err != nil {
		e.log.Error("decision log commit failed", "decision_id", d.ID, "err", err)
	}
	return err
}

// NewID returns a random 128-bit identifier in hex, used for decision ids.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}
