package canon

import (
	"net/url"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, in string
		opts     Options
		path     string
		segs     []string
		query    string
		code     string // rejection code; "" means accepted
	}{
		{name: "root", in: "/", path: "/", segs: []string{}},
		{name: "simple", in: "/admin/users", path: "/admin/users", segs: []string{"admin", "users"}},
		{name: "trailing slash kept", in: "/admin/users/", path: "/admin/users/", segs: []string{"admin", "users"}},
		{name: "unreserved escapes decoded", in: "/%61dmin/%7Eu", path: "/admin/~u", segs: []string{"admin", "~u"}},
		{name: "lowercase hex normalized", in: "/a/%c3%a9", path: "/a/%C3%A9", segs: []string{"a", "é"}},
		{name: "space stays encoded", in: "/a/b%20c", path: "/a/b%20c", segs: []string{"a", "b c"}},
		{name: "encoded semicolon is data", in: "/a/b%3Bc", path: "/a/b%3Bc", segs: []string{"a", "b;c"}},
		{name: "query repeated keys", in: "/a?k=2&k=1&b=x+y", path: "/a", segs: []string{"a"}, query: "b=x+y&k=2&k=1"},
		{name: "empty query", in: "/a?", path: "/a", segs: []string{"a"}},
		{name: "encoded slash allowed by option", in: "/api/permissions/%2F/ci", opts: Options{AllowEncodedSlash: true}, path: "/api/permissions/%2F/ci", segs: []string{"api", "permissions", "/", "ci"}},
		{name: "encoded slash lowercase", in: "/api/vhosts/%2f", opts: Options{AllowEncodedSlash: true}, path: "/api/vhosts/%2F", segs: []string{"api", "vhosts", "/"}},

		{name: "leading double slash", in: "//admin/users", code: "bad_path"},
		{name: "inner double slash", in: "/public//admin", code: "bad_path"},
		{name: "dot-dot", in: "/public/../admin/users", code: "bad_path"},
		{name: "dot", in: "/public/./admin", code: "bad_path"},
		{name: "encoded dot-dot", in: "/public/%2e%2e/admin/users", code: "bad_path"},
		{name: "mixed encoded dot-dot", in: "/public/.%2E/admin", code: "bad_path"},
		{name: "fragment", in: "/admin/x#/public", code: "bad_path"},
		{name: "encoded slash refused by default", in: "/public%2F..%2Fadmin", code: "bad_path"},
		{name: "encoded slash traversal even when allowed", in: "/public/%2F..%2Fadmin", opts: Options{AllowEncodedSlash: true}, code: "bad_path"},
		{name: "encoded backslash", in: "/public/%5C..%5Cadmin", code: "bad_path"},
		{name: "raw backslash", in: `/public\..\admin`, code: "bad_path"},
		{name: "path parameter", in: "/admin;jsessionid=x/users", code: "bad_path"},
		{name: "NUL", in: "/admin%00/users", code: "bad_path"},
		{name: "control", in: "/admin%0d%0a/users", code: "bad_path"},
		{name: "invalid utf8", in: "/admin/%ff", code: "bad_path"},
		{name: "bad escape", in: "/admin/%zz", code: "bad_path"},
		{name: "truncated escape", in: "/admin/%2", code: "bad_path"},
		{name: "absolute form", in: "http://evil/admin", code: "bad_path"},
		{name: "asterisk", in: "*", code: "bad_path"},
		{name: "empty", in: "", code: "bad_path"},
		{name: "raw space", in: "/a b", code: "bad_path"},
		{name: "raw non-ascii", in: "/a\xc3\xa9", code: "bad_path"},
		{name: "semicolon query", in: "/a?x=1;y=2", code: "bad_query"},
		{name: "bad query escape", in: "/a?x=%zz", code: "bad_query"},
		{name: "invalid utf8 query", in: "/a?x=%ff", code: "bad_query"},
		{name: "too long", in: "/" + strings.Repeat("a", MaxPathBytes), code: "path_too_long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in, tt.opts)
			if tt.code != "" {
				var ce *Error
				if err == nil {
					t.Fatalf("Parse(%q) accepted as %q, want %s", tt.in, got.Path, tt.code)
				}
				if ok := asError(err, &ce); !ok || ce.Code != tt.code {
					t.Fatalf("Parse(%q) error %v, want code %s", tt.in, err, tt.code)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if got.Path != tt.path || !reflect.DeepEqual(got.Segments, tt.segs) || got.RawQuery != tt.query {
				t.Fatalf("Parse(%q) = path %q segs %q query %q, want %q %q %q", tt.in, got.Path, got.Segments, got.RawQuery, tt.path, tt.segs, tt.query)
			}
		})
	}
}

