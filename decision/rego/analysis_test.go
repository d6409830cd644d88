package rego

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/policygate/policygate/decision"
)

func loadModules(t *testing.T, files map[string]string, paths []string) *Policy {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := LoadDir(context.Background(), dir, "main", paths)
	if err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	return p
}

const analysisPolicy = `package a

import data.lib

method if input.request.method == "GET"

header if input.request.headers["x-team"] == "t1"

dyn_header if {
	some k
	input.request.headers[k] == "magic"
}

alias if {
	req := input.request
	req.method == "GET"
}

whole if count(input) > 0

walked if {
	walk(input, [_, v])
	v == "needle"
}

objget if object.get(input.request.body, ["a", "b"], "d") == "x"

objget_input if object.get(input, ["request", "method"], "d") == "GET"

via_fn if lib.label("team") == "iam"

via_else := 1 if {
	input.request.method == "PUT"
} else := 2 if {
	input.route.name == "r"
}

segment if input.request.segments[0] == "admin"

claims if "admin" in input.identity.claims.roles

by_id := input.request.id

clock if time.now_ns() > 0

sends if http.send({"method": "GET", "url": "http://127.0.0.1:1"}).status_code == 200

rolls if rand.intn("k", 10) == 1

ids := uuid.rfc4122("k")

jwt if io.jwt.decode_verify("x", {"secret": "s"})[0]

via_clock_fn if lib.now > 0

data_only := data.a_data.value

extra if input.attributes.request.http.method == "GET"

with_input := x if x := data.a.method with input.request.method as "GET"
`

const analysisLib = `package lib

label(k) := v if v := input.route.labels[k]

now := time.now_ns()
`

func TestCacheInfo(t *testing.T) {
	tests := []struct {
		path          string
		fields        [][]string
		deterministic bool
	}{
		{path: "data.a.method", fields: [][]string{{"request", "method"}}, deterministic: true},
		{path: "data.a.header", fields: [][]string{{"request", "headers", "x-team"}}, deterministic: true},
		{path: "data.a.dyn_header", fields: [][]string{{"request", "headers"}}, deterministic: true},
		{path: "data.a.alias", fields: [][]string{{"request"}}, deterministic: false},
		{path: "data.a.whole", fields: [][]string{{}}, deterministic: false},
		{path: "data.a.walked", fields: [][]string{{}}, deterministic: false},
		{path: "data.a.objget", fields: [][]string{{"request", "body"}}, deterministic: true},
		{path: "data.a.objget_input", fields: [][]string{{}}, deterministic: false},
		{path: "data.a.via_fn", fields: [][]string{{"route", "labels"}}, deterministic: true},
		{path: "data.a.via_else", fields: [][]string{{"request", "method"}, {"route", "name"}}, deterministic: true},
		{path: "data.a.segment", fields: [][]string{{"request", "segments"}}, deterministic: true},
		{path: "data.a.claims", fields: nil, deterministic: true},
		{path: "data.a.by_id", fields: nil, deterministic: false},
		{path: "data.a.clock", fields: nil, deterministic: false},
		{path: "data.a.sends", fields: nil, deterministic: false},
		{path: "data.a.rolls", fields: nil, deterministic: false},
		{path: "data.a.ids", fields: nil, deterministic: false},
		{path: "data.a.jwt", fields: nil, deterministic: false},
		{path: "data.a.via_clock_fn", fields: nil, deterministic: false},
		{path: "data.a_data.value", fields: nil, deterministic: true},
		{path: "data.a.extra", fields: [][]string{{"attributes", "request", "http", "method"}}, deterministic: true},
		{path: "data.a.with_input", fields: [][]string{{"request", "method"}}, deterministic: true},
		{path: "data.a", fields: [][]string{{}}, deterministic: false},
	}
	var paths []string
	for _, tt := range tests {
		paths = append(paths, tt.path)
	}
	p := loadModules(t, map[string]string{
		"a.rego":           analysisPolicy,
		"lib.rego":         analysisLib,
		"a_data/data.json": `{"value": 1}`,
	}, paths)
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			fields, det := p.CacheInfo(tt.path)
			// %q prints nil and empty paths alike: both mean the whole input.
			if fmt.Sprintf("%q", fields) != fmt.Sprintf("%q", tt.fields) || det != tt.deterministic {
				t.Fatalf("CacheInfo = %q, %v; want %q, %v", fields, det, tt.fields, tt.deterministic)
			}
		})
	}
	if fields, det := p.CacheInfo("data.a.unprepared"); det || !reflect.DeepEqual(fields, [][]string{{}}) {
		t.Errorf("unprepared path: CacheInfo = %q, %v; want the whole input, not deterministic", fields, det)
	}
}

