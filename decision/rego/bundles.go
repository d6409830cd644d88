package rego

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
)

// CompileBundles compiles a set of bundles (name → bundle) into one policy
// revision, the way OPA serves several bundles at once: each bundle owns the
// roots its manifest declares, roots of different bundles must not overlap,
// and each bundle's data is mounted under its own roots. Modules are named
// "<bundle>/<path>" so equal file names in different bundles never collide.
//
// The result is deterministic in the set's content: bundles are merged in
// name order and a data conflict is reported at the first conflicting path
// in key order. Bundles() names every bundle with its manifest revision, or a
// content hash when the manifest has none. Every rule path must be defined,
// as for Compile, and every data import must resolve, so that a bundle that
// drops a package another module imports fails here instead of deciding
// with an undefined rule.
//
// The bundles are not modified; the policy shares their data read-only.
func CompileBundles(ctx context.Context, set map[string]*bundle.Bundle, paths []string) (*Policy, error) {
	if len(set) == 0 {
		return nil, errors.New("compile bundles: no bundles")
	}
	names := make([]string, 0, len(set))
	for name, b := range set {
		if b == nil {
			return nil, fmt.Errorf("compile bundles: bundle %q is nil", name)
		}
		names = append(names, name)
	}
	slices.Sort(names)
	if err := checkRoots(names, set); err != nil {
		return nil, fmt.Errorf("compile bundles: %w", err)
	}

	modules := map[string]*ast.Module{}
	data := map[string]any{}
	revisions := make(map[string]string, len(set))
	joined := make([]string, 0, len(set))
	for _, name := range names {
		b := set[name]
		for _, mf := range b.Modules {
			if mf.Parsed == nil {
				return nil, fmt.Errorf("compile bundles: bundle %q: module %s is not parsed", name, mf.Path)
			}
			key := name + "/" + strings.TrimPrefix(mf.Path, "/")
			if _, dup := modules[key]; dup {
				return nil, fmt.Errorf("compile bundles: bundle %q: module %s appears twice", name, mf.Path)
			}
			modules[key] = mf.Parsed
		}
		var err error
		if data, err = mergeData(data, b.Data, nil); err != nil {
			return nil, fmt.Errorf("compile bundles: bundle %q: %w", name, err)
		}
		rev := bundleRevision(b)
		revisions[name] = rev
		joined = append(joined, name+"="+rev)
	}
	revision := strings.Join(joined, ",")
	if len(names) == 1 {
		revision = revisions[names[0]]
	}
	return compile(ctx, modules, data, revisions, revision, paths)
}

// checkRoots rejects overlapping roots between bundles, as OPA does when it
// activates several bundles. A bundle without a manifest owns every path
// (root ""), so it can only be served alone.
func checkRoots(names []string, set map[string]*bundle.Bundle) error {
	roots := func(b *bundle.Bundle) []string {
		if b.Manifest.Roots == nil {
			return []string{""}
		}
		return *b.Manifest.Roots
	}
	var errs []error
	for i, a := range names {
		for _, b := range names[i+1:] {
			for _, ra := range roots(set[a]) {
				for _, rb := range roots(set[b]) {
					if bundle.RootPathsOverlap(ra, rb) {
						errs = append(errs, fmt.Errorf("bundles %q and %q have overlapping roots %q and %q", a, b, ra, rb))
					}
				}
			}
		}
	}
	return errors.Join(errs...)
}

// mergeData returns dst with src merged into it. Objects merge key by key;
// any other value present in both is a conflict. dst's maps are copied
// before they change, so the bundles' own data is never written.
func mergeData(dst, src map[string]any, at []string) (map[string]any, error) {
	if len(src) == 0 {
		return dst, nil
	}
	out := make(map[string]any, len(dst)+len(src))
	for k, v := range dst {
		out[k] = v
	}
	for _, k := range sortedKeys(src) {
		sv := src[k]
		dv, exists := out[k]
		if !exists {
			out[k] = sv
			continue
		}
		dm, dok := dv.(map[string]any)
		sm, sok := sv.(map[string]any)
		path := append(slices.Clone(at), k)
		if !dok || !sok {
			return nil, fmt.Errorf("data conflict at data.%s", strings.Join(path, "."))
		}
		merged, err := mergeData(dm, sm, path)
		if err != nil {
			return nil, err
		}
		out[k] = merged
	}
	return out, nil
}

// dataImport is one `import data.…` of a module, taken before compilation
// (the compiler resolves imports and drops them).
type dataImport struct {
	module string
	loc    string
	ref    ast.Ref
}

// dataImports lists the data imports of modules, in module name order.
func dataImports(modules map[string]*ast.Module) []dataImport {
	var out []dataImport
	for _, name := range sortedKeys(modules) {
		for _, imp := range modules[name].Imports {
			ref, ok := imp.Path.Value.(ast.Ref)
			if !ok || !ref.HasPrefix(ast.DefaultRootRef) || len(ref) < 2 {
				continue
			}
			loc := name
			if imp.Location != nil {
				loc = imp.Location.String()
			}
			out = append(out, dataImport{module: name, loc: loc, ref: ref.Copy()})
		}
	}
	return out
}

// checkImports reports every data import that neither a rule, a package
// nor the data defines. OPA accepts such imports (the document is simply
// undefined), which turns a bundle that dropped a library into policies
// that quietly evaluate to undefined.
func checkImports(compiler *ast.Compiler, imports []dataImport, data map[string]any) error {
	var pkgs []ast.Ref
	for _, m := range compiler.Modules {
		pkgs = append(pkgs, m.Package.Path)
	}
	var errs []error
	for _, imp := range imports {
		if !importResolves(compiler, pkgs, data, imp.ref) {
			errs = append(errs, fmt.Errorf("%s: import %s: no package, rule or data defines it", imp.loc, imp.ref))
		}
	}
	return errors.Join(errs...)
}

func importResolves(compiler *ast.Compiler, pkgs []ast.Ref, data map[string]any, ref ast.Ref) bool {
	if len(compiler.GetRules(ref)) > 0 || len(compiler.GetRulesWithPrefix(ref)) > 0 {
		return true
	}
	for _, p := range pkgs {
		if p.HasPrefix(ref) {
			return true
		}
	}
	return dataResolves(data, ref)
}

// dataResolves reports whether data defines ref or a scalar or array on the
// way to it (whose members are only known at evaluation).
func dataResolves(data map[string]any, ref ast.Ref) bool {
	var cur any = data
	for _, t := range ref[1:] {
		m, isMap := cur.(map[string]any)
		if !isMap {
			return true
		}
		s, ok := t.Value.(ast.String)
		if !ok {
			return false
		}
		if cur, ok = m[string(s)]; !ok {
			return false
		}
	}
	return true
}
