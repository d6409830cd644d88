package guard

import (
	"strings"
	"testing"
)

func TestParseJSONRefusesAmbiguity(t *testing.T) {
	for _, body := range []string{
		`{"a":1,"a":2}`,
		`{"ttl":1,"TTL":2}`,
		`{"ttl_seconds":1,"ttl_ſeconds":2}`, // U+017F folds to s
		`{"kid":1,"Kid":2}`,                 // K, k and U+212A fold together
		`{"x":{"Role":"a","rOLE":"b"}}`,
		`{"a":1} {"a":2}`,
		`{"n":1e1001}`, `{"n":-1E-1001}`, `{"n":1e100000000000000000000}`,
		`{"n":1` + strings.Repeat("0", 128) + `}`,
	} {
		if v, err := parseJSON([]byte(body)); err == nil {
			t.Errorf("%s: accepted as %v", body, v)
		}
	}
	for _, body := range []string{`{"a":1,"b":2}`, `{"Ab":1,"aC":2}`, `{"n":1e308,"m":-2.5E-300}`, `[{"a":1},{"a":2}]`} {
		if _, err := parseJSON([]byte(body)); err != nil {
			t.Errorf("%s: %v", body, err)
		}
	}
}

func TestBodyKind(t *testing.T) {
	for ct, want := range map[string]string{
		"": "", "text/plain": "", "application/json": "json", "application/merge-patch+json": "json",
		"application/json; charset=UTF-8": "json", "application/x-www-form-urlencoded; charset=utf8": "form",
		"multipart/form-data; boundary=x": "multipart", "text/plain; charset=utf-7": "",
	} {
		if got, err := bodyKind(ct); err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", ct, got, err, want)
		}
	}
	for _, ct := range []string{
		"application/json; charset=utf-7", "application/x-www-form-urlencoded; charset=ibm037",
		"application/json; charset=utf-8; charset=utf-7", "application/json; =x", "text/plain, application/json",
	} {
		if got, err := bodyKind(ct); err == nil {
			t.Errorf("%q: accepted as %q", ct, got)
		}
	}
}
