package decision_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
)

func TestParseRateLimits(t *testing.T) {
	obj := func(kv ...any) map[string]any {
		m := map[string]any{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name    string
		v       any
		want    []decision.RateLimit
		wantErr string // substring of the error; "" means no error
	}{
		{name: "empty array", v: []any{}, want: nil},
		{
			name: "defaults: burst = limit, cost = 1",
			v:    []any{obj("key", "caller:alice", "limit", json.Number("10"), "period", "1m")},
			want: []decision.RateLimit{{Key: "caller:alice", Limit: 10, Period: time.Minute, Burst: 10, Cost: 1}},
		},
		{
			name: "all fields, json.Number",
			v:    []any{obj("key", "k", "limit", json.Number("5"), "period", "1h", "burst", json.Number("20"), "cost", json.Number("2"))},
			want: []decision.RateLimit{{Key: "k", Limit: 5, Period: time.Hour, Burst: 20, Cost: 2}},
		},
		{
			name: "float64 values and period in seconds",
			v:    []any{obj("key", "k", "limit", float64(3), "period", float64(60), "burst", float64(0), "cost", float64(0))},
			want: []decision.RateLimit{{Key: "k", Limit: 3, Period: time.Minute, Burst: 3, Cost: 1}},
		},
		{
			name: "fractional seconds",
			v:    []any{obj("key", "k", "limit", 1, "period", json.Number("0.5"))},
			want: []decision.RateLimit{{Key: "k", Limit: 1, Period: 500 * time.Millisecond, Burst: 1, Cost: 1}},
		},
		{
			name: "integer written as 10.0",
			v:    []any{obj("key", "k", "limit", json.Number("10.0"), "period", "1s")},
			want: []decision.RateLimit{{Key: "k", Limit: 10, Period: time.Second, Burst: 10, Cost: 1}},
		},
		{
			name: "several limits keep their order",
			v: []any{
				obj("key", "caller:a", "limit", 10, "period", "1m"),
				obj("key", "group:ci", "limit", 8, "period", "1m"),
			},
			want: []decision.RateLimit{
				{Key: "caller:a", Limit: 10, Period: time.Minute, Burst: 10, Cost: 1},
				{Key: "group:ci", Limit: 8, Period: time.Minute, Burst: 8, Cost: 1},
			},
		},

		{name: "not an array", v: obj("key", "k"), wantErr: "rate_limit is map[string]interface {}, want array"},
		{name: "null", v: nil, wantErr: "rate_limit is <nil>"},
		{name: "entry not object", v: []any{"k"}, wantErr: "rate_limit[0]: is string, want object"},
		{name: "missing key", v: []any{obj("limit", 1, "period", "1s")}, wantErr: "rate_limit[0].key: required"},
		{name: "empty key", v: []any{obj("key", "", "limit", 1, "period", "1s")}, wantErr: "rate_limit[0].key: must not be empty"},
		{name: "key not string", v: []any{obj("key", json.Number("1"), "limit", 1, "period", "1s")}, wantErr: "key: is json.Number, want string"},
		{name: "key too long", v: []any{obj("key", strings.Repeat("k", decision.MaxRateLimitKey+1), "limit", 1, "period", "1s")}, wantErr: "key: 513 bytes"},
		{name: "missing limit", v: []any{obj("key", "k", "period", "1s")}, wantErr: "limit: required"},
		{name: "zero limit", v: []any{obj("key", "k", "limit", 0, "period", "1s")}, wantErr: "limit: must be positive"},
		{name: "negative limit", v: []any{obj("key", "k", "limit", -1, "period", "1s")}, wantErr: "limit: -1 is not an integer"},
		{name: "fractional limit", v: []any{obj("key", "k", "limit", json.Number("1.5"), "period", "1s")}, wantErr: "limit: 1.5 is not an integer"},
		{name: "limit as string", v: []any{obj("key", "k", "limit", "10", "period", "1s")}, wantErr: "limit: is string, want number"},
		{name: "limit too large", v: []any{obj("key", "k", "limit", json.Number("1e12"), "period", "1s")}, wantErr: "limit: 1e12 is not an integer in 0..1000000000"},
		{name: "missing period", v: []any{obj("key", "k", "limit", 1)}, wantErr: "period: required"},
		{name: "bad period string", v: []any{obj("key", "k", "limit", 1, "period", "1 minute")}, wantErr: "period: \"1 minute\" is not a duration"},
		{name: "zero period", v: []any{obj("key", "k", "limit", 1, "period", "0s")}, wantErr: "period: 0s must be positive"},
		{name: "negative period seconds", v: []any{obj("key", "k", "limit", 1, "period", -5)}, wantErr: "period: -5 seconds is not in"},
		{name: "sub-millisecond period", v: []any{obj("key", "k", "limit", 1, "period", "500us")}, wantErr: "period: 500µs is not in 1ms"},
		{name: "period not whole ms", v: []any{obj("key", "k", "limit", 1, "period", "1500us")}, wantErr: "not a whole number of milliseconds"},
		{name: "period too long", v: []any{obj("key", "k", "limit", 1, "period", "10000h")}, wantErr: "period: 10000h0m0s is not in"},
		{name: "period bool", v: []any{obj("key", "k", "limit", 1, "period", true)}, wantErr: "period: true (bool) is not a duration string"},
		{name: "negative burst", v: []any{obj("key", "k", "limit", 1, "period", "1s", "burst", -1)}, wantErr: "burst: -1"},
		{name: "negative cost", v: []any{obj("key", "k", "limit", 1, "period", "1s", "cost", -1)}, wantErr: "cost: -1"},
		{name: "cost above burst", v: []any{obj("key", "k", "limit", 5, "period", "1s", "cost", 6)}, wantErr: "cost: 6 exceeds burst 5"},
		{name: "debt overflow", v: []any{obj("key", "k", "limit", 1, "period", "8000h", "burst", 1_000_000_000)}, wantErr: "too long a debt"},
		{name: "unknown field", v: []any{obj("key", "k", "limit", 1, "period", "1s", "burts", 3)}, wantErr: "rate_limit[0].burts: unknown field"},
		{
			name:    "all entries reported",
			v:       []any{obj("key", "", "limit", 1, "period", "1s"), obj("key", "k", "limit", 1, "period", "x")},
			wantErr: "rate_limit[1].period",
		},
		{
			name:    "too many entries",
			v:       func() []any { s := make([]any, decision.MaxRateLimits+1); return s }(),
			wantErr: "has 17 entries, at most 16",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decision.ParseRateLimits(tt.v)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRateLimits error = %v, want one containing %q", err, tt.wantErr)
				}
				if got != nil {
					t.Errorf("ParseRateLimits returned %v with an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRateLimits: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseRateLimits =\n  %+v\nwant\n  %+v", got, tt.want)
			}
		})
	}
}

