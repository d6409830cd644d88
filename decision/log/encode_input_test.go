package log

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
)

// Direct input encoding must write what the general path writes — the
// input copied by Map, erased by apply, encoded — byte for byte, erasures
// included. Every case encodes the same event both ways.

func bothPaths(t testing.TB, m *masker, d *decision.Decision) (direct, general []byte) {
	t.Helper()
	c := decision.Completion{Status: 200, Latency: time.Millisecond}
	ev := decision.NewEvent(d, c)
	if !m.directInput(ev) {
		t.Fatal("event not eligible for direct encoding")
	}
	direct, ok := encodeDirect(ev, m)
	ev2 := decision.NewEvent(d, c)
	erased := m.apply(ev2.InputMap(), ev2.Mask)
	general, err := encodeEvent(ev2, erased)
	if ok != (err == nil) {
		t.Fatalf("direct ok=%v, general err=%v", ok, err)
	}
	return direct, general
}

func sameBothPaths(t testing.TB, m *masker, in *decision.Input) {
	t.Helper()
	d := &decision.Decision{ID: in.Request.ID, Path: "data.x.decision", Input: in, Timestamp: time.Unix(1, 2).UTC(),
		Result: decision.Result{Allow: true, Outcome: decision.OutcomeAllow, Raw: true}}
	direct, general := bothPaths(t, m, d)
	if !bytes.Equal(direct, general) {
		t.Errorf("direct and general encodings differ:\ndirect  %s\ngeneral %s", direct, general)
	}
}

func testMasker(t testing.TB) *masker {
	t.Helper()
	m, err := newMasker(nil, []string{"X-Api-Key", "X-Custom-Key"})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestEncodeDirectMatchesGeneral(t *testing.T) {
	m := testMasker(t)
	full := func() *decision.Input {
		return &decision.Input{
			Request: decision.Request{
				ID: "id", Method: "POST", Scheme: "https", Host: "h", Path: "/a/%2F", RawPath: "/a/%2f", Segments: []string{"a", "/"},
				Query: map[string][]string{"access_token": {"t"}, "page": {"1", "2"}, "empty": nil, "db_password": {"x"}},
				Headers: map[string]string{"accept": "*/*", "cookie": "c=1", "x-vault-token": "v", "x-custom-key": "k",
					"x-forwarded-authorization": "a", "user-agent": "ua <1> & \u2028",
					"x-original-uri": "/v1/keys?access_token=t&page=2", "referer": "https://app/cb#id_token=t;state=s", "x-note": "why?"},
				Body: map[string]any{
					"name": "n", "password": "p", "nested": map[string]any{"clientSecret": "s", "keep": json.Number("1.50"), "deep": []any{
						map[string]any{"api_key": "k", "v": 1.5}, "str", nil, []any{map[string]string{"token": "t", "x": "y"}},
					}},
					"tags":  []string{"a", "b"},
					"flat":  map[string]string{"secret": "s", "ok": "o"},
					"nils":  []any{[]any(nil), map[string]any(nil), []string(nil), map[string]string(nil)},
					"a/b~c": map[string]any{"pass/word": "x", "private_key": "y"},
				},
				BodyTruncated: true, RemoteAddr: "10.0.0.1",
			},
			Identity: decision.Identity{Authenticated: true, Method: "jwt", Subject: "s", Issuer: "i", KeyID: "k", SpiffeID: "spiffe://x",
				Groups: []string{"g"}, Claims: map[string]any{"roles": []any{"r"}, "aud": []string{"a"}, "m": map[string]string{"password": "kept: claims are not erased"},
					"nil": nil, "nm": map[string]any(nil), "exp": float64(1.8e9), "n": json.Number("7")}},
			Route: decision.Route{Name: "r", Labels: map[string]string{"api": "x"}},
		}
	}
	cases := map[string]func(in *decision.Input){
		"full":       func(*decision.Input) {},
		"zero input": func(in *decision.Input) { *in = decision.Input{} },
		"anonymous, nothing set": func(in *decision.Input) {
			*in = decision.Input{Identity: decision.Anonymous()}
		},
		"body a JSON array": func(in *decision.Input) { in.Request.Body = []any{map[string]any{"secret": 1}, "x"} },
		"body a flat map":   func(in *decision.Input) { in.Request.Body = map[string]string{"token": "t", "a": "b"} },
		"body a string":     func(in *decision.Input) { in.Request.Body = "password=x" },
		"body a nil map":    func(in *decision.Input) { in.Request.Body = map[string]any(nil) },
		"body a form":       func(in *decision.Input) { in.Request.Body = map[string]any{"password": []any{"x"}, "u": []any{"y"}} },
		"body of another type": func(in *decision.Input) {
			in.Request.Body = map[string][]string{"password": {"not reached by the erasure"}}
		},
		"nil claims": func(in *decision.Input) { in.Identity.Claims = nil },
		"nil maps and lists": func(in *decision.Input) {
			in.Request.Segments, in.Request.Query, in.Request.Headers, in.Identity.Groups, in.Route.Labels = nil, nil, nil, nil, nil
		},
		"long array": func(in *decision.Input) {
			list := make([]any, 150)
			for i := range list {
				list[i] = map[string]any{"token": i}
			}
			in.Request.Body = map[string]any{"list": list}
		},
		"non-ASCII names": func(in *decision.Input) {
			in.Request.Headers = map[string]string{"x-İnvalid\xff-token": "v", "X-ÜPassword": "w"}
			in.Request.Query = map[string][]string{"ÄPI_KEY": {"v"}, "naïve": {"w"}}
		},
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			in := full()
			mod(in)
			sameBothPaths(t, m, in)
		})
	}
}

