package decision_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/policygate/policygate/decision"
)

func TestInterpret(t *testing.T) {
	tests := []struct {
		name    string
		v       any
		defined bool
		want    decision.Result // Raw is not compared
		wantErr bool
	}{
		{name: "undefined", v: nil, defined: false, want: decision.Result{Outcome: decision.OutcomeUndefined}},
		{name: "undefined ignores value", v: true, defined: false, want: decision.Result{Outcome: decision.OutcomeUndefined}},
		{name: "true", v: true, defined: true, want: decision.Result{Allow: true, Outcome: decision.OutcomeAllow}},
		{name: "false", v: false, defined: true, want: decision.Result{Outcome: decision.OutcomeDeny}},
		{name: "null", v: nil, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "string", v: "true", defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "number", v: json.Number("1"), defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "array", v: []any{true}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "empty object denies", v: map[string]any{}, defined: true, want: decision.Result{Outcome: decision.OutcomeDeny}},
		{
			name: "allow object", defined: true,
			v: map[string]any{
				"allow":            true,
				"reason":           "admin",
				"headers":          map[string]any{"x-gateway-subject": "alice"},
				"remove_headers":   []any{"x-debug"},
				"response_headers": map[string]any{"cache-control": "no-store"},
				"mask":             []any{"input.request.body.ssn"},
				"labels":           map[string]any{"team": "iam", "n": json.Number("3")},
				"unknown_field":    "kept in Raw",
			},
			want: decision.Result{
				Allow: true, Outcome: decision.OutcomeAllow, Reason: "admin",
				Headers:         map[string]string{"X-Gateway-Subject": "alice"},
				RemoveHeaders:   []string{"X-Debug"},
				ResponseHeaders: map[string]string{"Cache-Control": "no-store"},
				Mask:            []string{"input.request.body.ssn"},
				Labels:          map[string]string{"team": "iam", "n": "3"},
			},
		},
		{name: "allowed alias", v: map[string]any{"allowed": true}, defined: true, want: decision.Result{Allow: true, Outcome: decision.OutcomeAllow}},
		{name: "allowed false", v: map[string]any{"allowed": false}, defined: true, want: decision.Result{Outcome: decision.OutcomeDeny}},
		{
			name: "deny with status", defined: true,
			v:    map[string]any{"allow": false, "status": json.Number("429"), "reason": "slow_down"},
			want: decision.Result{Outcome: decision.OutcomeDeny, Status: 429, Reason: "slow_down"},
		},
		{name: "status as float64", v: map[string]any{"allow": false, "status": float64(451)}, defined: true, want: decision.Result{Outcome: decision.OutcomeDeny, Status: 451}},
		{name: "remove_headers as set object", v: map[string]any{"allow": true, "remove_headers": map[string]any{"x-b": true, "x-a": true}}, defined: true,
			want: decision.Result{Allow: true, Outcome: decision.OutcomeAllow, RemoveHeaders: []string{"X-A", "X-B"}}},

		// Malformed documents are errors and never allow, even with allow: true.
		{name: "allow string", v: map[string]any{"allow": "yes"}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "allowed number", v: map[string]any{"allowed": json.Number("1")}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "reason not string", v: map[string]any{"allow": true, "reason": json.Number("1")}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "status 200", v: map[string]any{"allow": true, "status": json.Number("200")}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "status 302", v: map[string]any{"allow": false, "status": json.Number("302")}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "status 600", v: map[string]any{"allow": false, "status": json.Number("600")}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "status string", v: map[string]any{"allow": false, "status": "403"}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "status fraction", v: map[string]any{"allow": false, "status": json.Number("403.5")}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "headers not object", v: map[string]any{"allow": true, "headers": []any{"x"}}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "header value number", v: map[string]any{"allow": true, "headers": map[string]any{"x-n": json.Number("1")}}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "header value object", v: map[string]any{"allow": true, "headers": map[string]any{"x-n": map[string]any{}}}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "header value CRLF", v: map[string]any{"allow": true, "headers": map[string]any{"x-a": "v\r\nx-injected: 1"}}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "header value LF", v: map[string]any{"allow": true, "headers": map[string]any{"x-a": "v\nx"}}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "header value NUL", v: map[string]any{"allow": true, "headers": map[string]any{"x-a": "v\x00"}}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "header name with colon", v: map[string]any{"allow": true, "headers": map[string]any{"x-a: b": "v"}}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "header name with CRLF", v: map[string]any{"allow": true, "headers": map[string]any{"x-a\r\nx-b": "v"}}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "header name empty", v: map[string]any{"allow": true, "headers": map[string]any{"": "v"}}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "response header CRLF", v: map[string]any{"allow": false, "response_headers": map[string]any{"retry-after": "1\r\nset-cookie: x"}}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "remove_headers string", v: map[string]any{"allow": true, "remove_headers": "x-debug"}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "remove_headers with number", v: map[string]any{"allow": true, "remove_headers": []any{"x-a", json.Number("1")}}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "mask not list", v: map[string]any{"allow": true, "mask": "input.request.body"}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
		{name: "labels not object", v: map[string]any{"allow": true, "labels": []any{"a"}}, defined: true, want: decision.Result{Outcome: decision.OutcomeError}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decision.Interpret(tt.v, tt.defined)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Interpret error = %v, want error %v", err, tt.wantErr)
			}
			if got.Allow && got.Outcome != decision.OutcomeAllow {
				t.Fatalf("Allow set with outcome %q", got.Outcome)
			}
			if tt.defined && !reflect.DeepEqual(got.Raw, tt.v) {
				t.Errorf("Raw = %#v, want the policy's value %#v", got.Raw, tt.v)
			}
			got.Raw = nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Interpret(%#v) =\n  %+v\nwant\n  %+v", tt.v, got, tt.want)
			}
		})
	}
}

func TestResultCodeAndStatus(t *testing.T) {
	tests := []struct {
		name   string
		res    decision.Result
		code   string
		status int
	}{
		{name: "allow", res: decision.Result{Allow: true, Outcome: decision.OutcomeAllow}, code: "", status: 200},
		{name: "deny default", res: decision.Result{Outcome: decision.OutcomeDeny}, code: "forbidden", status: 403},
		{name: "deny with policy status", res: decision.Result{Outcome: decision.OutcomeDeny, Status: 429}, code: "forbidden", status: 429},
		{name: "deny with 404", res: decision.Result{Outcome: decision.OutcomeDeny, Status: 404}, code: "forbidden", status: 404},
		{name: "undefined", res: decision.Result{Outcome: decision.OutcomeUndefined}, code: "no_decision", status: 403},
		{name: "error", res: decision.Result{Outcome: decision.OutcomeError}, code: "policy_error", status: 503},
		{name: "error ignores status", res: decision.Result{Outcome: decision.OutcomeError, Status: 418}, code: "policy_error", status: 503},
		{name: "timeout", res: decision.Result{Outcome: decision.OutcomeTimeout}, code: "policy_timeout", status: 503},
		{name: "not ready", res: decision.Result{Outcome: decision.OutcomeNotReady}, code: "not_ready", status: 503},
		{name: "zero result denies", res: decision.Result{}, code: "forbidden", status: 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.res.Code(); got != tt.code {
				t.Errorf("Code() = %q, want %q", got, tt.code)
			}
			if got := tt.res.HTTPStatus(); got != tt.status {
				t.Errorf("HTTPStatus() = %d, want %d", got, tt.status)
			}
		})
	}
}
