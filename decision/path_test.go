package decision_test

import (
	"strings"
	"testing"

	"github.com/policygate/policygate/decision"
)

func TestRulePath(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string // substring of the error; "" means success
	}{
		{in: "a/b", want: "data.a.b"},
		{in: "/a/b", want: "data.a.b"},
		{in: "/a/b/", want: "data.a.b"},
		{in: "a.b", want: "data.a.b"},
		{in: "data.a.b", want: "data.a.b"},
		{in: "data/a/b", want: "data.a.b"},
		{in: "  rabbitmq/decision  ", want: "data.rabbitmq.decision"},
		{in: "a", want: "data.a"},
		{in: "_x1.Y_2", want: "data._x1.Y_2"},

		{in: "", wantErr: "empty rule path"},
		{in: "   ", wantErr: "empty rule path"},
		{in: "data", wantErr: "names no rule"},
		{in: "/data/", wantErr: "names no rule"},
		{in: "/", wantErr: "not an identifier"},
		{in: "a..b", wantErr: `segment ""`},
		{in: "a//b", wantErr: `segment ""`},
		{in: "a.b.", wantErr: `segment ""`},
		{in: "a-b", wantErr: `segment "a-b"`},
		{in: "1a", wantErr: `segment "1a"`},
		{in: "a/b.c", wantErr: `segment "b.c"`},
		{in: `a["b"]`, wantErr: "not an identifier"},
		{in: "a b", wantErr: `segment "a b"`},
		{in: "é", wantErr: "not an identifier"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := decision.RulePath(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("RulePath(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("RulePath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			if again, err := decision.RulePath(got); err != nil || again != got {
				t.Errorf("RulePath is not idempotent: RulePath(%q) = %q, %v", got, again, err)
			}
		})
	}
}
