package rego

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/policygate/policygate/decision"
)

// InputValue builds the whole input document directly as an OPA value,
// without a JSON encode/decode round trip: request, identity, route and the
// front door's extra fields (Input.Extra).
func InputValue(in *decision.Input) ast.Value {
	return wholeInput.build(in)
}

// A selection is the part of the input a rule can read (see
// analyzeCache): a tree of field names whose leaves take the whole value
// below them. Evaluating a rule on the selected part gives the same result
// as on the whole input, because the rule never looks elsewhere; building
// only that part is most of what an evaluation saves on input.
type selection struct {
	all      bool
	children map[string]*selection
}

// newSelection builds the selection of fields (paths below input; an empty
// path selects everything).
func newSelection(fields [][]string) *selection {
	root := &selection{}
	for _, f := range fields {
		n := root
		for _, k := range f {
			if n.all {
				break
			}
			if n.children == nil {
				n.children = map[string]*selection{}
			}
			c := n.children[k]
			if c == nil {
				c = &selection{}
				n.children[k] = c
			}
			n = c
		}
		n.all, n.children = true, nil
	}
	return root
}

// child is the selection below key k, or nil when nothing there is read.
func (s *selection) child(k string) *selection {
	if s.all {
		return s
	}
	return s.children[k]
}

// inputPlan is a selection compiled against the input's Go structs, so that
// building the input walks a slice instead of looking up names.
type inputPlan struct {
	request  []fieldPlan[decision.Request]
	identity []fieldPlan[decision.Identity]
	route    []fieldPlan[decision.Route]
	sections int // how many of the three are read
	// extra selects the front door's extra top-level fields
	// (Input.Extra); extraAll takes all of them.
	extra    map[string]*selection
	extraAll bool
}

type fieldPlan[T any] struct {
	field *structField[T]
	sel   *selection
}

// structField is one field of an input section: its key and how to build
// its value from the Go struct, reading only sel below it.
type structField[T any] struct {
	key   *ast.Term
	value func(t *T, sel *selection) *ast.Term
}

// The tables list every field of the input contract once; both the whole
// input and every selection are built from them.
var (
	keyRequest  = ast.StringTerm("request")
	keyIdentity = ast.StringTerm("identity")
	keyRoute    = ast.StringTerm("route")

	requestFields = map[string]*structField[decision.Request]{
		"id":             {ast.StringTerm("id"), func(r *decision.Request, _ *selection) *ast.Term { return ast.StringTerm(r.ID) }},
		"method":         {ast.StringTerm("method"), func(r *decision.Request, _ *selection) *ast.Term { return ast.InternedTerm(r.Method) }},
		"scheme":         {ast.StringTerm("scheme"), func(r *decision.Request, _ *selection) *ast.Term { return ast.InternedTerm(r.Scheme) }},
		"host":           {ast.StringTerm("host"), func(r *decision.Request, _ *selection) *ast.Term { return ast.StringTerm(r.Host) }},
		"path":           {ast.StringTerm("path"), func(r *decision.Request, _ *selection) *ast.Term { return ast.StringTerm(r.Path) }},
		"raw_path":       {ast.StringTerm("raw_path"), func(r *decision.Request, _ *selection) *ast.Term { return ast.StringTerm(r.RawPath) }},
		"segments":       {ast.StringTerm("segments"), func(r *decision.Request, _ *selection) *ast.Term { return stringArray(r.Segments) }},
		"query":          {ast.StringTerm("query"), func(r *decision.Request, s *selection) *ast.Term { return queryObject(r.Query, s) }},
		"headers":        {ast.StringTerm("headers"), func(r *decision.Request, s *selection) *ast.Term { return stringObject(r.Headers, s) }},
		"body":           {ast.StringTerm("body"), func(r *decision.Request, s *selection) *ast.Term { return jsonTerm(r.Body, s) }},
		"body_truncated": {ast.StringTerm("body_truncated"), func(r *decision.Request, _ *selection) *ast.Term { return ast.InternedTerm(r.BodyTruncated) }},
		"remote_addr":    {ast.StringTerm("remote_addr"), func(r *decision.Request, _ *selection) *ast.Term { return ast.StringTerm(r.RemoteAddr) }},
	}
	identityFields = map[string]*structField[decision.Identity]{
		"authenticated": {ast.StringTerm("authenticated"), func(id *decision.Identity, _ *selection) *ast.Term { return ast.InternedTerm(id.Authenticated) }},
		"method":        {ast.StringTerm("method"), func(id *decision.Identity, _ *selection) *ast.Term { return ast.InternedTerm(id.Method) }},
		"subject":       {ast.StringTerm("subject"), func(id *decision.Identity, _ *selection) *ast.Term { return ast.StringTerm(id.Subject) }},
		"issuer":        {ast.StringTerm("issuer"), func(id *decision.Identity, _ *selection) *ast.Term { return ast.StringTerm(id.Issuer) }},
		"spiffe_id":     {ast.StringTerm("spiffe_id"), func(id *decision.Identity, _ *selection) *ast.Term { return ast.StringTerm(id.SpiffeID) }},
		"key_id":        {ast.StringTerm("key_id"), func(id *decision.Identity, _ *selection) *ast.Term { return ast.StringTerm(id.KeyID) }},
		"groups":        {ast.StringTerm("groups"), func(id *decision.Identity, _ *selection) *ast.Term { return stringArray(id.Groups) }},
		"claims":        {ast.StringTerm("claims"), func(id *decision.Identity, s *selection) *ast.Term { return jsonTerm(mapOrEmpty(id.Claims), s) }},
	}
	routeFields = map[string]*structField[decision.Route]{
		"name":   {ast.StringTerm("name"), func(rt *decision.Route, _ *selection) *ast.Term { return ast.StringTerm(rt.Name) }},
		"labels": {ast.StringTerm("labels"), func(rt *decision.Route, s *selection) *ast.Term { return stringObject(rt.Labels, s) }},
	}

	allSelected = &selection{all: true}
	wholeInput  = newInputPlan(allSelected)
)

