package decision

import (
	"fmt"
	"net/textproto"
	"sort"
	"strings"
)

// Outcome classifies how a decision was reached.
type Outcome string

// Outcomes. Only OutcomeAllow lets a request through.
const (
	OutcomeAllow     Outcome = "allow"
	OutcomeDeny      Outcome = "deny"
	OutcomeUndefined Outcome = "undefined" // the rule produced no value
	OutcomeError     Outcome = "error"     // evaluation failed or the result is malformed
	OutcomeTimeout   Outcome = "timeout"   // evaluation exceeded its deadline
	OutcomeNotReady  Outcome = "not_ready" // no policy activated yet
)

// Result is the interpreted decision document (see the README contract).
type Result struct {
	Allow           bool
	Outcome         Outcome
	Reason          string            // policy-authored reason, safe to show to clients
	Status          int               // HTTP status for denials; 0 means the default
	Headers         map[string]string // set on the forwarded request
	RemoveHeaders   []string          // removed from the forwarded request
	ResponseHeaders map[string]string // set on the response to the client
	Mask            []string          // input paths to redact in the log
	Labels          map[string]string // added to the log event
	RateLimits      []RateLimit       // limits to enforce on the request, see ParseRateLimits
	Cache           CacheDirective    // the decision's "cache" field, see ParseCache
	Raw             any               // the policy's value as returned, for the log
}

// Code is the short, stable reason code a client sees for a denial.
func (r *Result) Code() string {
	switch r.Outcome {
	case OutcomeAllow:
		return ""
	case OutcomeUndefined:
		return "no_decision"
	case OutcomeError:
		return "policy_error"
	case OutcomeTimeout:
		return "policy_timeout"
	case OutcomeNotReady:
		return "not_ready"
	}
	if r.Status == 401 {
		return "unauthenticated"
	}
	return "forbidden"
}

// HTTPStatus is the status a denied request is answered with: 503 when the
// policy could not decide, else the policy's status or 403.
func (r *Result) HTTPStatus() int {
	switch r.Outcome {
	case OutcomeAllow:
		return 200
	case OutcomeError, OutcomeTimeout, OutcomeNotReady:
		return 503
	}
	if r.Status != 0 {
		return r.Status
	}
	return 403
}

// Interpret turns the value a policy returned into a Result. A boolean is
// the allow flag; an object follows the decision contract. Anything
// malformed is an error, which denies: a policy bug must never allow.
func Interpret(v any, defined bool) (Result, error) {
	if !defined {
		return Result{Outcome: OutcomeUndefined}, nil
	}
	res := Result{Raw: v, Outcome: OutcomeDeny}
	switch t := v.(type) {
	case bool:
		if t {
			res.Allow, res.Outcome = true, OutcomeAllow
		}
		return res, nil
	case map[string]any:
		return interpretObject(t, res)
	default:
		return Result{Raw: v, Outcome: OutcomeError}, fmt.Errorf("decision: result is %T, want boolean or object", v)
	}
}

