package rego_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/decision/rego"
	"github.com/policygate/policygate/testdata/bench/rbac"
)

// The benchmarks evaluate the reference RBAC policy in testdata/bench/rbac
// with the request mix of rbac.Mix (three GETs to one POST). They report
// numbers; nothing here asserts a duration.

const rbacDir = "../../testdata/bench/rbac"

func rbacInputs() []*decision.Input {
	ins := make([]*decision.Input, len(rbac.Mix))
	for i, r := range rbac.Mix {
		ins[i] = rbac.Input(r, fmt.Sprintf("bench-%d", i))
	}
	return ins
}

// compileRBAC compiles the reference policy over generated data.
func compileRBAC(tb testing.TB, roles, accounts int) *rego.Policy {
	tb.Helper()
	src, err := os.ReadFile(filepath.Join(rbacDir, "rbac.rego"))
	if err != nil {
		tb.Fatal(err)
	}
	mod, err := ast.ParseModuleWithOpts("rbac.rego", string(src), ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		tb.Fatal(err)
	}
	b := &bundle.Bundle{
		Manifest: bundle.Manifest{Revision: fmt.Sprintf("bench-%d-%d", roles, accounts)},
		Data:     rbac.Data(roles, accounts),
		Modules:  []bundle.ModuleFile{{Path: "rbac.rego", URL: "rbac.rego", Raw: src, Parsed: mod}},
	}
	p, err := rego.Compile(context.Background(), b, "bench", []string{rbac.RulePath})
	if err != nil {
		tb.Fatalf("compile: %v", err)
	}
	return p
}

// checkMix fails unless p decides every request of the mix as expected, so
// that a benchmark never measures a broken policy.
func checkMix(tb testing.TB, p *rego.Policy, ins []*decision.Input) {
	tb.Helper()
	for i, in := range ins {
		v, defined, err := p.Eval(context.Background(), rbac.RulePath, in)
		if err != nil || !defined {
			tb.Fatalf("%s %s: defined=%v err=%v", rbac.Mix[i].Method, rbac.Mix[i].Path, defined, err)
		}
		res, err := decision.Interpret(v, defined)
		if err != nil || res.Allow != rbac.Mix[i].Allow {
			tb.Fatalf("%s %s: allow=%v (err %v), want %v", rbac.Mix[i].Method, rbac.Mix[i].Path, res.Allow, err, rbac.Mix[i].Allow)
		}
	}
}

func BenchmarkInputValue(b *testing.B) {
	for _, r := range []rbac.Request{rbac.Mix[0], rbac.Mix[3]} {
		in := rbac.Input(r, "bench")
		b.Run(r.Method, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = rego.InputValue(in)
			}
		})
	}
}

func BenchmarkEvalRBAC(b *testing.B) {
	p, err := rego.LoadDir(context.Background(), rbacDir, "rbac", []string{rbac.RulePath})
	if err != nil {
		b.Fatal(err)
	}
	ins := rbacInputs()
	checkMix(b, p, ins)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, _, err := p.Eval(ctx, rbac.RulePath, ins[i%len(ins)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkEvalRBACScale evaluates the same policy and requests as data
// grows: the per-decision cost should stay flat because every lookup is by
// key. heap-MiB is the heap in use with the compiled policy loaded.
func BenchmarkEvalRBACScale(b *testing.B) {
	sizes := []struct{ roles, accounts int }{
		{10, 0}, {100, 0}, {1000, 0}, {10000, 0}, {50, 100000},
	}
	for _, sz := range sizes {
		b.Run(fmt.Sprintf("roles=%d/accounts=%d", sz.roles, sz.accounts), func(b *testing.B) {
			p := compileRBAC(b, sz.roles, sz.accounts)
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			ins := rbacInputs()
			checkMix(b, p, ins)
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, _, err := p.Eval(ctx, rbac.RulePath, ins[i%len(ins)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
			runtime.KeepAlive(p)
		})
	}
}
