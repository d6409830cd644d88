package rego_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/decision/rego"
)

// writeDir writes files (slash-separated relative path → content) into dir.
func writeDir(t *testing.T, dir string, files map[string]string) string {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func bundleDir(t *testing.T, files map[string]string) string {
	t.Helper()
	return writeDir(t, t.TempDir(), files)
}

const gatePolicy = `package gate

import data.roles

default allow := false

allow if input.identity.subject in roles.admins

decision := {"allow": allow, "reason": "checked", "status": 403}

never if input.request.method == "NEVER"
`

func gateFiles() map[string]string {
	return map[string]string{
		"gate/policy.rego":     gatePolicy,
		"roles/data.json":      `{"admins": ["alice"]}`,
		"roles/team/data.json": `{"lead": "bob"}`,
	}
}

func TestLoadDirDataUnderSubdir(t *testing.T) {
	dir := bundleDir(t, gateFiles())
	p, err := rego.LoadDir(context.Background(), dir, "main", []string{"data.gate.allow", "data.roles.admins", "data.roles.team.lead"})
	if err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	tests := []struct {
		path    string
		subject string
		want    any
	}{
		{path: "data.gate.allow", subject: "alice", want: true},
		{path: "data.gate.allow", subject: "mallory", want: false},
		{path: "data.roles.admins", want: []any{"alice"}},
		{path: "data.roles.team.lead", want: "bob"},
	}
	for _, tt := range tests {
		t.Run(tt.path+"/"+tt.subject, func(t *testing.T) {
			in := &decision.Input{Identity: decision.Identity{Subject: tt.subject}}
			v, defined, err := p.Eval(context.Background(), tt.path, in)
			if err != nil || !defined || !reflect.DeepEqual(v, tt.want) {
				t.Fatalf("Eval(%s) = %#v, %v, %v; want %#v", tt.path, v, defined, err, tt.want)
			}
		})
	}
}

func TestLoadDirRevision(t *testing.T) {
	ctx := context.Background()
	paths := []string{"data.gate.allow"}
	load := func(t *testing.T, dir string) *rego.Policy {
		t.Helper()
		p, err := rego.LoadDir(ctx, dir, "main", paths)
		if err != nil {
			t.Fatalf("LoadDir: %v", err)
		}
		return p
	}

	t.Run("manifest", func(t *testing.T) {
		files := gateFiles()
		files[".manifest"] = `{"revision": "v42"}`
		p := load(t, bundleDir(t, files))
		if p.Revision() != "v42" {
			t.Fatalf("Revision() = %q, want the manifest's v42", p.Revision())
		}
		if got := p.Bundles(); !reflect.DeepEqual(got, map[string]string{"main": "v42"}) {
			t.Fatalf("Bundles() = %v", got)
		}
	})

	t.Run("content hash", func(t *testing.T) {
		dir := bundleDir(t, gateFiles())
		base := load(t, dir).Revision()
		if !strings.HasPrefix(base, "sha256:") {
			t.Fatalf("Revision() = %q, want a content hash", base)
		}
		if again := load(t, dir).Revision(); again != base {
			t.Errorf("reloading the same directory: revision %q, then %q", base, again)
		}
		// The same content elsewhere (another replica, a restored copy) is
		// the same revision.
		if elsewhere := load(t, bundleDir(t, gateFiles())).Revision(); elsewhere != base {
			t.Errorf("same content in another directory: revision %q, want %q", elsewhere, base)
		}

		changed := []struct {
			name string
			edit func(map[string]string)
		}{
			{name: "policy edited", edit: func(f map[string]string) {
				f["gate/policy.rego"] = strings.Replace(gatePolicy, `"checked"`, `"checked2"`, 1)
			}},
			{name: "data edited", edit: func(f map[string]string) { f["roles/data.json"] = `{"admins": ["alice", "eve"]}` }},
			{name: "module added", edit: func(f map[string]string) { f["extra.rego"] = "package extra\n\nx := 1\n" }},
		}
		for _, c := range changed {
			t.Run(c.name, func(t *testing.T) {
				files := gateFiles()
				c.edit(files)
				if rev := load(t, bundleDir(t, files)).Revision(); rev == base || !strings.HasPrefix(rev, "sha256:") {
					t.Fatalf("revision %q after a change, base %q: want a different content hash", rev, base)
				}
			})
		}
	})
}

func TestLoadDirExcludesTests(t *testing.T) {
	dir := bundleDir(t, map[string]string{
		"p.rego": "package p\n\nallow := true\n",
		// Served, this file would define data.p.test_allow and
		// data.p.only_in_tests.
		"p_test.rego": "package p\n\ntest_allow if allow\n\nonly_in_tests := true\n",
	})
	ctx := context.Background()
	if _, err := rego.LoadDir(ctx, dir, "main", []string{"data.p.allow"}); err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	for _, path := range []string{"data.p.test_allow", "data.p.only_in_tests"} {
		t.Run(path, func(t *testing.T) {
			_, err := rego.LoadDir(ctx, dir, "main", []string{path})
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Fatalf("LoadDir with a rule only a _test.rego file defines = %v, want an error naming %s", err, path)
			}
		})
	}
}