// TestEncodeDirectEligibility: mask paths (configured or from the policy)
// and front-door fields take the general path.
func TestEncodeDirectEligibility(t *testing.T) {
	in := &decision.Input{Request: decision.Request{ID: "x"}}
	m := testMasker(t)
	withPaths, err := newMasker([]string{"input.identity.claims.email"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		m    *masker
		ev   func() *decision.Event
		want bool
	}{
		{"plain", m, func() *decision.Event { return decision.NewEvent(&decision.Decision{Input: in}, decision.Completion{}) }, true},
		{"configured mask", withPaths, func() *decision.Event { return decision.NewEvent(&decision.Decision{Input: in}, decision.Completion{}) }, false},
		{"policy mask", m, func() *decision.Event {
			return decision.NewEvent(&decision.Decision{Input: in, Result: decision.Result{Mask: []string{"input.request.body.x"}}}, decision.Completion{})
		}, false},
		{"extra fields", m, func() *decision.Event {
			return decision.NewEvent(&decision.Decision{Input: &decision.Input{Extra: map[string]any{"parsed_body": map[string]any{}}}}, decision.Completion{})
		}, false},
		{"input already built", m, func() *decision.Event {
			ev := decision.NewEvent(&decision.Decision{Input: in}, decision.Completion{})
			ev.InputMap()
			return ev
		}, false},
	} {
		if got := c.m.directInput(c.ev()); got != c.want {
			t.Errorf("%s: direct = %v, want %v", c.name, got, c.want)
		}
	}
}

func FuzzEncodeDirect(f *testing.F) {
	f.Add("authorization", "x", "password", "1", `{"a":{"token":"t","b":[{"secret":1},2]}}`, `{"roles":["r"]}`, "seg")
	f.Add("X-Vault-Token", "\u2028<", "clientSecret", "", `[{"db_password":null}]`, `{}`, "")
	f.Add("x-custom-key", "\xff", "a/b~c", "v", `"str"`, `{"m":{"x":[]}}`, "%2F")
	f.Add("user-agent", "ua", "page", "2", `{"private_key":{"n":1.5e-7},"ok":1e21}`, `null`, "a")
	f.Add("x-original-uri", "/v1?a=1&client_secret=s;b#token=t", "page", "2", `{}`, `{}`, "v1")
	f.Add("referer", "https://x/?%74oken=t", "q", "", `[]`, `{}`, "")
	f.Fuzz(func(t *testing.T, header, value, param, pvalue, body, claims, seg string) {
		var b, c any
		dec := json.NewDecoder(strings.NewReader(body))
		dec.UseNumber()
		if dec.Decode(&b) != nil {
			b = body
		}
		if json.Unmarshal([]byte(claims), &c) != nil {
			c = nil
		}
		cm, _ := c.(map[string]any)
		in := &decision.Input{
			Request: decision.Request{
				ID: value, Method: "GET", Path: seg, RawPath: seg, Segments: []string{seg},
				Query:   map[string][]string{param: {pvalue}, "q": nil},
				Headers: map[string]string{header: value, "accept": value},
				Body:    b,
			},
			Identity: decision.Identity{Subject: value, Groups: []string{param}, Claims: cm},
			Route:    decision.Route{Name: header, Labels: map[string]string{param: pvalue}},
		}
		m := testMasker(t)
		direct, general := bothPaths(t, m, &decision.Decision{ID: value, Input: in})
		if !bytes.Equal(direct, general) {
			t.Errorf("direct and general encodings differ:\ndirect  %s\ngeneral %s", direct, general)
		}
	})
}
