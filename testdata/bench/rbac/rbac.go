// Package rbac generates the data and the requests of the reference RBAC
// policy (rbac.rego in this directory) that policygate's benchmarks
// evaluate: any number of roles and service accounts, and a fixed request
// mix of three GETs to one POST.
//
// It is test support: only benchmarks, tests and the gen command import it.
package rbac

import (
	"fmt"

	"github.com/policygate/policygate/decision"
)

// RulePath is the rule the benchmarks evaluate.
const RulePath = "data.rbac.decision"

var resources = []string{"accounts", "keys", "tokens", "policies", "audit"}

// RoleName is the name of role i, e.g. "role-7".
func RoleName(i int) string { return fmt.Sprintf("role-%d", i) }

// AccountName is the subject of service account i, e.g. "sa-000042".
func AccountName(i int) string { return fmt.Sprintf("sa-%06d", i) }

// Grants are role i's permissions: reads of one resource kind, writes for
// some roles, and updates inside the role's team namespace.
func Grants(i int) []any {
	res := resources[i%len(resources)]
	g := []any{
		grant("GET", "/v1/"+res),
		grant("GET", "/v1/"+res+"/*"),
		grant("PUT", fmt.Sprintf("/v1/%s/team-%d.*", res, i%10)),
	}
	if i%2 == 0 {
		g = append(g, grant("POST", "/v1/"+res))
	}
	if i%3 == 0 {
		g = append(g, grant("DELETE", "/v1/"+res+"/*"))
	}
	return g
}

func grant(method, path string) map[string]any {
	return map[string]any{"method": method, "path": path}
}

// Data is the document mounted at data: {"rbac": {"roles": ..., "service_accounts": ...}}
// with roles role-0 … role-(roles-1) and accounts sa-000000 … Every
// seventh account is suspended.
func Data(roles, accounts int) map[string]any {
	rs := make(map[string]any, roles)
	for i := range roles {
		rs[RoleName(i)] = Grants(i)
	}
	rbac := map[string]any{"roles": rs}
	if accounts > 0 {
		sa := make(map[string]any, accounts)
		for i := range accounts {
			sa[AccountName(i)] = map[string]any{"team": fmt.Sprintf("team-%d", i%10), "suspended": i%7 == 0}
		}
		rbac["service_accounts"] = sa
	}
	return map[string]any{"rbac": rbac}
}

// Caller is the identity of every benchmark request: a JWT-authenticated
// service account holding role-1 (keys), role-2 (tokens, may create) and
// role-3 (policies). Its roles exist in every data size from 10 roles up.
func Caller() decision.Identity {
	return decision.Identity{
		Authenticated: true,
		Method:        decision.MethodJWT,
		Subject:       AccountName(123),
		Issuer:        "https://idp.example.com",
		Groups:        []string{"ci", "team:payments"},
		Claims: map[string]any{
			"iss":   "https://idp.example.com",
			"sub":   AccountName(123),
			"aud":   []any{"policygate"},
			"exp":   float64(1893456000),
			"iat":   float64(1893452400),
			"roles": []any{RoleName(1), RoleName(2), RoleName(3)},
		},
	}
}

// Request describes one request of the mix and the decision it must get.
type Request struct {
	Method, Path string
	Allow        bool
}

// Mix is the request mix, three GETs to one POST: allowed reads of keys
// and policies, a denied read of the audit log, an allowed token creation.
var Mix = []Request{
	{Method: "GET", Path: "/v1/keys/k-42", Allow: true},
	{Method: "GET", Path: "/v1/policies/p-7", Allow: true},
	{Method: "GET", Path: "/v1/audit/e-1", Allow: false},
	{Method: "POST", Path: "/v1/tokens", Allow: true},
}

// Input is the input a gateway builds for r, with the headers, query and
// body of a typical admin client.
func Input(r Request, id string) *decision.Input {
	in := &decision.Input{
		Request: decision.Request{
			ID:       id,
			Method:   r.Method,
			Scheme:   "https",
			Host:     "admin.example.com",
			Path:     r.Path,
			RawPath:  r.Path,
			Segments: segments(r.Path),
			Query:    map[string][]string{"expand": {"owner"}},
			Headers: map[string]string{
				"accept":          "application/json",
				"accept-encoding": "gzip",
				"user-agent":      "terraform-provider-admin/1.9.0",
				"x-request-start": "t=1893452400123",
			},
			RemoteAddr: "10.1.2.3",
		},
		Identity: Caller(),
		Route:    decision.Route{Name: "admin", Labels: map[string]string{"api": "nhi-admin"}},
	}
	if r.Method == "POST" {
		in.Request.Headers["content-type"] = "application/json"
		in.Request.Body = map[string]any{"name": "deploy-token", "ttl_seconds": float64(3600), "scopes": []any{"deploy", "read"}}
	}
	return in
}

func segments(p string) []string {
	var out []string
	start := 1
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			if i > start {
				out = append(out, p[start:i])
			}
			start = i + 1
		}
	}
	return out
}