// newInputPlan compiles sel. Top-level names other than request, identity
// and route are the front door's extra fields (Input.Extra). A name the
// contract does not have inside request, identity or route selects the
// whole section, so that a field added to the contract later but not to
// these tables can never be left out of what a policy sees.
func newInputPlan(sel *selection) *inputPlan {
	p := &inputPlan{extraAll: sel.all}
	for k, c := range sel.children {
		if !reservedKey(k) {
			if p.extra == nil {
				p.extra = map[string]*selection{}
			}
			p.extra[k] = c
		}
	}
	if s := sel.child("request"); s != nil {
		p.request = planFields(requestFields, s)
		p.sections++
	}
	if s := sel.child("identity"); s != nil {
		p.identity = planFields(identityFields, s)
		p.sections++
	}
	if s := sel.child("route"); s != nil {
		p.route = planFields(routeFields, s)
		p.sections++
	}
	return p
}

func planFields[T any](table map[string]*structField[T], sel *selection) []fieldPlan[T] {
	if !sel.all {
		for k := range sel.children {
			if table[k] == nil {
				sel = allSelected
				break
			}
		}
	}
	var out []fieldPlan[T]
	for _, name := range slices.Sorted(maps.Keys(table)) {
		if s := sel.child(name); s != nil {
			out = append(out, fieldPlan[T]{field: table[name], sel: s})
		}
	}
	return out
}

func reservedKey(k string) bool { return k == "request" || k == "identity" || k == "route" }

// build returns the input restricted to the plan's selection. Sections
// that are not read are left out entirely.
func (p *inputPlan) build(in *decision.Input) ast.Value {
	obj := ast.NewObjectWithCapacity(p.sections)
	switch {
	case p.extraAll:
		for k, v := range in.Extra {
			if !reservedKey(k) { // extra fields never replace the contract's
				obj.Insert(ast.StringTerm(k), jsonTerm(v, allSelected))
			}
		}
	case p.extra != nil:
		for k, s := range p.extra {
			if v, ok := in.Extra[k]; ok {
				obj.Insert(ast.StringTerm(k), jsonTerm(v, s))
			}
		}
	}
	if p.request != nil {
		obj.Insert(keyRequest, section(&in.Request, p.request))
	}
	if p.identity != nil {
		obj.Insert(keyIdentity, section(&in.Identity, p.identity))
	}
	if p.route != nil {
		obj.Insert(keyRoute, section(&in.Route, p.route))
	}
	return obj
}

