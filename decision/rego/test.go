package rego

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"
)

// TestSummary counts the outcome of a policy test run.
type TestSummary struct {
	Passed, Failed, Errored, Skipped int
}

// RunTests runs every test_ rule found in the bundle directories with OPA's
// own tester and reports each result to w. Each directory is loaded as a
// bundle, so data.json under a/b is found at data.a.b as when serving.
func RunTests(ctx context.Context, w io.Writer, verbose bool, dirs ...string) (TestSummary, error) {
	var sum TestSummary
	bundles, store, err := tester.LoadBundlesWithParserOptions(dirs, nil,
		ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true})
	if err != nil {
		return sum, fmt.Errorf("load %v: %w", dirs, err)
	}
	runner := tester.NewRunner().
		SetBundles(bundles).
		SetTimeout(10 * time.Second).
		CapturePrintOutput(true)
	if store == nil {
		store = inmem.NewWithOpts(inmem.OptRoundTripOnWrite(false))
	}
	txn, err := store.NewTransaction(ctx, storage.WriteParams)
	if err != nil {
		return sum, fmt.Errorf("run tests: %w", err)
	}
	defer store.Abort(ctx, txn)
	ch, err := runner.SetStore(store).RunTests(ctx, txn)
	if err != nil {
		return sum, fmt.Errorf("run tests: %w", err)
	}
	results := make([]*tester.Result, 0, 64)
	for r := range ch {
		results = append(results, r)
	}
	sort.Slice(results, func(i, j int) bool { // stable output
		if results[i].Package != results[j].Package {
			return results[i].Package < results[j].Package
		}
		return results[i].Name < results[j].Name
	})
	for _, r := range results {
		switch {
		case r.Skip:
			sum.Skipped++
		case r.Error != nil:
			sum.Errored++
		case r.Fail:
			sum.Failed++
		default:
			sum.Passed++
		}
	}
	rep := tester.PrettyReporter{Output: w, Verbose: verbose}
	out := make(chan *tester.Result, len(results))
	for _, r := range results {
		out <- r
	}
	close(out)
	if err := rep.Report(out); err != nil {
		return sum, fmt.Errorf("report: %w", err)
	}
	return sum, nil
}