func TestLoadDirErrors(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		paths []string
		want  []string // substrings of the error
	}{
		{
			name:  "compile error",
			files: map[string]string{"p.rego": "package p\n\nallow := true\n\nbad if {\n\tx == 1\n}\n"},
			paths: []string{"data.p.allow"},
			want:  []string{"p.rego:6", "x is unsafe"},
		},
		{
			name:  "compile error in a subdirectory",
			files: map[string]string{"p.rego": "package p\n\nallow := true\n", "lib/q.rego": "package lib\n\ny := z\n"},
			paths: []string{"data.p.allow"},
			want:  []string{filepath.Join("lib", "q.rego") + ":3"},
		},
		{
			name:  "parse error",
			files: map[string]string{"p.rego": "package p\n\nallow if {\n\tinput.x ==\n"},
			paths: []string{"data.p.allow"},
			want:  []string{"p.rego:", "rego_parse_error"},
		},
		{
			name:  "missing rule",
			files: map[string]string{"p.rego": "package p\n\nallow := true\n"},
			paths: []string{"data.p.allow", "data.p.nope"},
			want:  []string{"data.p.nope", "no rule"},
		},
		{
			name:  "every missing rule reported",
			files: map[string]string{"p.rego": "package p\n\nallow := true\n"},
			paths: []string{"data.p.one", "data.q.two"},
			want:  []string{"data.p.one", "data.q.two"},
		},
		{
			name:  "missing data key",
			files: map[string]string{"p.rego": "package p\n\nallow := true\n", "roles/data.json": `{"admins": []}`},
			paths: []string{"data.roles.owners"},
			want:  []string{"data.roles.owners"},
		},
		{
			name:  "bad data file",
			files: map[string]string{"p.rego": "package p\n\nallow := true\n", "roles/data.json": `{"admins": [`},
			paths: []string{"data.p.allow"},
			want:  []string{"data.json"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := bundleDir(t, tt.files)
			p, err := rego.LoadDir(context.Background(), dir, "main", tt.paths)
			if err == nil {
				t.Fatalf("LoadDir succeeded (revision %s), want an error", p.Revision())
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if cerr := rego.Check(context.Background(), dir, tt.paths); cerr == nil {
				t.Errorf("Check succeeded where LoadDir failed with %v", err)
			}
		})
	}
}

