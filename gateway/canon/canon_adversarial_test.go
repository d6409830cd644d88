package canon

import "testing"

// Backends that percent-decode a path twice read what a segment hides one
// escape deeper: dot-segments, control bytes and slashes are refused (or,
// for slashes, reported) at every decoding depth.
func TestParseNestedEncodings(t *testing.T) {
	for _, target := range []string{
		"/a/%252e%252e/b", "/a/%252E./b", "/a/.%252e/b", "/a/%25%32%65%25%32%65/b",
		"/a/%25252e%25252e/b",     // decoded three times
		"/a/x%2500/b",             // NUL one level down
		"/a/%25C0%25AE%25C0%25AE", // overlong UTF-8 one level down
		"/a/%25252525252e",        // nested beyond maxDecodings
		"/a/%252F",                // slash one level down, route does not allow it
	} {
		if tg, err := Parse(target, Options{}); err == nil {
			t.Errorf("%s: accepted as %q", target, tg.Path)
		}
	}
	for _, target := range []string{"/a/%252e%252e/b", "/a/x%252F..%252Fb", "/a/x%255C%255Cb"} {
		if tg, err := Parse(target, Options{AllowEncodedSlash: true}); err == nil {
			t.Errorf("%s with encoded slashes allowed: accepted as %q", target, tg.Path)
		}
	}
	for _, tc := range []struct {
		target, path string
		slash        bool
	}{
		{"/a/100%25", "/a/100%25", false},
		{"/a/%2541", "/a/%2541", false},
		{"/a/%25zz", "/a/%25zz", false},
		{"/api/vhosts/%2F", "/api/vhosts/%2F", true},
		{"/api/vhosts/%252F", "/api/vhosts/%252F", true},
		{"/a/b", "/a/b", false},
	} {
		tg, err := Parse(tc.target, Options{AllowEncodedSlash: true})
		if err != nil {
			t.Errorf("%s: %v", tc.target, err)
			continue
		}
		if tg.Path != tc.path || tg.EncodedSlash != tc.slash {
			t.Errorf("%s: path %q slash %v, want %q %v", tc.target, tg.Path, tg.EncodedSlash, tc.path, tc.slash)
		}
	}
}

func TestRedactTarget(t *testing.T) {
	for in, want := range map[string]string{
		"/a/b?access_token=x":           "/a/b",
		"/a/b#access_token=x":           "/a/b",
		"http://user:pass@host/p?x=1#y": "http://host/p",
		"http://host/p@q":               "http://host/p@q",
		"//user:pass@host/admin":        "//host/admin",
		"user:pass@host:443":            "host:443",
		"/public/a@b":                   "/public/a@b",
		"https://a:b@c@host":            "https://host",
		"*":                             "*",
		"http://host?access_token=x":    "http://host",
	} {
		if got := RedactTarget(in); got != want {
			t.Errorf("RedactTarget(%q) = %q, want %q", in, got, want)
		}
	}
}
