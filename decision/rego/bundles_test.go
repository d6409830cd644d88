package rego_test

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/decision/rego"
)

// loadBundle reads files as a bundle the way the bundles package does
// (paths relative to the bundle root).
func loadBundle(t *testing.T, files map[string]string) *bundle.Bundle {
	t.Helper()
	dir := bundleDir(t, files)
	b, err := bundle.NewCustomReader(bundle.NewDirectoryLoader(dir)).WithRegoVersion(ast.RegoV1).Read()
	if err != nil {
		t.Fatalf("read bundle: %v", err)
	}
	return &b
}

func TestCompileBundles(t *testing.T) {
	ctx := context.Background()
	gate := loadBundle(t, map[string]string{
		".manifest":        `{"revision": "g1", "roots": ["gate"]}`,
		"gate/policy.rego": "package gate\n\nimport data.roles\n\nallow if input.identity.subject in roles.admins\n",
		// The same file name as in the other bundle: module names must not
		// collide.
		"gate/data.json": `{"mode": "strict"}`,
	})
	roles := loadBundle(t, map[string]string{
		".manifest":        `{"roots": ["roles"]}`,
		"roles/data.json":  `{"admins": ["alice"]}`,
		"gate/policy.rego": "package roles\n\nowners := [\"bob\"]\n",
	})
	set := map[string]*bundle.Bundle{"gate": gate, "roles": roles}
	p, err := rego.CompileBundles(ctx, set, []string{"data.gate.allow", "data.roles.owners", "data.gate.mode"})
	if err != nil {
		t.Fatalf("CompileBundles: %v", err)
	}
	bundles := p.Bundles()
	if bundles["gate"] != "g1" || !strings.HasPrefix(bundles["roles"], "sha256:") || len(bundles) != 2 {
		t.Fatalf("Bundles() = %v: want g1 and a content hash", bundles)
	}
	if want := "gate=g1,roles=" + bundles["roles"]; p.Revision() != want {
		t.Errorf("Revision() = %q, want %q", p.Revision(), want)
	}
	bundles["gate"] = "changed"
	if p.Bundles()["gate"] != "g1" {
		t.Error("Bundles() returned the policy's own map")
	}
	for path, want := range map[string]any{"data.gate.allow": true, "data.roles.owners": []any{"bob"}, "data.gate.mode": "strict"} {
		v, defined, err := p.Eval(ctx, path, &decision.Input{Identity: decision.Identity{Subject: "alice"}})
		if err != nil || !defined || !reflect.DeepEqual(v, want) {
			t.Errorf("Eval(%s) = %v, %v, %v; want %v", path, v, defined, err, want)
		}
	}
	// The bundles are not modified by the merge.
	if _, ok := gate.Data["roles"]; ok {
		t.Error("the merge wrote into a bundle's data")
	}
	// Deterministic: the same set compiles to the same revision.
	again, err := rego.CompileBundles(ctx, set, []string{"data.gate.allow"})
	if err != nil || again.Revision() != p.Revision() {
		t.Fatalf("recompiling: %v, %v", again, err)
	}
	// A single bundle has its own revision.
	one, err := rego.CompileBundles(ctx, map[string]*bundle.Bundle{"gate": loadBundle(t, map[string]string{
		".manifest": `{"revision": "solo", "roots": ["gate"]}`, "gate/p.rego": "package gate\n\nallow := true\n",
	})}, []string{"data.gate.allow"})
	if err != nil || one.Revision() != "solo" {
		t.Fatalf("single bundle: %v, %v", one, err)
	}
}

