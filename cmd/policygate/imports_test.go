package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const (
	modulePath = "github.com/policygate/policygate"
	opaModule  = "github.com/open-policy-agent/opa"
)

// goList runs the go command in the module root and returns its output
// lines.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.Fields(string(out))
}

// goListRaw runs the go command like goList and returns its output lines.
func goListRaw(t *testing.T, args ...string) []string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %s: %v", strings.Join(args, " "), err)
	}
	return strings.Split(string(out), "\n")
}

// importRule forbids packages to depend on others. A forbidden entry ending
// in "/" names only the subpackages below it; any other entry names that
// package and its subpackages.
type importRule struct {
	name      string
	pkgs      func(pkg string) bool
	forbidden []string
	required  bool // the packages exist today; finding none means the test is broken
}

func under(dir string) func(string) bool {
	p := modulePath + "/" + dir
	return func(pkg string) bool { return pkg == p || strings.HasPrefix(pkg, p+"/") }
}

func forbids(dep, f string) bool {
	if strings.HasSuffix(f, "/") {
		return strings.HasPrefix(dep, f)
	}
	return dep == f || strings.HasPrefix(dep, f+"/")
}

// TestImportDirection keeps the import direction of DESIGN.md true for the
// packages' non-test dependencies (transitive, as go list -deps reports).
func TestImportDirection(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go command not available")
	}
	m := func(p string) string { return modulePath + "/" + p }
	pkgs := goList(t, "-e", "./...")
	deps := map[string][]string{}
	for _, pkg := range pkgs {
		deps[pkg] = goList(t, "-e", "-deps", "-f", "{{.ImportPath}}", pkg)
	}

	// The check must be able to see OPA at all, or every rule below would
	// pass vacuously.
	for _, pkg := range []string{m("decision/rego"), m("cmd/policygate")} {
		found := false
		for _, d := range deps[pkg] {
			found = found || forbids(d, opaModule)
		}
		if !found {
			t.Fatalf("go list -deps %s shows no OPA package; the import check is blind", pkg)
		}
	}

	rules := []importRule{
		{
			name:      "decision root",
			pkgs:      func(p string) bool { return p == modulePath+"/decision" },
			forbidden: []string{"net/http", m("gateway"), m("bundles"), m("xds"), opaModule, m("decision") + "/"},
			required:  true,
		},
		{
			name:      "gateway",
			pkgs:      under("gateway"),
			forbidden: []string{m("decision") + "/", m("bundles"), m("xds"), opaModule},
			required:  true,
		},
		{
			name:      "bundles",
			pkgs:      under("bundles"),
			forbidden: []string{m("decision") + "/", m("gateway"), m("xds")},
		},
		{
			name:      "xds",
			pkgs:      under("xds"),
			forbidden: []string{m("decision"), m("bundles"), m("gateway/proxy")},
		},
		{
			// bundles reads, verifies and signs bundles with OPA's bundle
			// package (which depends on OPA's ast); evaluation stays in
			// decision/rego, see the direct-import rule below.
			name: "OPA only in decision/rego and bundles",
			pkgs: func(p string) bool {
				return p != m("decision/rego") && p != m("cmd/policygate") && !under("bundles")(p)
			},
			forbidden: []string{opaModule},
			required:  true,
		},
	}
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			var checked []string
			for _, pkg := range pkgs {
				if !r.pkgs(pkg) {
					continue
				}
				checked = append(checked, pkg)
				bad := map[string]bool{}
				for _, d := range deps[pkg] {
					if d == pkg {
						continue
					}
					for _, f := range r.forbidden {
						if forbids(d, f) {
							bad[d] = true
						}
					}
				}
				if len(bad) > 0 {
					list := make([]string, 0, len(bad))
					for d := range bad {
						list = append(list, d)
					}
					sort.Strings(list)
					t.Errorf("%s depends on %s", pkg, strings.Join(list, ", "))
				}
			}
			if len(checked) == 0 {
				if r.required {
					t.Fatalf("no package matched rule %q: the package list is wrong", r.name)
				}
				t.Skipf("no Go packages for %s yet", r.name)
			}
		})
	}

	// Evaluation has one home: only decision/rego imports OPA's rego and
	// topdown packages directly.
	t.Run("rego and topdown only in decision/rego", func(t *testing.T) {
		for _, line := range goListRaw(t, "-e", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "./...") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] == m("decision/rego") {
				continue
			}
			for _, imp := range f[1:] {
				if imp == opaModule+"/v1/rego" || strings.HasPrefix(imp, opaModule+"/v1/topdown") {
					t.Errorf("%s imports %s", f[0], imp)
				}
			}
		}
	})
}
