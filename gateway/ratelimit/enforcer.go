package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/policygate/policygate/decision"
)

// Result says how a rate-limit check ended.
type Result string

// Results. Only ResultRejected, ResultLocalRejected and ResultFailClosed
// stop the request.
const (
	// ResultNone: the request carried no limit.
	ResultNone Result = "none"
	// ResultAllowed / ResultRejected: the backend decided.
	ResultAllowed  Result = "allowed"
	ResultRejected Result = "rejected"
	// ResultFailOpen: the backend failed and the route forwards unmetered.
	ResultFailOpen Result = "fail_open"
	// ResultFailClosed: the backend failed and the route answers 503.
	ResultFailClosed Result = "fail_closed"
	// ResultLocalAllowed / ResultLocalRejected: the backend failed and the
	// route's in-process budget decided.
	ResultLocalAllowed  Result = "local_allowed"
	ResultLocalRejected Result = "local_rejected"
)

// Options are the Enforcer's injected dependencies.
type Options struct {
	// Log reports breaker transitions and invalid limits. Nil discards.
	Log *slog.Logger
	// Registerer receives the metrics. Nil: not registered.
	Registerer prometheus.Registerer
	// Now is the clock of the in-process limiters and the breaker. Nil
	// means time.Now.
	Now func() time.Time
}

// Enforcer checks the limits of each request against the configured
// backend and applies the route's failure mode when the backend cannot
// answer within the timeout.
type Enforcer struct {
	backend string
	remote  Limiter // nil for the memory backend
	primary *Memory // the memory backend; nil with a remote one
	local   *Memory // the fallback budget (failure_mode: local)
	timeout time.Duration
	share   float64
	breaker *breaker
	m       *metrics
	log     *slog.Logger
}