func TestEval(t *testing.T) {
	dir := bundleDir(t, gateFiles())
	p, err := rego.LoadDir(context.Background(), dir, "main", []string{"data.gate.allow", "data.gate.decision", "data.gate.never"})
	if err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	alice := &decision.Input{Request: decision.Request{Method: "GET"}, Identity: decision.Identity{Subject: "alice"}}
	tests := []struct {
		name        string
		path        string
		want        any
		wantDefined bool
		wantErr     bool
	}{
		{name: "boolean", path: "data.gate.allow", want: true, wantDefined: true},
		{name: "object", path: "data.gate.decision", want: map[string]any{"allow": true, "reason": "checked", "status": json.Number("403")}, wantDefined: true},
		{name: "undefined", path: "data.gate.never", wantDefined: false},
		{name: "unprepared path", path: "data.gate.other", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, defined, err := p.Eval(context.Background(), tt.path, alice)
			if (err != nil) != tt.wantErr || defined != tt.wantDefined || !reflect.DeepEqual(v, tt.want) {
				t.Fatalf("Eval(%s) = %#v, %v, %v; want %#v, %v, error %v", tt.path, v, defined, err, tt.want, tt.wantDefined, tt.wantErr)
			}
			if err != nil {
				return
			}
			// The value is one the decision contract can interpret.
			res, ierr := decision.Interpret(v, defined)
			if ierr != nil {
				t.Fatalf("Interpret: %v", ierr)
			}
			if tt.name == "object" && (res.Status != 403 || !res.Allow) {
				t.Errorf("Interpret = %+v", res)
			}
		})
	}
}

func richInput() *decision.Input {
	return &decision.Input{
		Request: decision.Request{
			ID:       "0123abcd",
			Method:   "POST",
			Scheme:   "https",
			Host:     "admin.example.com",
			Path:     "/api/users/ci%2Fbot",
			RawPath:  "/api/users/ci%2fbot",
			Segments: []string{"api", "users", "ci/bot"},
			Query:    map[string][]string{"k": {"b", "a"}, "empty": {}, "one": {"x"}},
			Headers:  map[string]string{"content-type": "application/json", "user-agent": "curl/8"},
			Body: map[string]any{
				"name":    "ci-bot",
				"count":   json.Number("3"),
				"ratio":   json.Number("0.25"),
				"big":     json.Number("12345678901234567890"),
				"neg":     json.Number("-7"),
				"float":   1.5,
				"int":     42,
				"flag":    true,
				"nothing": nil,
				"tags":    []any{"a", json.Number("1"), map[string]any{"deep": []any{false, nil}}},
				"nested":  map[string]any{"roles": []any{"admin", "ops"}, "limits": map[string]any{"rps": json.Number("10")}},
				"strs":    []string{"x", "y"},
				"strmap":  map[string]string{"k": "v"},
				"empty":   map[string]any{},
				"unicode": "é\u2028\"quoted\"\n",
			},
			BodyTruncated: false,
			RemoteAddr:    "10.0.0.1",
		},
		Identity: decision.Identity{
			Authenticated: true,
			Method:        decision.MethodJWT,
			Subject:       "ci-bot",
			Issuer:        "https://issuer.example",
			SpiffeID:      "spiffe://example.org/ci",
			KeyID:         "kid-1",
			Groups:        []string{"admin", "ci"},
			Claims: map[string]any{
				"sub":    "ci-bot",
				"exp":    json.Number("1900000000"),
				"aud":    []any{"gateway"},
				"scopes": []string{"users:write"},
				"ext":    map[string]any{"tier": json.Number("2"), "ok": true},
			},
		},
		Route: decision.Route{Name: "users", Labels: map[string]string{"team": "iam", "env": "prod"}},
	}
}

