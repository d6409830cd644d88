package decision

import (
	"encoding/json"
	"reflect"
	"testing"
)

func keyInput() *Input {
	return &Input{
		Request: Request{
			ID: "id-1", Method: "GET", Scheme: "https", Host: "api.example", Path: "/a/b", RawPath: "/a/b",
			Segments: []string{"a", "b"}, Query: map[string][]string{"k": {"v"}},
			Headers:    map[string]string{"user-agent": "ua", "x-team": "t1"},
			Body:       map[string]any{"name": "n", "n": json.Number("1"), "tags": []any{"x"}},
			RemoteAddr: "10.0.0.1",
		},
		Identity: Identity{
			Authenticated: true, Method: MethodJWT, Subject: "alice", Issuer: "iss", SpiffeID: "spiffe://x", KeyID: "k1",
			Groups: []string{"g"}, Claims: map[string]any{"roles": []any{"r1"}, "exp": json.Number("2")},
		},
		Route: Route{Name: "r", Labels: map[string]string{"api": "x"}},
	}
}

func mustKey(t *testing.T, fields [][]string, in *Input) CacheKey {
	t.Helper()
	k, ok := newCacheKey(1, "data.p.decision", fields, in)
	if !ok {
		t.Fatalf("newCacheKey(%v) failed", fields)
	}
	return k
}

// TestCacheKeyCoversWholeInput changes every field of Input, found by
// reflection so that a field added to the contract later is checked too,
// and requires the whole-input key to change, except for request.id,
// which must never change it.
func TestCacheKeyCoversWholeInput(t *testing.T) {
	whole := [][]string{{}}
	base := mustKey(t, whole, keyInput())
	var walk func(v reflect.Value, name string)
	walk = func(v reflect.Value, name string) {
		if v.Kind() == reflect.Struct {
			for i := range v.NumField() {
				walk(v.Field(i), name+"."+v.Type().Field(i).Name)
			}
			return
		}
		t.Run(name, func(t *testing.T) {
			in := keyInput()
			f := reflect.ValueOf(in).Elem().FieldByIndex(fieldIndex(t, reflect.TypeOf(*in), name))
			mutate(t, f)
			changed := mustKey(t, whole, in) != base
			if name == ".Request.ID" {
				if changed {
					t.Fatal("request.id changed the key")
				}
				return
			}
			if !changed {
				t.Fatalf("changing %s did not change the whole-input key", name)
			}
		})
	}
	walk(reflect.ValueOf(keyInput()).Elem(), "")
}

func fieldIndex(t *testing.T, typ reflect.Type, dotted string) []int {
	t.Helper()
	var idx []int
	for _, part := range splitDots(dotted) {
		f, ok := typ.FieldByName(part)
		if !ok {
			t.Fatalf("no field %s in %s", part, typ)
		}
		idx = append(idx, f.Index...)
		typ = f.Type
	}
	return idx
}