func asError(err error, target **Error) bool {
	e, ok := err.(*Error)
	if ok {
		*target = e
	}
	return ok
}

func TestHost(t *testing.T) {
	tests := []struct {
		in, want string
		bad      bool
	}{
		{in: "Admin.Example.COM", want: "admin.example.com"},
		{in: "admin.example.com.", want: "admin.example.com"},
		{in: "admin.example.com:8443", want: "admin.example.com"},
		{in: "[::1]:80", want: "[::1]"},
		{in: "127.0.0.1", want: "127.0.0.1"},
		{in: "a b", bad: true},
		{in: "host:80:80", bad: true},
		{in: "host:", bad: true},
		{in: "[::1", bad: true},
	}
	for _, tt := range tests {
		got, err := Host(tt.in)
		if tt.bad != (err != nil) || got != tt.want {
			t.Errorf("Host(%q) = %q, %v; want %q bad=%v", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

// FuzzParse holds the canonicalization invariants for any input: it never
// panics; an accepted target is a fixed point (canonicalizing the canonical
// form changes nothing); and a standard URL parser reading the forwarded
// request-target finds the same decoded segments and query the policy saw.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"/", "/a/b", "//admin", "/public/../admin", "/p/%2e%2e/a", "/a#b", "/a?x=1&x=2",
		"/api/permissions/%2F/u", "/a%3Bb", "/a/%c3%a9?q=%20", "/a/./b", "/a;b", "/%00", "/a/%2F%2F"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in string, slash bool) {
		opts := Options{AllowEncodedSlash: slash}
		tg, err := Parse(in, opts)
		if err != nil {
			return
		}
		again, err := Parse(tg.URI(), opts)
		if err != nil {
			t.Fatalf("canonical %q of %q rejected: %v", tg.URI(), in, err)
		}
		if again.Path != tg.Path || again.RawQuery != tg.RawQuery || !reflect.DeepEqual(again.Segments, tg.Segments) {
			t.Fatalf("not a fixed point: %q -> %q -> %q", in, tg.URI(), again.URI())
		}
		u, err := url.ParseRequestURI(tg.URI())
		if err != nil {
			t.Fatalf("url.ParseRequestURI(%q): %v", tg.URI(), err)
		}
		if u.EscapedPath() != tg.Path {
			t.Fatalf("EscapedPath %q != canonical %q", u.EscapedPath(), tg.Path)
		}
		var segs []string
		for _, raw := range strings.Split(strings.Trim(u.EscapedPath(), "/"), "/") {
			if raw == "" {
				continue
			}
			s, err := url.PathUnescape(raw)
			if err != nil {
				t.Fatalf("unescape %q: %v", raw, err)
			}
			segs = append(segs, s)
		}
		if len(segs) != len(tg.Segments) || (len(segs) > 0 && !reflect.DeepEqual(segs, tg.Segments)) {
			t.Fatalf("segments %q, policy saw %q", segs, tg.Segments)
		}
		if q := u.Query(); len(tg.Query) > 0 && !reflect.DeepEqual(q, tg.Query) {
			t.Fatalf("query %v, policy saw %v", q, tg.Query)
		}
		if !slash && strings.Contains(tg.Path, "%2F") {
			t.Fatalf("encoded slash accepted without the option: %q", tg.Path)
		}
		for _, s := range tg.Segments {
			if s == "." || s == ".." || s == "" {
				t.Fatalf("ambiguous segment %q accepted in %q", s, in)
			}
		}
	})
}
