package log

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
)

// The encoder must write exactly the bytes encoding/json writes: lines are
// hashed as written, and logs written before it must read and verify the
// same. Every case compares encodeEvent with json.Marshal of the same wire
// value.

func marshalWire(t testing.TB, ev *decision.Event, erased []string) ([]byte, error) {
	t.Helper()
	return json.Marshal(wire{Event: ev, Erased: erased})
}

func sameAsJSON(t testing.TB, ev *decision.Event, erased []string) {
	t.Helper()
	want, werr := marshalWire(t, ev, erased)
	got, gerr := encodeEvent(ev, erased)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("error: encodeEvent %v, encoding/json %v", gerr, werr)
	}
	if werr != nil {
		if gerr.Error() != werr.Error() {
			t.Errorf("error %q, encoding/json says %q", gerr, werr)
		}
		return
	}
	if !bytes.Equal(got, want) {
		t.Errorf("bytes differ:\n got %s\nwant %s", got, want)
	}
}

// awkward are strings every escaping rule applies to.
var awkward = []string{
	"", "plain", `quote " backslash \ slash /`, "<script>&amp;</script>", "ctl \x00\x01\x07\b\f\n\r\t\x1f\x7f",
	"ünïcödé ✓ 𝄞", "\u2028line\u2029para", "bad \xff\xfe utf8 \xc3", "trunc \xe2\x82", "é\xed\xa0\x80surrogate",
}

