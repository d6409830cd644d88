package rego

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/policygate/policygate/decision"
)

// InputValue builds the input document directly as an OPA value, without a
// JSON encode/decode round trip.
func InputValue(in *decision.Input) ast.Value {
	r := &in.Request
	id := &in.Identity
	request := ast.NewObject(
		item("id", ast.String(r.ID)),
		item("method", ast.String(r.Method)),
		item("scheme", ast.String(r.Scheme)),
		item("host", ast.String(r.Host)),
		item("path", ast.String(r.Path)),
		item("raw_path", ast.String(r.RawPath)),
		item("segments", stringArray(r.Segments)),
		item("query", queryObject(r.Query)),
		item("headers", stringObject(r.Headers)),
		item("body", jsonValue(r.Body)),
		item("body_truncated", ast.Boolean(r.BodyTruncated)),
		item("remote_addr", ast.String(r.RemoteAddr)),
	)
	identity := ast.NewObject(
		item("authenticated", ast.Boolean(id.Authenticated)),
		item("method", ast.String(id.Method)),
		item("subject", ast.String(id.Subject)),
		item("issuer", ast.String(id.Issuer)),
		item("spiffe_id", ast.String(id.SpiffeID)),
		item("key_id", ast.String(id.KeyID)),
		item("groups", stringArray(id.Groups)),
		item("claims", jsonValue(mapOrEmpty(id.Claims))),
	)
	route := ast.NewObject(
		item("name", ast.String(in.Route.Name)),
		item("labels", stringObject(in.Route.Labels)),
	)
	obj := ast.NewObject(
		[2]*ast.Term{ast.StringTerm("request"), ast.NewTerm(request)},
		[2]*ast.Term{ast.StringTerm("identity"), ast.NewTerm(identity)},
		[2]*ast.Term{ast.StringTerm("route"), ast.NewTerm(route)},
	)
	for _, k := range sortedKeys(in.Extra) {
		if k == "request" || k == "identity" || k == "route" {
			continue
		}
		obj.Insert(ast.StringTerm(k), ast.NewTerm(jsonValue(in.Extra[k])))
	}
	return obj
}

func item(k string, v ast.Value) [2]*ast.Term {
	return [2]*ast.Term{ast.StringTerm(k), ast.NewTerm(v)}
}

func mapOrEmpty(m map[string]any) any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

func stringArray(ss []string) ast.Value {
	terms := make([]*ast.Term, len(ss))
	for i, s := range ss {
		terms[i] = ast.StringTerm(s)
	}
	return ast.NewArray(terms...)
}

func stringObject(m map[string]string) ast.Value {
	obj := ast.NewObject()
	for _, k := range sortedKeys(m) {
		obj.Insert(ast.StringTerm(k), ast.StringTerm(m[k]))
	}
	return obj
}

func queryObject(q map[string][]string) ast.Value {
	obj := ast.NewObject()
	for _, k := range sortedKeys(q) {
		obj.Insert(ast.StringTerm(k), ast.NewTerm(stringArray(q[k])))
	}
	return obj
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// jsonValue converts a JSON-shaped Go value (as produced by encoding/json)
// into an OPA value. Values of other types fall back to OPA's reflection-
// based conversion.
func jsonValue(v any) ast.Value {
	switch t := v.(type) {
	case nil:
		return ast.Null{}
	case bool:
		return ast.Boolean(t)
	case string:
		return ast.String(t)
	case json.Number:
		return ast.Number(t)
	case float64:
		return ast.FloatNumberTerm(t).Value
	case int:
		return ast.IntNumberTerm(t).Value
	case int64:
		return ast.Number(fmt.Sprint(t))
	case []any:
		terms := make([]*ast.Term, len(t))
		for i, x := range t {
			terms[i] = ast.NewTerm(jsonValue(x))
		}
		return ast.NewArray(terms...)
	case []string:
		return stringArray(t)
	case map[string]any:
		obj := ast.NewObject()
		for _, k := range sortedKeys(t) {
			obj.Insert(ast.StringTerm(k), ast.NewTerm(jsonValue(t[k])))
		}
		return obj
	case map[string]string:
		return stringObject(t)
	default:
		val, err := ast.InterfaceToValue(t)
		if err != nil {
			return ast.Null{}
		}
		return val
	}
}