func TestInterpretRateLimit(t *testing.T) {
	t.Run("parsed into the result", func(t *testing.T) {
		res, err := decision.Interpret(map[string]any{
			"allow":      true,
			"rate_limit": []any{map[string]any{"key": "caller:a", "limit": json.Number("10"), "period": "1m"}},
		}, true)
		if err != nil {
			t.Fatal(err)
		}
		want := []decision.RateLimit{{Key: "caller:a", Limit: 10, Period: time.Minute, Burst: 10, Cost: 1}}
		if !res.Allow || !reflect.DeepEqual(res.RateLimits, want) {
			t.Errorf("Interpret = allow %v, rate limits %+v; want allow, %+v", res.Allow, res.RateLimits, want)
		}
	})
	t.Run("malformed denies even with allow true", func(t *testing.T) {
		res, err := decision.Interpret(map[string]any{
			"allow":      true,
			"rate_limit": []any{map[string]any{"key": "caller:a", "limit": "lots", "period": "1m"}},
		}, true)
		if err == nil {
			t.Fatal("no error for a malformed rate_limit")
		}
		if res.Allow || res.Outcome != decision.OutcomeError || res.HTTPStatus() != 503 {
			t.Errorf("malformed rate_limit gave allow=%v outcome=%q status=%d, want a 503 error", res.Allow, res.Outcome, res.HTTPStatus())
		}
	})
}

func FuzzParseRateLimits(f *testing.F) {
	f.Add(`[{"key":"k","limit":10,"period":"1m"}]`)
	f.Add(`[{"key":"k","limit":1e300,"period":1e-300,"burst":-0,"cost":0.5}]`)
	f.Add(`[{"key":"k","limit":3,"period":"2562047h"}]`)
	f.Fuzz(func(t *testing.T, doc string) {
		dec := json.NewDecoder(strings.NewReader(doc))
		dec.UseNumber()
		var v any
		if dec.Decode(&v) != nil {
			return
		}
		rls, err := decision.ParseRateLimits(v)
		if err != nil {
			return
		}
		for _, rl := range rls {
			if err := rl.Validate(); err != nil {
				t.Fatalf("ParseRateLimits returned an invalid limit %+v: %v", rl, err)
			}
		}
	})
}
