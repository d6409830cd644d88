package decision_test

import (
	"context"
	"testing"

	"github.com/policygate/policygate/decision"
)

// A panic inside the policy engine (OPA panics on some numbers it cannot
// compare) is an evaluation error that denies, never a crash: ext_authz's
// gRPC handler does not recover panics, and the request still needs its
// decision event.
func TestEvaluationPanicDenies(t *testing.T) {
	p := &fakePolicy{eval: func(context.Context, string, *decision.Input) (any, bool, error) {
		panic("illegal value")
	}}
	e := decision.NewEngine(decision.Config{Timeout: evalTimeout})
	e.Activate(p)
	d := e.Decide(context.Background(), "data.x.allow", &decision.Input{Identity: decision.Anonymous()})
	if d.Result.Allow || d.Result.Outcome != decision.OutcomeError || d.Err == nil {
		t.Fatalf("result %+v err %v, want an evaluation error", d.Result, d.Err)
	}
	if got := d.Result.HTTPStatus(); got != 503 {
		t.Fatalf("status %d, want 503", got)
	}
}