// NewEnforcer returns an Enforcer for s. With backend redis, remote is the
// Redis limiter (gateway/ratelimit/redis); with backend memory, remote must
// be nil and counters live in this process.
func NewEnforcer(s *Settings, remote Limiter, opts Options) (*Enforcer, error) {
	if s == nil {
		return nil, errors.New("ratelimit: nil settings")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	e := &Enforcer{backend: s.Backend, remote: remote, timeout: s.Timeout, share: s.LocalShare, log: opts.Log}
	if e.timeout <= 0 {
		e.timeout = 50 * time.Millisecond
	}
	if e.share <= 0 || e.share > 1 {
		e.share = 1
	}
	switch s.Backend {
	case BackendMemory:
		if remote != nil {
			return nil, errors.New("ratelimit: backend memory takes no remote limiter")
		}
		e.primary = NewMemory(s.MaxKeys, opts.Now)
	case BackendRedis:
		if remote == nil {
			return nil, errors.New("ratelimit: backend redis needs a remote limiter")
		}
		e.local = NewMemory(s.MaxKeys, opts.Now)
		failures, openFor := s.Failures, s.OpenFor
		if failures <= 0 {
			failures = 5
		}
		if openFor <= 0 {
			openFor = 2 * time.Second
		}
		e.breaker = newBreaker(failures, openFor, opts.Now)
	default:
		return nil, fmt.Errorf("ratelimit: unknown backend %q", s.Backend)
	}
	m, err := newMetrics(opts.Registerer, s.Backend, e.primary, e.local)
	if err != nil {
		return nil, err
	}
	e.m = m
	return e, nil
}

// Check resolves rt's static limits for v, adds the decision's limits, and
// checks them all together. rt may be nil (no static limits, fail_closed).
// It never blocks longer than the configured timeout on the backend.
func (e *Enforcer) Check(ctx context.Context, rt *Route, v *Values, fromDecision []decision.RateLimit) Outcome {
	if v == nil {
		v = &Values{}
	}
	n := len(fromDecision)
	if rt != nil {
		n += len(rt.limits)
	}
	if n == 0 {
		return Outcome{Result: ResultNone, Index: -1, Mode: rt.mode0()}
	}
	limits := make([]Limit, 0, n)
	scope := ""
	if rt != nil {
		limits = rt.Limits(limits, v)
		scope = rt.Scope(v)
	}
	limits = FromDecision(limits, fromDecision)
	return e.CheckLimits(ctx, rt, scope, limits)
}

// CheckLimits checks already resolved limits under scope with rt's failure
// mode and header setting (rt may be nil: fail_closed, no headers on
// allowed responses).
func (e *Enforcer) CheckLimits(ctx context.Context, rt *Route, scope string, limits []Limit) Outcome {
	o := Outcome{Index: -1, Mode: rt.mode0(), Limits: len(limits), Backend: e.backend}
	if rt != nil {
		o.headers = rt.headers
	}
	if len(limits) == 0 {
		o.Result, o.Backend = ResultNone, ""
		return o
	}
	if err := ValidateLimits(limits); err != nil {
		// A bug in the caller, not a backend failure: deny, and leave the
		// breaker alone.
		e.log.Error("rate limit check with an invalid limit", "route", rt.name0(), "err", err)
		o.Result, o.Status, o.Err, o.RetryAfter = ResultFailClosed, http.StatusServiceUnavailable, err, time.Second
		e.count(rt, o.Result)
		return o
	}
	if e.remote == nil {
		d, err := e.primary.Allow(ctx, scope, limits)
		if err != nil { // unreachable after ValidateLimits; fail closed all the same
			o.Result, o.Status, o.Err = ResultFailClosed, http.StatusServiceUnavailable, err
		} else {
			o.fromDecision(d, limits, ResultAllowed, ResultRejected)
		}
		e.count(rt, o.Result)
		return o
	}
	d, err := e.callRemote(ctx, scope, limits)
	if err == nil {
		o.fromDecision(d, limits, ResultAllowed, ResultRejected)
		e.count(rt, o.Result)
		return o
	}
	o.Err = err
	switch o.Mode {
	case FailOpen:
		o.Result = ResultFailOpen
	case FailLocal:
		o.Backend = "local"
		d, lerr := e.local.Allow(ctx, scope, e.scaled(limits))
		if lerr != nil {
			o.Result, o.Status, o.Err = ResultFailClosed, http.StatusServiceUnavailable, errors.Join(err, lerr)
			break
		}
		o.fromDecision(d, limits, ResultLocalAllowed, ResultLocalRejected)
	default:
		o.Result, o.Status = ResultFailClosed, http.StatusServiceUnavailable
		var be *backendError
		if errors.As(err, &be) && be.wait > 0 {
			o.RetryAfter = be.wait
		} else {
			o.RetryAfter = time.Second
		}
	}
	e.count(rt, o.Result)
	return o
}

// backendError is a failed or refused backend call.
type backendError struct {
	reason string        // timeout, error, breaker_open
	wait   time.Duration // breaker_open: until the next probe
	err    error
}

func (b *backendError) Error() string {
	if b.err == nil {
		return "ratelimit: backend " + b.reason
	}
	return "ratelimit: backend " + b.reason + ": " + b.err.Error()
}

func (b *backendError) Unwrap() error { return b.err }

// ErrBreakerOpen is wrapped by the error of a check refused by the open
// circuit breaker.
var ErrBreakerOpen = errors.New("circuit breaker open")

func (e *Enforcer) callRemote(ctx context.Context, scope string, limits []Limit) (Decision, error) {
	t, wait := e.breaker.acquire()
	if t == ticketNone {
		e.m.errBreaker.Inc()
		return Decision{}, &backendError{reason: "breaker_open", wait: wait, err: ErrBreakerOpen}
	}
	cctx, cancel := context.WithTimeout(ctx, e.timeout)
	start := time.Now()
	d, err := e.remote.Allow(cctx, scope, limits)
	elapsed := time.Since(start)
	timedOut := cctx.Err() == context.DeadlineExceeded
	cancel()
	e.m.backendSeconds.Observe(elapsed.Seconds())
	if err == nil {
		if e.breaker.done(t, callOK) == closed {
			e.m.breakerOpen.Set(0)
			e.log.Info("rate-limit backend recovered; breaker closed", "backend", e.backend)
		}
		return d, nil
	}
	res := callFailed
	if ctx.Err() != nil {
		res = callAborted // the request went away; says nothing about the backend
	}
	be := &backendError{reason: "error", err: err}
	if timedOut || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		be.reason = "timeout"
		e.m.errTimeout.Inc()
	} else {
		e.m.errOther.Inc()
	}
	switch e.breaker.done(t, res) {
	case opened:
		e.m.breakerOpen.Set(1)
		e.log.Warn("rate-limit backend failing; breaker open", "backend", e.backend, "open_for", e.breaker.openFor, "err", err)
	case closed:
		e.m.breakerOpen.Set(0)
	}
	return Decision{}, be
}

