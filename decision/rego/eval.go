package rego

import (
	"context"

	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"

	"github.com/policygate/policygate/decision"
)

// noMetrics spares each evaluation OPA's per-query metrics registry: the
// engine times evaluations itself.
var noMetrics = rego.EvalMetrics(metrics.NoOp())

// eval runs pq on the part of in the rule can read. Cancellation (the
// engine's per-evaluation timeout) reaches OPA through a callback on ctx
// instead of the goroutine OPA would otherwise start per evaluation.
func (p *Policy) eval(ctx context.Context, path string, pq rego.PreparedEvalQuery, in *decision.Input) (rego.ResultSet, error) {
	plan := wholeInput
	if ci, ok := p.cache[path]; ok {
		plan = ci.input
	}
	cancel := topdown.NewCancel()
	stop := context.AfterFunc(ctx, cancel.Cancel)
	defer stop()
	return pq.Eval(ctx, noMetrics, rego.EvalExternalCancel(cancel), rego.EvalParsedInput(plan.build(in)))
}
