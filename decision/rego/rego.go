// Package rego is the only home of OPA's rego, ast, storage and tester
// packages in policygate. It loads a policy directory in OPA bundle layout,
// or compiles a set of OPA bundles with disjoint roots (CompileBundles),
// compiles it once, prepares one query per configured rule path, and
// evaluates requests against that immutable revision.
//
// It must not import gateway, bundles or xds.
//
// Concurrency: a *Policy is immutable after Load/Compile returns and safe for
// concurrent Eval calls. Activation of a new revision is the Engine's job
// (decision.Engine.Activate), never a mutation of a Policy.
package rego

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path/filepath"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/policygate/policygate/decision"
)

// Policy is one compiled revision of one or more bundles with a prepared
// query per rule path.
type Policy struct {
	bundles  map[string]string // bundle name → revision
	revision string
	queries  map[string]rego.PreparedEvalQuery
	cache    map[string]cacheInfo // per rule path, see analysis.go
}

var _ decision.Policy = (*Policy)(nil)

// skipTests excludes *_test.rego files: tests are run by `policygate test`,
// not served.
func skipTests(_ string, info fs.FileInfo, _ int) bool {
	return !info.IsDir() && strings.HasSuffix(info.Name(), "_test.rego")
}

// LoadDir reads dir as an OPA bundle directory (.rego, data.json/data.yaml,
// optional .manifest) and compiles it with a prepared query for each path.
// name labels the bundle in decision logs.
func LoadDir(ctx context.Context, dir, name string, paths []string) (*Policy, error) {
	b, err := loader.NewFileLoader().WithRegoVersion(ast.RegoV1).WithFilter(skipTests).AsBundle(dir)
	if err != nil {
		return nil, fmt.Errorf("load policy directory %s: %w", dir, err)
	}
	return Compile(ctx, b, name, paths)
}

// Compile compiles b and prepares a query for each rule path ("data.a.b").
// Every path must be defined by at least one rule, so that a typo in the
// configuration fails at start instead of denying every request.
func Compile(ctx context.Context, b *bundle.Bundle, name string, paths []string) (*Policy, error) {
	modules := make(map[string]*ast.Module, len(b.Modules))
	for _, mf := range b.Modules {
		modules[mf.Path] = mf.Parsed
	}
	revision := bundleRevision(b)
	return compile(ctx, modules, b.Data, map[string]string{name: revision}, revision, paths)
}

// bundleRevision is b's manifest revision, or a content hash.
func bundleRevision(b *bundle.Bundle) string {
	if b.Manifest.Revision != "" {
		return b.Manifest.Revision
	}
	return contentRevision(b)
}

// compile compiles modules over data, checks that every data import
// resolves, and prepares a query for each rule path.
func compile(ctx context.Context, modules map[string]*ast.Module, data map[string]any, revisions map[string]string, revision string, paths []string) (*Policy, error) {
	imports := dataImports(modules)
	compiler := ast.NewCompiler()
	compiler.Compile(modules)
	if compiler.Failed() {
		return nil, fmt.Errorf("compile: %w", compiler.Errors)
	}
	if data == nil {
		data = map[string]any{}
	}
	if err := checkImports(compiler, imports, data); err != nil {
		return nil, fmt.Errorf("compile: %w", err)
	}
	// The store is only read after preparation; skipping the write
	// round-trip saves a full copy of the data. Converting the data to AST
	// values once, here, spares every evaluation the conversion of what it
	// reads (the largest cost of a data lookup otherwise).
	store := inmem.NewFromObjectWithOpts(data, inmem.OptRoundTripOnWrite(false), inmem.OptReturnASTValuesOnRead(true))

	p := &Policy{bundles: revisions, revision: revision, queries: make(map[string]rego.PreparedEvalQuery, len(paths)), cache: make(map[string]cacheInfo, len(paths))}
	var errs []error
	for _, path := range paths {
		if _, ok := p.queries[path]; ok {
			continue
		}
		ref, err := ast.ParseRef(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("rule path %s: %w", path, err))
			continue
		}
		if len(compiler.GetRules(ref)) == 0 && !dataDefines(data, ref) {
			errs = append(errs, fmt.Errorf("rule path %s: no rule or data defines it", path))
			continue
		}
		pq, err := rego.New(
			rego.ParsedQuery(ast.NewBody(ast.NewExpr(ast.NewTerm(ref)))),
			rego.Compiler(compiler),
			rego.Store(store),
			rego.StrictBuiltinErrors(true),
		).PrepareForEval(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("rule path %s: %w", path, err))
			continue
		}
		p.queries[path] = pq
		p.cache[path] = analyzeCache(compiler, ref)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

func dataDefines(data map[string]any, ref ast.Ref) bool {
	var cur any = data
	for _, t := range ref[1:] {
		s, ok := t.Value.(ast.String)
		m, isMap := cur.(map[string]any)
		if !ok || !isMap {
			return false
		}
		if cur, ok = m[string(s)]; !ok {
			return false
		}
	}
	return true
}

// contentRevision derives a revision from the bundle's content when the
// manifest names none, so logs and caches still tell revisions apart.
func contentRevision(b *bundle.Bundle) string {
	h := sha256.New()
	mods := make([]bundle.ModuleFile, len(b.Modules))
	copy(mods, b.Modules)
	sort.Slice(mods, func(i, j int) bool { return mods[i].Path < mods[j].Path })
	// Module paths are where the bundle happens to sit on disk (absolute for
	// LoadDir), not content: hashing them would give one policy a different
	// revision on every replica or restored copy.
	for _, m := range mods {
		fmt.Fprintf(h, "%d\x00", len(m.Raw))
		h.Write(m.Raw)
	}
	if b.Data != nil {
		h.Write(util.MustMarshalJSON(b.Data)) // encoding/json sorts map keys
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))[:16]
}

// Revision is the bundle's manifest revision, or a content hash. A policy
// compiled from several bundles joins theirs: "a=r1,b=r2", sorted by name.
func (p *Policy) Revision() string { return p.revision }

// Bundles names each bundle with its revision. The map is the caller's.
func (p *Policy) Bundles() map[string]string { return maps.Clone(p.bundles) }

// Eval evaluates the prepared query for path with in as input.
func (p *Policy) Eval(ctx context.Context, path string, in *decision.Input) (any, bool, error) {
	pq, ok := p.queries[path]
	if !ok {
		return nil, false, fmt.Errorf("rule path %s was not prepared", path)
	}
	rs, err := p.eval(ctx, path, pq, in)
	if err != nil {
		return nil, false, err
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return nil, false, nil
	}
	return rs[0].Expressions[0].Value, true, nil
}

// Check loads and compiles dir the way `run` does, for `policygate check`.
func Check(ctx context.Context, dir string, paths []string) error {
	_, err := LoadDir(ctx, dir, filepath.Base(dir), paths)
	return err
}
