package rego

import (
	"context"
	"fmt"
	"testing"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/testdata/bench/rbac"
)

// BenchmarkEvalSteps takes the evaluation of the reference RBAC policy
// apart: OPA's defaults with the whole input, then each saving eval adds.
// (The store's AST values apply to all of them: they are part of the
// compiled policy.)
func BenchmarkEvalSteps(b *testing.B) {
	p, err := LoadDir(context.Background(), "../../testdata/bench/rbac", "rbac", []string{rbac.RulePath})
	if err != nil {
		b.Fatal(err)
	}
	pq := p.queries[rbac.RulePath]
	plan := p.cache[rbac.RulePath].input
	ins := make([]*decision.Input, len(rbac.Mix))
	for i, r := range rbac.Mix {
		ins[i] = rbac.Input(r, fmt.Sprint(i))
	}
	steps := []struct {
		name string
		eval func(ctx context.Context, in *decision.Input) (rego.ResultSet, error)
	}{
		{"whole input, OPA defaults", func(ctx context.Context, in *decision.Input) (rego.ResultSet, error) {
			return pq.Eval(ctx, rego.EvalParsedInput(InputValue(in)))
		}},
		{"whole input, no OPA metrics, no cancel goroutine", func(ctx context.Context, in *decision.Input) (rego.ResultSet, error) {
			c := topdown.NewCancel()
			stop := context.AfterFunc(ctx, c.Cancel)
			defer stop()
			return pq.Eval(ctx, noMetrics, rego.EvalExternalCancel(c), rego.EvalParsedInput(InputValue(in)))
		}},
		{"selected input (as served)", func(ctx context.Context, in *decision.Input) (rego.ResultSet, error) {
			c := topdown.NewCancel()
			stop := context.AfterFunc(ctx, c.Cancel)
			defer stop()
			return pq.Eval(ctx, noMetrics, rego.EvalExternalCancel(c), rego.EvalParsedInput(plan.build(in)))
		}},
	}
	for _, st := range steps {
		b.Run(st.name, func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if rs, err := st.eval(ctx, ins[i%len(ins)]); err != nil || len(rs) != 1 {
					b.Fatalf("eval: %v, %d results", err, len(rs))
				}
				i++
			}
		})
	}
}