func interpretObject(m map[string]any, res Result) (Result, error) {
	fail := func(err error) (Result, error) {
		return Result{Raw: res.Raw, Outcome: OutcomeError}, err
	}
	allowV, ok := m["allow"]
	if !ok {
		allowV, ok = m["allowed"]
	}
	if ok {
		b, isBool := allowV.(bool)
		if !isBool {
			return fail(fmt.Errorf("decision: allow is %T, want boolean", allowV))
		}
		if b {
			res.Allow, res.Outcome = true, OutcomeAllow
		}
	}
	if v, ok := m["reason"]; ok {
		s, isStr := v.(string)
		if !isStr {
			return fail(fmt.Errorf("decision: reason is %T, want string", v))
		}
		res.Reason = s
	}
	// opa-envoy-plugin's names are accepted too, so its policies run
	// unchanged: http_status, response_headers_to_add,
	// request_headers_to_remove.
	aliases := map[string]string{
		"http_status":               "status",
		"response_headers_to_add":   "response_headers",
		"request_headers_to_remove": "remove_headers",
	}
	for alias, name := range aliases {
		if v, ok := m[alias]; ok {
			if _, set := m[name]; !set {
				m = withKey(m, name, v)
			}
		}
	}
	if v, ok := m["status"]; ok {
		n, err := asInt(v)
		if err != nil || n < 400 || n > 599 {
			return fail(fmt.Errorf("decision: status %v is not an HTTP error status (400-599)", v))
		}
		res.Status = n
	}
	var err error
	if res.Headers, err = headerMap(m, "headers"); err != nil {
		return fail(err)
	}
	if res.ResponseHeaders, err = headerMap(m, "response_headers"); err != nil {
		return fail(err)
	}
	if res.RemoveHeaders, err = stringList(m, "remove_headers"); err != nil {
		return fail(err)
	}
	for i, h := range res.RemoveHeaders {
		res.RemoveHeaders[i] = textproto.CanonicalMIMEHeaderKey(h)
	}
	if res.Mask, err = stringList(m, "mask"); err != nil {
		return fail(err)
	}
	if v, ok := m["rate_limit"]; ok {
		if res.RateLimits, err = ParseRateLimits(v); err != nil {
			return fail(err)
		}
	}
	if v, ok := m["cache"]; ok {
		ttl, off, _, err := ParseCache(v)
		if err != nil {
			return fail(err)
		}
		res.Cache = CacheDirective{TTL: ttl, Off: off}
	}
	if v, ok := m["labels"]; ok {
		lm, isMap := v.(map[string]any)
		if !isMap {
			return fail(fmt.Errorf("decision: labels is %T, want object", v))
		}
		res.Labels = make(map[string]string, len(lm))
		for k, x := range lm {
			res.Labels[k] = fmt.Sprint(x)
		}
	}
	return res, nil
}

// withKey returns a copy of m with k set: the policy's value is never
// modified.
func withKey(m map[string]any, k string, v any) map[string]any {
	c := make(map[string]any, len(m)+1)
	for kk, vv := range m {
		c[kk] = vv
	}
	c[k] = v
	return c
}

func headerMap(m map[string]any, key string) (map[string]string, error) {
	v, ok := m[key]
	if !ok {
		return nil, nil
	}
	hm, isMap := v.(map[string]any)
	if !isMap {
		return nil, fmt.Errorf("decision: %s is %T, want object", key, v)
	}
	out := make(map[string]string, len(hm))
	for k, x := range hm {
		var s string
		switch t := x.(type) {
		case string:
			s = t
		case []any: // opa-envoy-plugin allows several values
			parts := make([]string, 0, len(t))
			for _, p := range t {
				ps, isStr := p.(string)
				if !isStr {
					return nil, fmt.Errorf("decision: %s[%q] holds %T, want string", key, k, p)
				}
				parts = append(parts, ps)
			}
			s = strings.Join(parts, ", ")
		default:
			return nil, fmt.Errorf("decision: %s[%q] is %T, want string", key, k, x)
		}
		if !validHeaderName(k) || !validHeaderValue(s) {
			return nil, fmt.Errorf("decision: %s[%q] is not a valid header", key, k)
		}
		ck := textproto.CanonicalMIMEHeaderKey(k)
		if _, dup := out[ck]; dup {
			// Which value would win would depend on map order.
			return nil, fmt.Errorf("decision: %s names %q twice (header names are case-insensitive)", key, ck)
		}
		out[ck] = s
	}
	return out, nil
}

func stringList(m map[string]any, key string) ([]string, error) {
	v, ok := m[key]
	if !ok {
		return nil, nil
	}
	var items []any
	switch t := v.(type) {
	case []any:
		items = t
	case map[string]any: // a Rego set arrives as an array, but accept {x: true}
		for k := range t {
			items = append(items, k)
		}
		sort.Slice(items, func(i, j int) bool { return items[i].(string) < items[j].(string) })
	default:
		return nil, fmt.Errorf("decision: %s is %T, want array of strings", key, v)
	}
	out := make([]string, 0, len(items))
	for _, x := range items {
		s, isStr := x.(string)
		if !isStr {
			return nil, fmt.Errorf("decision: %s holds %T, want string", key, x)
		}
		out = append(out, s)
	}
	return out, nil
}

func asInt(v any) (int, error) {
	switch n := v.(type) {
	case int:
		return n, nil
	case int64:
		return int(n), nil
	case float64:
		if n != float64(int(n)) {
			return 0, fmt.Errorf("not an integer")
		}
		return int(n), nil
	case interface{ Int64() (int64, error) }: // json.Number
		i, err := n.Int64()
		return int(i), err
	}
	return 0, fmt.Errorf("%T is not a number", v)
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return false
		}
	}
	return true
}

func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
