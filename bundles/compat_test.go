package bundles_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/compile"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/policygate/policygate/bundles"
)

// opaBuild builds dir the way `opa build -b DIR [--signing-key KEY]
// --revision R` does, with OPA's compile package (there is no opa binary
// here; this is the code behind it) with --ignore '*_test.rego'.
func opaBuild(t *testing.T, dir, revision string, key *testKey) []byte {
	t.Helper()
	var buf bytes.Buffer
	c := compile.New().
		WithAsBundle(true).
		WithPaths(dir).
		// --ignore '*_test.rego'
		WithFilter(func(_ string, info os.FileInfo, _ int) bool {
			return !info.IsDir() && strings.HasSuffix(info.Name(), "_test.rego")
		}).
		WithRevision(revision).
		WithRegoVersion(ast.RegoV1).
		WithOutput(&buf)
	if key != nil {
		c = c.WithBundleSigningConfig(bundle.NewSigningConfig(key.Private, "RS256", "")).WithBundleVerificationKeyID("default")
	}
	if err := c.Build(context.Background()); err != nil {
		t.Fatalf("opa build: %v", err)
	}
	return buf.Bytes()
}

// TestOPABuiltBundlesLoad: bundles built by `opa build`, signed and
// unsigned, activate in policygate; a signed one is verified.
func TestOPABuiltBundlesLoad(t *testing.T) {
	key := newTestKey(t)
	dir := writeTree(t, t.TempDir(), authzFiles("GET", "HEAD"))
	tests := []struct {
		name    string
		key     *testKey
		signing *bundles.SigningConfig
	}{
		{name: "unsigned"},
		{name: "signed", key: &key, signing: &bundles.SigningConfig{PublicKeyFile: key.Public}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newBundleServer(t)
			srv.publish(opaBuild(t, dir, "opa-"+tt.name, tt.key), etagOf(1))
			act := newActivator()
			src := fastHTTP("authz", srv.bundleURL())
			src.Signing = tt.signing
			startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{src}}, act, nil)
			waitUntil(t, "the opa-built bundle active", act.wake, func() bool { return act.revision("authz") == "opa-"+tt.name })
			if !act.allows(t, "HEAD") || act.allows(t, "POST") {
				t.Fatal("wrong decisions from the opa-built bundle")
			}
		})
	}

	// A signed OPA bundle is rejected without the right key.
	f := filepath.Join(t.TempDir(), "opa.tar.gz")
	if err := os.WriteFile(f, opaBuild(t, dir, "r", &key), 0o644); err != nil {
		t.Fatal(err)
	}
	other := newTestKey(t)
	vc, err := (&bundles.SigningConfig{PublicKeyFile: other.Public}).Verification("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundles.ReadFile(f, 0, vc); err == nil {
		t.Fatal("an OPA bundle signed by another key was accepted")
	}
}

// TestPolicygateBundlesLoadInOPA: bundles built by policygate load in OPA
// the way `opa run -b FILE --verification-key PUB` loads them, and decide
// the same.
func TestPolicygateBundlesLoadInOPA(t *testing.T) {
	key := newTestKey(t)
	tests := []struct {
		name string
		key  *testKey
	}{
		{name: "unsigned"},
		{name: "signed", key: &key},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "authz.tar.gz")
			if err := os.WriteFile(f, buildBundle(t, authzFiles("GET"), "pg-"+tt.name, tt.key), 0o644); err != nil {
				t.Fatal(err)
			}
			l := loader.NewFileLoader().WithRegoVersion(ast.RegoV1)
			if tt.key != nil {
				pub, err := os.ReadFile(tt.key.Public)
				if err != nil {
					t.Fatal(err)
				}
				l = l.WithBundleVerificationConfig(bundle.NewVerificationConfig(
					map[string]*bundle.KeyConfig{"default": {Key: string(pub), Algorithm: "RS256"}}, "default", "", nil))
			}
			b, err := l.AsBundle(f)
			if err != nil {
				t.Fatalf("OPA cannot load the policygate bundle: %v", err)
			}
			if b.Manifest.Revision != "pg-"+tt.name {
				t.Fatalf("OPA sees revision %q", b.Manifest.Revision)
			}
			for method, want := range map[string]bool{"GET": true, "DELETE": false} {
				rs, err := rego.New(
					rego.ParsedBundle("authz", b),
					rego.Query("data.authz.allow"),
					rego.Input(map[string]any{"request": map[string]any{"method": method}}),
				).Eval(context.Background())
				if err != nil || len(rs) != 1 || rs[0].Expressions[0].Value != want {
					t.Fatalf("OPA decides %s: %v, %v; want %v", method, rs, err, want)
				}
			}
			if tt.key != nil {
				// And OPA rejects it when tampered, as policygate does.
				es := readTar(t, mustRead(t, f))
				for i := range es {
					if filepath.Base(es[i].Name) == "data.json" {
						es[i].Body = []byte(`{"authz": {"methods": ["GET", "DELETE"]}}`)
					}
				}
				tf := filepath.Join(t.TempDir(), "tampered.tar.gz")
				if err := os.WriteFile(tf, writeTar(t, es), 0o644); err != nil {
					t.Fatal(err)
				}
				pub, _ := os.ReadFile(tt.key.Public)
				_, err := loader.NewFileLoader().WithRegoVersion(ast.RegoV1).WithBundleVerificationConfig(bundle.NewVerificationConfig(
					map[string]*bundle.KeyConfig{"default": {Key: string(pub), Algorithm: "RS256"}}, "default", "", nil)).AsBundle(tf)
				if err == nil {
					t.Fatal("OPA accepted a tampered policygate bundle")
				}
			}
		})
	}
}

func mustRead(t *testing.T, f string) []byte {
	t.Helper()
	raw, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