func section[T any](v *T, fields []fieldPlan[T]) *ast.Term {
	obj := ast.NewObjectWithCapacity(len(fields))
	for _, f := range fields {
		obj.Insert(f.field.key, f.field.value(v, f.sel))
	}
	return ast.NewTerm(obj)
}

func mapOrEmpty(m map[string]any) any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

func stringArray(ss []string) *ast.Term {
	terms := make([]*ast.Term, len(ss))
	for i, s := range ss {
		terms[i] = ast.StringTerm(s)
	}
	return ast.NewTerm(ast.NewArray(terms...))
}

// stringObject builds a string map, only the keys sel reads.
func stringObject(m map[string]string, sel *selection) *ast.Term {
	if !sel.all {
		obj := ast.NewObjectWithCapacity(len(sel.children))
		for k := range sel.children {
			if v, ok := m[k]; ok {
				obj.Insert(ast.StringTerm(k), ast.StringTerm(v))
			}
		}
		return ast.NewTerm(obj)
	}
	obj := ast.NewObjectWithCapacity(len(m))
	for k, v := range m {
		obj.Insert(ast.StringTerm(k), ast.StringTerm(v))
	}
	return ast.NewTerm(obj)
}

func queryObject(q map[string][]string, sel *selection) *ast.Term {
	if !sel.all {
		obj := ast.NewObjectWithCapacity(len(sel.children))
		for k := range sel.children {
			if v, ok := q[k]; ok {
				obj.Insert(ast.StringTerm(k), stringArray(v))
			}
		}
		return ast.NewTerm(obj)
	}
	obj := ast.NewObjectWithCapacity(len(q))
	for k, v := range q {
		obj.Insert(ast.StringTerm(k), stringArray(v))
	}
	return ast.NewTerm(obj)
}

// jsonTerm converts a JSON-shaped Go value (as produced by encoding/json)
// into an OPA term, descending into objects only along sel. Values of other
// types fall back to OPA's reflection-based conversion.
func jsonTerm(v any, sel *selection) *ast.Term {
	if !sel.all {
		switch t := v.(type) {
		case map[string]any:
			obj := ast.NewObjectWithCapacity(len(sel.children))
			for k, c := range sel.children {
				if x, ok := t[k]; ok {
					obj.Insert(ast.StringTerm(k), jsonTerm(x, c))
				}
			}
			return ast.NewTerm(obj)
		case map[string]string:
			return stringObject(t, sel)
		}
		// Anything else is read whole below this point.
	}
	return ast.NewTerm(jsonValue(v))
}

func jsonValue(v any) ast.Value {
	switch t := v.(type) {
	case nil:
		return ast.NullValue
	case bool:
		return ast.InternedValue(t)
	case string:
		return ast.String(t)
	case json.Number:
		return ast.Number(t)
	case float64:
		return ast.FloatNumberTerm(t).Value
	case int:
		return ast.InternedValue(t)
	case int64:
		return ast.Number(fmt.Sprint(t))
	case []any:
		terms := make([]*ast.Term, len(t))
		for i, x := range t {
			terms[i] = ast.NewTerm(jsonValue(x))
		}
		return ast.NewArray(terms...)
	case []string:
		return stringArray(t).Value
	case map[string]any:
		obj := ast.NewObjectWithCapacity(len(t))
		for k, x := range t {
			obj.Insert(ast.StringTerm(k), ast.NewTerm(jsonValue(x)))
		}
		return obj
	case map[string]string:
		return stringObject(t, allSelected).Value
	default:
		val, err := ast.InterfaceToValue(t)
		if err != nil {
			return ast.NullValue
		}
		return val
	}
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
