package ratelimit_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps the package's place in DESIGN.md: the root never
// imports its Redis adapter, and go-redis has exactly one home.
func TestImports(t *testing.T) {
	const (
		module  = "github.com/policygate/policygate"
		goRedis = "github.com/redis/go-redis/"
	)
	goList := func(args ...string) []string {
		t.Helper()
		out, err := exec.Command("go", append([]string{"list", "-e"}, args...)...).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", strings.Join(args, " "), err)
		}
		return strings.Fields(string(out))
	}
	for _, dep := range goList("-deps", ".") {
		// An entry ending in "/" forbids only what is below it: the
		// decision root (RateLimit) is allowed, its internals are not.
		for _, bad := range []string{module + "/gateway/ratelimit/redis", module + "/gateway/proxy", module + "/bundles", module + "/xds", module + "/decision/", goRedis} {
			if dep == bad || strings.HasPrefix(dep, strings.TrimSuffix(bad, "/")+"/") {
				t.Errorf("gateway/ratelimit depends on %s", dep)
			}
		}
	}
	// Which packages of the module import go-redis directly.
	lines, err := exec.Command("go", "list", "-e", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(string(lines), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		for _, imp := range f[1:] {
			if strings.HasPrefix(imp, goRedis) && f[0] != module+"/gateway/ratelimit/redis" {
				t.Errorf("%s imports %s; go-redis belongs to gateway/ratelimit/redis only", f[0], imp)
			}
		}
	}
}