// scaled applies local_share to the fallback budget.
func (e *Enforcer) scaled(limits []Limit) []Limit {
	if e.share >= 1 {
		return limits
	}
	out := make([]Limit, len(limits))
	for i, l := range limits {
		l.Limit = int64(math.Ceil(float64(l.Limit) * e.share))
		l.Burst = max(l.Cost, int64(math.Ceil(float64(l.Burst)*e.share)))
		out[i] = l
	}
	return out
}

func (e *Enforcer) count(rt *Route, r Result) {
	e.m.checks.WithLabelValues(rt.name0(), string(r)).Inc()
}

func (r *Route) mode0() FailureMode {
	if r == nil {
		return FailClosed
	}
	return r.mode
}

func (r *Route) name0() string {
	if r == nil {
		return ""
	}
	return r.name
}

// Outcome is the Enforcer's verdict for one request.
type Outcome struct {
	// Result says how the check ended.
	Result Result
	// Status is the HTTP status to answer with when Allowed is false:
	// 429 (a limit rejected the request) or 503 (fail_closed).
	Status int
	// Limit is the limit that decided (see Decision.Index); valid when
	// Index >= 0.
	Limit Limit
	Index int
	// Limits is the number of limits checked.
	Limits int
	// Remaining, RetryAfter and ResetAfter describe Limit (see Decision).
	// For fail_closed, RetryAfter is a hint for Retry-After.
	Remaining  int64
	RetryAfter time.Duration
	ResetAfter time.Duration
	// Backend is the limiter that decided: "memory", "redis", or "local"
	// (the fallback budget); for fail_open and fail_closed, the one that
	// failed.
	Backend string
	// Mode is the route's failure mode.
	Mode FailureMode
	// Err is the backend failure, for the log only; never shown to
	// clients.
	Err error

	headers bool
}

// Allowed reports whether the request may proceed.
func (o Outcome) Allowed() bool {
	switch o.Result {
	case ResultRejected, ResultLocalRejected, ResultFailClosed:
		return false
	}
	return true
}

// Code is the short reason code a client sees when the request is stopped.
func (o Outcome) Code() string {
	switch o.Result {
	case ResultRejected, ResultLocalRejected:
		return "rate_limited"
	case ResultFailClosed:
		return "rate_limit_unavailable"
	}
	return ""
}

func (o *Outcome) fromDecision(d Decision, limits []Limit, allowed, rejected Result) {
	o.Result, o.Index = allowed, d.Index
	if !d.Allowed {
		o.Result, o.Status = rejected, http.StatusTooManyRequests
	}
	if d.Index >= 0 && d.Index < len(limits) {
		o.Limit = limits[d.Index]
	}
	o.Remaining, o.RetryAfter, o.ResetAfter = d.Remaining, d.RetryAfter, d.ResetAfter
}