func TestInputValueMatchesJSON(t *testing.T) {
	tests := []struct {
		name string
		in   *decision.Input
	}{
		{name: "rich", in: richInput()},
		{name: "zero", in: &decision.Input{}},
		{name: "anonymous", in: &decision.Input{Request: decision.Request{Method: "GET", Path: "/"}, Identity: decision.Anonymous()}},
		{name: "array body", in: &decision.Input{Request: decision.Request{Body: []any{json.Number("1"), "two", nil}}}},
		{name: "string body", in: &decision.Input{Request: decision.Request{Body: "raw"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := rego.InputValue(tt.in)

			direct, err := ast.InterfaceToValue(tt.in.Map())
			if err != nil {
				t.Fatal(err)
			}
			// The JSON round trip is what OPA would build from the wire form.
			raw, err := json.Marshal(tt.in.Map())
			if err != nil {
				t.Fatal(err)
			}
			var decoded any
			if err := util.UnmarshalJSON(raw, &decoded); err != nil {
				t.Fatal(err)
			}
			roundTrip, err := ast.InterfaceToValue(decoded)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []struct {
				name string
				v    ast.Value
			}{{"InterfaceToValue(Map())", direct}, {"JSON round trip of Map()", roundTrip}} {
				if got.Compare(want.v) != 0 {
					t.Errorf("InputValue differs from %s:\n got %v\nwant %v", want.name, got, want.v)
				}
			}
		})
	}
}

func TestInputValueSeenByPolicy(t *testing.T) {
	dir := bundleDir(t, map[string]string{"p.rego": `package p

checks := {
	"query": input.request.query.k == ["b", "a"],
	"count": input.request.body.count == 3,
	"big": input.request.body.big == 12345678901234567890,
	"deep": input.request.body.tags[2].deep == [false, null],
	"claims": input.identity.claims.ext.tier == 2,
	"scopes": input.identity.claims.scopes == ["users:write"],
	"segments": input.request.segments == ["api", "users", "ci/bot"],
	"labels": input.route.labels.team == "iam",
}
`})
	p, err := rego.LoadDir(context.Background(), dir, "main", []string{"data.p.checks"})
	if err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	v, defined, err := p.Eval(context.Background(), "data.p.checks", richInput())
	if err != nil || !defined {
		t.Fatalf("Eval = %v, %v, %v", v, defined, err)
	}
	for k, ok := range v.(map[string]any) {
		if ok != true {
			t.Errorf("policy check %s failed on the rich input", k)
		}
	}
}

func TestRunTests(t *testing.T) {
	dir := bundleDir(t, map[string]string{
		"p/p.rego":        "package p\n\nimport data.roles\n\nallow if input.user in roles.admins\n",
		"p/p_test.rego":   "package p_test\n\nimport data.p\n\ntest_admin_allowed if p.allow with input as {\"user\": \"alice\"}\n\ntest_wrong_expectation if p.allow with input as {\"user\": \"mallory\"}\n",
		"roles/data.json": `{"admins": ["alice"]}`,
	})
	var out bytes.Buffer
	sum, err := rego.RunTests(context.Background(), &out, true, dir)
	if err != nil {
		t.Fatalf("RunTests: %v", err)
	}
	if sum != (rego.TestSummary{Passed: 1, Failed: 1}) {
		t.Fatalf("summary %+v, want 1 passed, 1 failed\n%s", sum, out.String())
	}
	for _, w := range []string{"test_admin_allowed", "test_wrong_expectation", "FAIL"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("report lacks %q:\n%s", w, out.String())
		}
	}
}

func TestRunTestsErrors(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  rego.TestSummary
	}{
		{name: "all pass", files: map[string]string{"p.rego": "package p\n\nx := 1\n", "p_test.rego": "package p\n\ntest_x if x == 1\n"}, want: rego.TestSummary{Passed: 1}},
		{name: "runtime error", files: map[string]string{"p_test.rego": "package p\n\nf(x) := 1 if x\n\nf(x) := 2 if x\n\ntest_conflict if f(true) == 1\n"}, want: rego.TestSummary{Errored: 1}},
		{name: "skipped", files: map[string]string{"p_test.rego": "package p\n\ntodo_test_later if false\n\ntest_ok if true\n"}, want: rego.TestSummary{Passed: 1, Skipped: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			sum, err := rego.RunTests(context.Background(), &out, false, bundleDir(t, tt.files))
			if err != nil {
				t.Fatalf("RunTests: %v", err)
			}
			if sum != tt.want {
				t.Fatalf("summary %+v, want %+v\n%s", sum, tt.want, out.String())
			}
		})
	}
	t.Run("compile error", func(t *testing.T) {
		dir := bundleDir(t, map[string]string{"p_test.rego": "package p\n\ntest_x if {\n\ty == 1\n}\n"})
		if _, err := rego.RunTests(context.Background(), &bytes.Buffer{}, false, dir); err == nil {
			t.Fatal("RunTests on an uncompilable directory succeeded")
		}
	})
}