func splitDots(s string) []string {
	var out []string
	start := 1
	for i := 1; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

func mutate(t *testing.T, f reflect.Value) {
	t.Helper()
	switch f.Kind() {
	case reflect.String:
		f.SetString(f.String() + "~")
	case reflect.Bool:
		f.SetBool(!f.Bool())
	case reflect.Slice:
		f.Set(reflect.Append(f, reflect.ValueOf("extra").Convert(f.Type().Elem())))
	case reflect.Map:
		m := reflect.MakeMap(f.Type())
		for _, k := range f.MapKeys() {
			m.SetMapIndex(k, f.MapIndex(k))
		}
		ev := reflect.ValueOf("extra")
		if f.Type().Elem().Kind() == reflect.Slice {
			ev = reflect.ValueOf([]string{"extra"})
		}
		m.SetMapIndex(reflect.ValueOf("extra"), ev.Convert(f.Type().Elem()))
		f.Set(m)
	case reflect.Interface:
		f.Set(reflect.ValueOf("something else"))
	default:
		t.Fatalf("cannot mutate a %s: teach this test (and the cache key) the new field type", f.Kind())
	}
}

func TestCacheKeyFieldSelection(t *testing.T) {
	tests := []struct {
		name   string
		fields [][]string
		change func(*Input)
		splits bool
	}{
		{"method read", [][]string{{"request", "method"}}, func(in *Input) { in.Request.Method = "POST" }, true},
		{"path not read", [][]string{{"request", "method"}}, func(in *Input) { in.Request.Path = "/x" }, false},
		{"one header read", [][]string{{"request", "headers", "x-team"}}, func(in *Input) { in.Request.Headers["x-team"] = "t2" }, true},
		{"other header not read", [][]string{{"request", "headers", "x-team"}}, func(in *Input) { in.Request.Headers["user-agent"] = "curl" }, false},
		{"header removed", [][]string{{"request", "headers", "x-team"}}, func(in *Input) { delete(in.Request.Headers, "x-team") }, true},
		{"header emptied", [][]string{{"request", "headers", "x-team"}}, func(in *Input) { in.Request.Headers["x-team"] = "" }, true},
		{"all headers read", [][]string{{"request", "headers"}}, func(in *Input) { in.Request.Headers["user-agent"] = "curl" }, true},
		{"query key read", [][]string{{"request", "query", "k"}}, func(in *Input) { in.Request.Query["k"] = []string{"v", "w"} }, true},
		{"other query key", [][]string{{"request", "query", "k"}}, func(in *Input) { in.Request.Query["z"] = []string{"1"} }, false},
		{"body field read", [][]string{{"request", "body", "name"}}, func(in *Input) { in.Request.Body.(map[string]any)["name"] = "m" }, true},
		{"other body field", [][]string{{"request", "body", "name"}}, func(in *Input) { in.Request.Body.(map[string]any)["n"] = json.Number("2") }, false},
		{"body replaced by non-object", [][]string{{"request", "body", "name"}}, func(in *Input) { in.Request.Body = "name" }, true},
		{"number kind", [][]string{{"request", "body", "n"}}, func(in *Input) { in.Request.Body.(map[string]any)["n"] = "1" }, true},
		{"route label read", [][]string{{"route", "labels", "api"}}, func(in *Input) { in.Route.Labels["api"] = "y" }, true},
		{"route name not read", [][]string{{"route", "labels", "api"}}, func(in *Input) { in.Route.Name = "other" }, false},
		{"identity always", nil, func(in *Input) { in.Identity.Claims["exp"] = json.Number("3") }, true},
		{"extra field read", [][]string{{"attributes", "method"}}, func(in *Input) {
			in.Extra = map[string]any{"attributes": map[string]any{"method": "GET"}}
		}, true},
		{"extra field not read", [][]string{{"attributes"}}, func(in *Input) { in.Request.Path = "/x" }, false},
		{"extra not read by a request rule", [][]string{{"request", "path"}}, func(in *Input) { in.Extra = map[string]any{"version": "v3"} }, false},
		{"unknown request field means whole request", [][]string{{"request", "nope"}}, func(in *Input) { in.Request.Path = "/x" }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := mustKey(t, tt.fields, keyInput())
			in := keyInput()
			tt.change(in)
			if got := mustKey(t, tt.fields, in) != a; got != tt.splits {
				t.Fatalf("key changed = %v, want %v", got, tt.splits)
			}
		})
	}
}

// TestCacheKeyUnambiguous: values that would run together in a naive
// encoding get different keys.
func TestCacheKeyUnambiguous(t *testing.T) {
	body := func(v any) *Input { in := keyInput(); in.Request.Body = v; return in }
	pairs := []struct {
		name string
		a, b *Input
	}{
		{"key/value boundary", body(map[string]any{"a": "bc"}), body(map[string]any{"ab": "c"})},
		{"null vs string", body(nil), body("null")},
		{"number vs string", body(json.Number("1")), body("1")},
		{"array vs elements", body([]any{"a", "b"}), body([]any{"ab"})},
		{"empty object vs empty array", body(map[string]any{}), body([]any{})},
		{"bool vs string", body(true), body("true")},
	}
	fields := [][]string{{"request", "body"}}
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			if mustKey(t, fields, p.a) == mustKey(t, fields, p.b) {
				t.Fatal("distinct inputs share a key")
			}
		})
	}
	a, _ := newCacheKey(1, "data.p.a", nil, keyInput())
	b, _ := newCacheKey(1, "data.p.b", nil, keyInput())
	c, _ := newCacheKey(2, "data.p.a", nil, keyInput())
	if a == b || a == c {
		t.Fatal("rule path or activation does not change the key")
	}
}

func TestCacheKeyUnencodable(t *testing.T) {
	in := keyInput()
	in.Request.Body = map[string]any{"ch": make(chan int)}
	if _, ok := newCacheKey(1, "data.p.decision", [][]string{{"request", "body"}}, in); ok {
		t.Fatal("a value encoding/json cannot write produced a key")
	}
}

func BenchmarkCacheKey(b *testing.B) {
	in := keyInput()
	fields := [][]string{{"request", "method"}, {"request", "path"}}
	b.ReportAllocs()
	for b.Loop() {
		newCacheKey(1, "data.p.decision", fields, in)
	}
}
