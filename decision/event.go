package decision

import (
	"strings"
	"time"
)

// Event is one decision-log record: a superset of OPA's decision-log event.
type Event struct {
	DecisionID string    `json:"decision_id"`
	Timestamp  time.Time `json:"timestamp"`
	Path       string    `json:"path"`
	// Input is the input as plain JSON values, a copy the log may mask
	// freely (see Input.Map). NewEvent leaves it nil and sets Source
	// instead: InputMap builds the copy when it is needed, and decision/log
	// encodes Source without one when no mask path applies.
	Input   map[string]any        `json:"input"`
	Result  any                   `json:"result"`
	Bundles map[string]BundleInfo `json:"bundles,omitempty"`
	Labels  map[string]string     `json:"labels,omitempty"`
	Metrics map[string]int64      `json:"metrics"`

	Route          string  `json:"route"`
	Subject        string  `json:"subject"`
	IdentityMethod string  `json:"identity_method"`
	Decision       Outcome `json:"decision"`
	Allowed        bool    `json:"allowed"`
	Reason         string  `json:"reason,omitempty"`
	Status         int     `json:"status"`
	UpstreamStatus int     `json:"upstream_status,omitempty"`
	Error          string  `json:"error,omitempty"`
	CacheHit       bool    `json:"cache_hit"` // the decision was reused from the cache
	RateLimit      any     `json:"rate_limit,omitempty"`
	// Phase is "authorized" for the event a log_fail_closed route commits
	// before forwarding; empty for the completion event of every request.
	Phase string `json:"phase,omitempty"`

	// Mask lists input paths (e.g. "input.request.body.password") the
	// policy asked to redact; the log applies it and does not write it.
	Mask []string `json:"-"`
	// Source is the request's own input, which Input is built from while
	// Input is nil. It is shared with the request: a Logger reads it only
	// during Log and never modifies it.
	Source *Input `json:"-"`
}

// InputMap returns Input, building it from Source first if it is nil.
func (ev *Event) InputMap() map[string]any {
	if ev.Input == nil && ev.Source != nil {
		ev.Input = ev.Source.Map()
	}
	return ev.Input
}

// PhaseAuthorized marks an event committed before forwarding.
const PhaseAuthorized = "authorized"

// BundleInfo is the revision of one bundle that served a decision.
type BundleInfo struct {
	Revision string `json:"revision"`
}

// NewEvent builds the log event for d completed as c. Its Source is
// d.Input; Input is built only when asked for (InputMap).
func NewEvent(d *Decision, c Completion) *Event {
	in := d.Input
	ev := &Event{
		DecisionID:     d.ID,
		Timestamp:      d.Timestamp.UTC(),
		Path:           strings.ReplaceAll(strings.TrimPrefix(d.Path, "data."), ".", "/"),
		Source:         in,
		Result:         d.Result.Raw,
		Route:          in.Route.Name,
		Subject:        in.Identity.Subject,
		IdentityMethod: in.Identity.Method,
		Decision:       d.Result.Outcome,
		Allowed:        d.Result.Allow,
		Reason:         d.Result.Reason,
		Status:         c.Status,
		UpstreamStatus: c.UpstreamStatus,
		CacheHit:       d.CacheHit,
		RateLimit:      c.RateLimit,
		Mask:           d.Result.Mask,
		Metrics: map[string]int64{
			"timer_rego_query_eval_ns": d.EvalTime.Nanoseconds(),
			"timer_server_handler_ns":  c.Latency.Nanoseconds(),
			"timer_upstream_ns":        c.UpstreamLatency.Nanoseconds(),
		},
	}
	if len(d.Bundles) > 0 {
		ev.Bundles = make(map[string]BundleInfo, len(d.Bundles))
		for name, rev := range d.Bundles {
			ev.Bundles[name] = BundleInfo{Revision: rev}
		}
	}
	if n := len(in.Route.Labels) + len(d.Result.Labels); n > 0 {
		ev.Labels = make(map[string]string, n)
		for k, v := range in.Route.Labels {
			ev.Labels[k] = v
		}
		for k, v := range d.Result.Labels {
			ev.Labels[k] = v
		}
	}
	var errs []string
	if d.Err != nil {
		errs = append(errs, d.Err.Error())
	}
	if c.Error != "" {
		errs = append(errs, c.Error)
	}
	ev.Error = strings.Join(errs, "; ")
	return ev
}