func TestEncodeMatchesEncodingJSON(t *testing.T) {
	base := func() *decision.Event {
		in := &decision.Input{
			Request: decision.Request{
				ID: "id-1", Method: "POST", Scheme: "https", Host: "admin.example.com", Path: "/v1/keys", RawPath: "/v1/keys",
				Segments: []string{"v1", "keys"}, Query: map[string][]string{"b": {"2", "1"}, "a": {}},
				Headers: map[string]string{"user-agent": "x", "accept": "application/json"},
				Body:    map[string]any{"n": json.Number("12.50"), "z": nil, "list": []any{1.5, "s", true, map[string]any{}}, "empty": []any{}},
			},
			Identity: decision.Identity{Authenticated: true, Method: "jwt", Subject: "svc", Groups: []string{"a"},
				Claims: map[string]any{"exp": float64(1893456000), "iat": 1.5e-7, "big": 1e21, "neg": -0.0, "roles": []any{"r1"}}},
			Route: decision.Route{Name: "admin", Labels: map[string]string{"api": "nhi"}},
			Extra: map[string]any{"parsed_path": []any{"v1"}, "attributes": map[string]any{"k": map[string]string{"x": "y"}}},
		}
		d := &decision.Decision{
			ID: "id-1", Path: "data.rbac.decision", Input: in,
			Result: decision.Result{Allow: true, Outcome: decision.OutcomeAllow, Labels: map[string]string{"action": "create"},
				Raw: map[string]any{"allow": true, "headers": map[string]any{"X-A": "1"}, "ttl": json.Number("3600")}},
			Bundles:   map[string]string{"rbac": "r1", "other": "r2"},
			Timestamp: time.Date(2025, 1, 2, 3, 4, 5, 600, time.UTC), EvalTime: time.Microsecond,
		}
		ev := decision.NewEvent(d, decision.Completion{Status: 200, UpstreamStatus: 201, Latency: time.Millisecond})
		ev.InputMap()
		return ev
	}
	cases := map[string]func(ev *decision.Event) []string{
		"full": func(ev *decision.Event) []string { return []string{"/input/request/headers/authorization"} },
		"minimal": func(ev *decision.Event) []string {
			*ev = decision.Event{}
			return nil
		},
		"nil maps and slices": func(ev *decision.Event) []string {
			ev.Input, ev.Result, ev.Metrics, ev.Labels, ev.Bundles = nil, nil, nil, map[string]string{}, map[string]decision.BundleInfo{}
			return []string{}
		},
		"typed nils": func(ev *decision.Event) []string {
			ev.Input = map[string]any{"a": []any(nil), "b": map[string]any(nil), "c": []string(nil), "d": map[string]string(nil), "e": (*int)(nil)}
			ev.Result = []string{"x"}
			return nil
		},
		"denied with everything optional": func(ev *decision.Event) []string {
			ev.Allowed, ev.Decision, ev.Reason, ev.Status, ev.UpstreamStatus = false, decision.OutcomeError, "no <grant>", 503, 0
			ev.Error, ev.CacheHit, ev.Phase = "evaluate: boom & \"quotes\"", true, decision.PhaseAuthorized
			ev.RateLimit = struct {
				Result string `json:"result"`
				Limit  *int   `json:"limit,omitempty"`
			}{Result: "allowed"}
			return []string{"/input/request/body/password", "/input/request/query/token"}
		},
		"other Go types": func(ev *decision.Event) []string {
			ev.Input = map[string]any{"i8": int8(-3), "u": uint(7), "f32": float32(0.1), "t": time.Unix(0, 0).UTC(),
				"raw": json.RawMessage(`{"b":1, "a":2}`), "q": map[string][]string{"k": {"v"}}, "i": 42, "i64": int64(-9)}
			ev.Result = true
			return nil
		},
		"empty json.Number": func(ev *decision.Event) []string {
			ev.Result = json.Number("")
			return nil
		},
		"invalid json.Number": func(ev *decision.Event) []string {
			ev.Result = map[string]any{"n": json.Number("1e")}
			return nil
		},
		"NaN": func(ev *decision.Event) []string {
			ev.Input["request"].(map[string]any)["body"] = map[string]any{"x": math.NaN()}
			return nil
		},
		"infinity in rate_limit": func(ev *decision.Event) []string {
			ev.RateLimit = math.Inf(1)
			return nil
		},
		"timestamp out of range": func(ev *decision.Event) []string {
			ev.Timestamp = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
			return nil
		},
		"timestamp in a zone": func(ev *decision.Event) []string {
			ev.Timestamp = time.Date(2025, 6, 1, 12, 0, 0, 123456789, time.FixedZone("x", 5*3600+1800))
			return nil
		},
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			ev := base()
			erased := mod(ev)
			sameAsJSON(t, ev, erased)
		})
	}
	t.Run("strings", func(t *testing.T) {
		for _, s := range awkward {
			ev := base()
			ev.DecisionID, ev.Reason, ev.Subject = s, s, s
			ev.Input = map[string]any{s: s, "list": []any{s}, "m": map[string]string{s: s}}
			ev.Labels = map[string]string{s: s}
			ev.Bundles = map[string]decision.BundleInfo{s: {Revision: s}}
			ev.Metrics = map[string]int64{s: -1}
			sameAsJSON(t, ev, []string{s})
		}
	})
	t.Run("floats", func(t *testing.T) {
		for _, f := range []float64{0, 1, -1, 0.1, 1e-6, 9.99e-7, 1e-7, 1e20, 1e21, 123456789012345678901234.0, math.MaxFloat64,
			math.SmallestNonzeroFloat64, -1e-300, 5e-324, 1.0 / 3, 2.5e-8, 1e-10} {
			ev := base()
			ev.Result = f
			sameAsJSON(t, ev, nil)
		}
	})
}

func FuzzEncode(f *testing.F) {
	for _, s := range awkward {
		f.Add(s, s, 1.5, "12")
	}
	f.Add("a", "b", 1e-9, "-0.5e+7")
	f.Fuzz(func(t *testing.T, key, val string, num float64, number string) {
		ev := &decision.Event{
			DecisionID: val, Path: key, Route: val, Reason: key,
			Input:   map[string]any{key: val, "n": num, "nested": map[string]any{val: []any{key, num, json.Number(number)}}},
			Result:  map[string]any{"allow": true, key: []string{val}},
			Labels:  map[string]string{key: val},
			Metrics: map[string]int64{key: int64(len(val))},
			Bundles: map[string]decision.BundleInfo{val: {Revision: key}},
		}
		sameAsJSON(t, ev, []string{key, val})
	})
}

// The chain hashes lines as written; a line from the new encoder must be
// the line the old one wrote, so logs mixing both still verify.
func TestEncodeLineChains(t *testing.T) {
	ev := &decision.Event{DecisionID: "x", Input: map[string]any{"s": strings.Repeat("é<", 10)}, Metrics: map[string]int64{}}
	b, err := encodeEvent(ev, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := genesis()
	line := seal(nil, &h, b)
	if _, err := parseChained(line); err != nil {
		t.Fatal(err)
	}
}
