package rego

import (
	"slices"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/policygate/policygate/decision"
)

// cacheInfo is what a prepared rule path's decision can depend on; see
// decision.CachePolicy.
type cacheInfo struct {
	fields        [][]string // what the cache key covers besides the identity
	deterministic bool
	input         *inputPlan // the part of the input evaluation builds
}

// alsoNondeterministic are builtins whose result depends on more than their
// arguments, listed here whether or not OPA marks them Nondeterministic:
// the clock and the network must never be cached by default even if a
// future OPA drops the flag, and certificate verification reads the clock
// without it.
var alsoNondeterministic = map[string]bool{
	"http.send":   true,
	"time.now_ns": true,
	"crypto.x509.parse_and_verify_certificates":              true,
	"crypto.x509.parse_and_verify_certificates_with_options": true,
}

// analyzeCache works out, at compile time, which input fields the rule at
// path can read and whether its value is a function of those fields, the
// identity and the revision alone. It walks every rule the path can reach
// (and every rule or function those reach, transitively, using the
// compiler's own rule lookup, which over-approximates refs with variables)
// and collects the refs rooted at input. A ref counts up to its first
// non-string term: input.request.headers[k] reads all headers, input[k] the
// whole input, and the value a local variable takes from input.request is
// covered because input.request is. Over-approximation only makes caching
// coarser; it never shares a decision that could differ.
//
// The rule is non-deterministic when it reaches a builtin OPA marks
// Nondeterministic (time.now_ns, http.send, rand.intn, uuid.rfc4122,
// net.lookup_ip_addr, opa.runtime, io.jwt.decode_verify, ...), a builtin
// not known to OPA, or anything that may read input.request.id (which is
// unique per request and never part of a cache key): the id itself, the
// whole input.request, or the whole input.
//
// The same reads (identity and request.id included) select the part of the
// input each evaluation builds; see selection.
func analyzeCache(c *ast.Compiler, path ast.Ref) cacheInfo {
	a := &analyzer{compiler: c, seen: map[*ast.Rule]bool{}, deterministic: true}
	a.ref(path)
	reads := normalizeFields(a.reads)
	var key [][]string
	for _, f := range reads {
		// The identity is written whole into every key; the request id
		// never is (a rule that reads it is not deterministic).
		if len(f) > 0 && f[0] == "identity" || len(f) > 1 && f[0] == "request" && f[1] == "id" {
			continue
		}
		key = append(key, f)
	}
	return cacheInfo{fields: key, deterministic: a.deterministic, input: newInputPlan(newSelection(reads))}
}

type analyzer struct {
	compiler      *ast.Compiler
	seen          map[*ast.Rule]bool
	reads         [][]string
	deterministic bool
}

func (a *analyzer) rule(r *ast.Rule) {
	if a.seen[r] {
		return
	}
	a.seen[r] = true
	ast.NewGenericVisitor(func(x any) bool {
		switch t := x.(type) {
		case ast.Ref:
			a.ref(t)
		case *ast.Expr:
			if t.IsCall() {
				a.call(t.Operator())
			}
		case ast.Call:
			if len(t) > 0 {
				if op, ok := t[0].Value.(ast.Ref); ok {
					a.call(op)
				}
			}
		}
		return false // keep walking: refs nest inside refs and calls
	}).Walk(r) // the head, the body and every else branch
}

func (a *analyzer) ref(ref ast.Ref) {
	switch {
	case ref.HasPrefix(ast.InputRootRef):
		a.input(ref)
	case ref.HasPrefix(ast.DefaultRootRef):
		for _, r := range a.compiler.GetRulesDynamicWithOpts(ref, ast.RulesOptions{IncludeHiddenModules: true}) {
			a.rule(r)
		}
	}
}

func (a *analyzer) input(ref ast.Ref) {
	var field []string
	for _, t := range ref[1:] {
		s, ok := t.Value.(ast.String)
		if !ok {
			break
		}
		field = append(field, string(s))
	}
	if len(field) == 0 || field[0] == "request" && (len(field) == 1 || field[1] == "id") {
		a.deterministic = false
	}
	a.reads = append(a.reads, field)
}

func (a *analyzer) call(op ast.Ref) {
	if op.HasPrefix(ast.DefaultRootRef) {
		return // a function: its rules are walked as a ref
	}
	name := op.String()
	b, known := ast.BuiltinMap[name]
	if !known || b.Nondeterministic || alsoNondeterministic[name] {
		a.deterministic = false
	}
}

// normalizeFields sorts fields and drops any covered by a shorter one, so
// that equal policies give equal keys and nothing is hashed twice. The
// whole input (an empty path) covers everything.
func normalizeFields(fields [][]string) [][]string {
	slices.SortFunc(fields, slices.Compare[[]string])
	out := make([][]string, 0, len(fields))
	for _, f := range fields {
		if n := len(out); n > 0 && hasPrefix(f, out[n-1]) {
			continue
		}
		out = append(out, f)
	}
	return slices.Clip(out)
}

func hasPrefix(s, prefix []string) bool {
	return len(s) >= len(prefix) && slices.Equal(s[:len(prefix)], prefix)
}

// CacheInfo implements decision.CachePolicy. An unknown path reads the
// whole input and is not deterministic.
func (p *Policy) CacheInfo(path string) (fields [][]string, deterministic bool) {
	ci, ok := p.cache[path]
	if !ok {
		return [][]string{{}}, false
	}
	return ci.fields, ci.deterministic
}

var _ decision.CachePolicy = (*Policy)(nil)