// The differential tests evaluate rules on the part of the input their
// analysis selected and on the whole input, over many generated requests,
// and require the same answer every time: the selection must never hide
// anything a rule reads.

const trickyPolicy = `package tricky

default alias := false
alias if {
	req := input.request
	req.headers["x-a"] == "1"
}

default dyn := false
dyn if {
	some k
	input.request.headers[k] == "magic"
}

default walked := false
walked if {
	walk(input, [_, v])
	v == "needle"
}

objget := object.get(input.request.body, ["a", "b"], "dflt")

fn(x) := y if y := input.route.labels[x]

default via_fn := "none"
via_fn := fn("team")

inner := input.request.method

with_mod := v if v := inner with input.request.method as "PUT"

default every_seg := false
every_seg if every s in input.request.segments { s != "forbidden" }

query_keys := {k | some k, _ in input.request.query}

default not_read := false
not_read if not input.request.headers["x-danger"]

default extra := false
extra if input.attributes.request.http.method == "GET"

default claims_nested := false
claims_nested if input.identity.claims.nested.deep == 1

claim_count := count(input.identity.claims)

keys := object.keys(input.request)

body_a := input.request.body.a

decision := {
	"alias": alias, "dyn": dyn, "walked": walked, "objget": objget,
	"via_fn": via_fn, "with_mod": with_mod, "every_seg": every_seg,
	"query_keys": query_keys, "not_read": not_read, "extra": extra,
	"claims_nested": claims_nested, "claim_count": claim_count,
	"keys": keys, "body_a": object.get({"v": body_a}, "v", null),
}
`

func genInput(r *rand.Rand) *decision.Input {
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	some := func(xs ...string) []string {
		var out []string
		for _, x := range xs {
			if r.IntN(2) == 0 {
				out = append(out, x)
			}
		}
		return out
	}
	segs := []string{pick("api", "admin", "public", "internal", "v1")}
	for range r.IntN(4) {
		segs = append(segs, pick("users", "permissions", "vhosts", "/", "payments-bot", "accounts", "keys", "payments.svc", "forbidden", "queues", "ci-app"))
	}
	headers := map[string]string{}
	for _, h := range some("x-a", "x-danger", "user-agent", "x-team", "content-type") {
		headers[h] = pick("1", "magic", "curl", "application/json", "t1")
	}
	query := map[string][]string{}
	for _, k := range some("team", "page", "dry_run") {
		query[k] = some("payments", "true", "2")
	}
	var body any
	switch r.IntN(4) {
	case 1:
		body = map[string]any{"a": map[string]any{"b": pick("x", "y")}, "tags": []any{pick("administrator", "")}, "password": "p", "ttl_seconds": json.Number(pick("60", "90000"))}
	case 2:
		body = map[string]any{"configure": pick("", "^payments\\.", ".*"), "write": "^x$", "read": ".*", "name": pick("payments-a", "root")}
	case 3:
		body = "needle"
	}
	groups := some("security-admin", "auditors", "ci", "team:payments", "platform-admin", "auditor", "team-lead", "admin", "team:ops")
	claims := map[string]any{"roles": []any{pick("role-1", "role-2", "admin")}}
	if r.IntN(2) == 0 {
		claims["nested"] = map[string]any{"deep": json.Number(pick("1", "2"))}
	}
	in := &decision.Input{
		Request: decision.Request{
			ID: fmt.Sprintf("id-%d", r.Int()), Method: pick("GET", "PUT", "POST", "DELETE", "HEAD", "PATCH"),
			Scheme: "https", Host: "h", Path: "/" + strings.Join(segs, "/"), RawPath: "/" + strings.Join(segs, "/"),
			Segments: segs, Query: query, Headers: headers, Body: body, BodyTruncated: r.IntN(8) == 0,
			RemoteAddr: pick("10.0.0.1", "10.0.0.2"),
		},
		Identity: decision.Identity{
			Authenticated: r.IntN(4) != 0, Method: pick("api_key", "jwt", "none"),
			Subject: pick("alice", "ci-payments", "sa-000123"), Groups: groups, Claims: claims,
		},
		Route: decision.Route{Name: pick("rabbitmq", "sampleapi"), Labels: map[string]string{"team": pick("iam", "ops")}},
	}
	if r.IntN(3) == 0 {
		in.Extra = map[string]any{
			"attributes":  map[string]any{"request": map[string]any{"http": map[string]any{"method": in.Request.Method}}},
			"parsed_path": []any{segs[0]},
		}
	}
	return in
}