func TestCompileBundlesErrors(t *testing.T) {
	ctx := context.Background()
	lib := map[string]string{
		".manifest":     `{"roots": ["lib"]}`,
		"lib/lib.rego":  "package lib\n\nis_admin(s) if s == \"alice\"\n",
		"lib/data.json": `{"x": 1}`,
	}
	app := map[string]string{
		".manifest":    `{"roots": ["app"]}`,
		"app/app.rego": "package app\n\nimport data.lib\n\nallow if lib.is_admin(input.identity.subject)\n",
	}
	tests := []struct {
		name  string
		set   map[string]map[string]string
		paths []string
		want  []string
	}{
		{
			name:  "overlapping roots",
			set:   map[string]map[string]string{"a": lib, "b": {".manifest": `{"roots": ["lib/sub"]}`, "lib/sub/p.rego": "package lib.sub\n\nq := 1\n"}},
			paths: nil,
			want:  []string{`bundles "a" and "b"`, "overlapping roots"},
		},
		{
			name: "bundle without manifest roots among others",
			set:  map[string]map[string]string{"a": lib, "b": {"p.rego": "package other\n\nq := 1\n"}},
			want: []string{"overlapping roots"},
		},
		{
			name:  "dependency removed: function import",
			set:   map[string]map[string]string{"app": app, "lib": {".manifest": `{"roots": ["lib"]}`, "lib/data.json": `{}`}},
			paths: []string{"data.app.allow"},
			want:  []string{"lib.is_admin"},
		},
		{
			name: "dependency removed: rule import",
			set: map[string]map[string]string{
				"app": {".manifest": `{"roots": ["app"]}`, "app/app.rego": "package app\n\nimport data.lib.admins\n\nallow if input.identity.subject in admins\n"},
				"lib": {".manifest": `{"roots": ["lib"]}`, "lib/other.rego": "package lib\n\nunrelated := 1\n"},
			},
			paths: []string{"data.app.allow"},
			want:  []string{"import data.lib.admins", "no package, rule or data defines it"},
		},
		{
			name:  "rule path missing from every bundle",
			set:   map[string]map[string]string{"app": app, "lib": lib},
			paths: []string{"data.app.allow", "data.app.nope"},
			want:  []string{"data.app.nope"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := map[string]*bundle.Bundle{}
			for name, files := range tt.set {
				set[name] = loadBundle(t, files)
			}
			_, err := rego.CompileBundles(ctx, set, tt.paths)
			if err == nil {
				t.Fatal("CompileBundles succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			// Deterministic: the same error every time.
			for i := 0; i < 5; i++ {
				if _, again := rego.CompileBundles(ctx, set, tt.paths); again == nil || again.Error() != err.Error() {
					t.Fatalf("error changed between runs: %v / %v", err, again)
				}
			}
		})
	}
	if _, err := rego.CompileBundles(ctx, nil, nil); err == nil {
		t.Error("an empty set compiled")
	}
	// The same modules and data with the library present compile.
	if _, err := rego.CompileBundles(ctx, map[string]*bundle.Bundle{"app": loadBundle(t, app), "lib": loadBundle(t, lib)}, []string{"data.app.allow"}); err != nil {
		t.Fatalf("app with lib: %v", err)
	}
}

// TestImportCheckInDirectories: policy.dir gets the same import check, and
// imports of data documents, packages above rules and rules resolve.
func TestImportCheckInDirectories(t *testing.T) {
	ctx := context.Background()
	ok := bundleDir(t, map[string]string{
		"a/a.rego":        "package a\n\nimport data.roles\nimport data.lib\nimport data.lib.deep.f\nimport data.roles.admins.list\n\nallow if f(1)\n",
		"lib/deep/f.rego": "package lib.deep\n\nf(x) if x == 1\n",
		"roles/data.json": `{"admins": {"list": [1]}}`,
	})
	if _, err := rego.LoadDir(ctx, ok, "main", []string{"data.a.allow"}); err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	bad := bundleDir(t, map[string]string{"a/a.rego": "package a\n\nimport data.gone\n\nallow if gone.x\n"})
	if _, err := rego.LoadDir(ctx, bad, "main", []string{"data.a.allow"}); err == nil || !strings.Contains(err.Error(), "import data.gone") {
		t.Fatalf("LoadDir with a dangling import = %v", err)
	}
}