// Header names set by SetHeaders (draft-ietf-httpapi-ratelimit-headers).
const (
	HeaderLimit     = "RateLimit-Limit"
	HeaderRemaining = "RateLimit-Remaining"
	HeaderReset     = "RateLimit-Reset"
	HeaderPolicy    = "RateLimit-Policy"
	HeaderRetry     = "Retry-After"
)

// SetHeaders adds the rate-limit response headers: on a 429, Retry-After
// and the RateLimit-* fields of the limit that rejected; on an allowed
// response, the RateLimit-* fields of the most exhausted limit when the
// route enables headers; on a 503, Retry-After. RateLimit-Limit is the
// limit's burst (what a client may spend at once, the ceiling of
// RateLimit-Remaining); RateLimit-Policy states "limit;w=period-seconds",
// with ";burst=" when burst differs from limit.
func (o Outcome) SetHeaders(h http.Header) {
	switch o.Result {
	case ResultRejected, ResultLocalRejected:
		h.Set(HeaderRetry, ceilSeconds(o.RetryAfter, 1))
		o.setRateLimit(h)
	case ResultAllowed, ResultLocalAllowed:
		if o.headers {
			o.setRateLimit(h)
		}
	case ResultFailClosed:
		if o.RetryAfter > 0 {
			h.Set(HeaderRetry, ceilSeconds(o.RetryAfter, 1))
		}
	}
}

func (o Outcome) setRateLimit(h http.Header) {
	if o.Index < 0 {
		return
	}
	l := o.Limit
	h.Set(HeaderLimit, strconv.FormatInt(l.Burst, 10))
	h.Set(HeaderRemaining, strconv.FormatInt(o.Remaining, 10))
	h.Set(HeaderReset, ceilSeconds(o.ResetAfter, 0))
	p := strconv.FormatInt(l.Limit, 10) + ";w=" + ceilSeconds(l.Period, 1)
	if l.Burst != l.Limit {
		p += ";burst=" + strconv.FormatInt(l.Burst, 10)
	}
	h.Set(HeaderPolicy, p)
}

// ceilSeconds renders d as whole seconds, rounded up, at least floor.
func ceilSeconds(d time.Duration, floor int64) string {
	s := int64((d + time.Second - 1) / time.Second)
	if s < floor {
		s = floor
	}
	return strconv.FormatInt(s, 10)
}

// LogEntry is the rate-limit part of a decision-log event.
type LogEntry struct {
	Result       Result      `json:"result"`
	Backend      string      `json:"backend,omitempty"`
	FailureMode  FailureMode `json:"failure_mode,omitempty"`
	Limits       int         `json:"limits"`
	Limit        *LimitLog   `json:"limit,omitempty"`
	Remaining    int64       `json:"remaining"`
	RetryAfterMS int64       `json:"retry_after_ms,omitempty"`
	ResetAfterMS int64       `json:"reset_after_ms,omitempty"`
	Error        string      `json:"error,omitempty"`
}

// LimitLog names the limit that decided. Keys are logged as resolved:
// they hold subjects and addresses, which the log records anyway, never
// credentials.
type LimitLog struct {
	Key    string `json:"key"`
	Limit  int64  `json:"limit"`
	Period string `json:"period"`
	Burst  int64  `json:"burst"`
	Cost   int64  `json:"cost"`
	Source Source `json:"source"`
}

// Log returns the decision-log record of o.
func (o Outcome) Log() LogEntry {
	le := LogEntry{
		Result: o.Result, Backend: o.Backend, FailureMode: o.Mode, Limits: o.Limits, Remaining: o.Remaining,
		RetryAfterMS: o.RetryAfter.Milliseconds(), ResetAfterMS: o.ResetAfter.Milliseconds(),
	}
	if o.Index >= 0 {
		l := o.Limit
		le.Limit = &LimitLog{Key: l.Key, Limit: l.Limit, Period: l.Period.String(), Burst: l.Burst, Cost: l.Cost, Source: l.Source}
	}
	if o.Err != nil {
		le.Error = o.Err.Error()
	}
	return le
}