func TestSelectedInputDecidesLikeWholeInput(t *testing.T) {
	root := "../.."
	tests := []struct {
		name  string
		dir   string
		files map[string]string
		paths []string
	}{
		{name: "tricky", files: map[string]string{"t.rego": trickyPolicy}, paths: []string{"data.tricky.decision"}},
		{name: "analysis", files: map[string]string{"a.rego": analysisPolicy, "lib.rego": analysisLib, "a_data/data.json": `{"value": 1}`},
			paths: []string{"data.a.alias", "data.a.dyn_header", "data.a.objget", "data.a.via_fn", "data.a.via_else", "data.a.segment", "data.a.claims", "data.a.extra", "data.a.with_input"}},
		{name: "shipped", dir: filepath.Join(root, "policies"), paths: []string{"data.rabbitmq.decision", "data.sampleapi.decision"}},
		{name: "security suite", dir: filepath.Join(root, "testdata/security/policy"), paths: []string{"data.faults.decision"}},
		{name: "extauthz", dir: filepath.Join(root, "testdata/extauthz/policy"), paths: []string{"data.envoy.authz.result"}},
		{name: "bench rbac", dir: filepath.Join(root, "testdata/bench/rbac"), paths: []string{"data.rbac.decision"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p *Policy
			if tt.dir != "" {
				var err error
				if p, err = LoadDir(context.Background(), tt.dir, "main", tt.paths); err != nil {
					t.Fatalf("LoadDir: %v", err)
				}
			} else {
				p = loadModules(t, tt.files, tt.paths)
			}
			r := rand.New(rand.NewPCG(1, 2))
			for i := range 300 {
				in := genInput(r)
				for _, path := range tt.paths {
					got, gotDef, gotErr := p.Eval(context.Background(), path, in)
					rs, wantErr := p.queries[path].Eval(context.Background(), rego.EvalParsedInput(InputValue(in)))
					var want any
					wantDef := len(rs) > 0
					if wantDef {
						want = rs[0].Expressions[0].Value
					}
					if gotDef != wantDef || (gotErr == nil) != (wantErr == nil) || !reflect.DeepEqual(got, want) {
						t.Fatalf("input %d, %s: selected input gives %v (defined %v, err %v); whole input gives %v (defined %v, err %v)\ninput: %+v",
							i, path, got, gotDef, gotErr, want, wantDef, wantErr, in)
					}
				}
			}
		})
	}
}

func TestInputValueIncludesExtra(t *testing.T) {
	in := &decision.Input{
		Request: decision.Request{Method: "GET"},
		Extra: map[string]any{
			"attributes": map[string]any{"request": map[string]any{"http": map[string]any{"method": "GET"}}},
			"request":    "must not replace the contract's request",
		},
	}
	got := InputValue(in)
	want, err := ast.InterfaceToValue(in.Map())
	if err != nil {
		t.Fatal(err)
	}
	if got.Compare(want) != 0 {
		t.Fatalf("InputValue = %v, want %v", got, want)
	}
}
