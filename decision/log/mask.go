package log

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Credentials that are erased from every event whatever the configuration.
var (
	secretHeaders = []string{
		"authorization", "proxy-authorization", "cookie", "set-cookie",
		"x-api-key", "x-auth-token", "x-amz-security-token",
	}
	// secretFields applies, case-insensitively, to query parameter names and
	// to object keys at any depth of the request body.
	secretFields = []string{
		"password", "passwd", "secret", "token", "access_token", "refresh_token",
		"id_token", "client_secret", "private_key", "api_key", "apikey",
		"password_hash", "credentials", "secret_key", "session_token",
	}
	// secretSuffixes extend both lists: a name whose normalized form
	// (lowercase, without "-", "_", "." and spaces) ends with one of these
	// is a credential too: db_password, clientSecret, X-Vault-Token,
	// X-Goog-Api-Key, privateKey, X-Amz-Signature, ...
	secretSuffixes = []string{
		"password", "passwd", "passphrase", "secret", "token", "apikey", "privatekey",
		"secretkey", "secretaccesskey", "credential", "credentials", "signature",
	}
	// headerSuffixes apply to header names only (X-Forwarded-Authorization).
	headerSuffixes = []string{"authorization", "cookie"}
)

// normalizeName folds a field or header name for the suffix rules.
func normalizeName(name string) string {
	var b strings.Builder
	b.Grow(len(name))
	for _, r := range strings.ToLower(name) {
		switch r {
		case '-', '_', '.', ' ':
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// appendFolded appends normalizeName(name) to dst for an ASCII name (ok
// false for any other, which normalizeName folds), without allocating.
func appendFolded(dst []byte, name string) (_ []byte, ok bool) {
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= utf8.RuneSelf:
			return dst, false
		case c == '-', c == '_', c == '.', c == ' ':
		case 'A' <= c && c <= 'Z':
			dst = append(dst, c+('a'-'A'))
		default:
			dst = append(dst, c)
		}
	}
	return dst, true
}

// folded returns the normalized name: in buf when the name is ASCII.
func folded(buf []byte, name string) []byte {
	if n, ok := appendFolded(buf[:0], name); ok {
		return n
	}
	return []byte(normalizeName(name))
}

func hasSecretSuffix(n []byte, suffixes []string) bool {
	for _, s := range suffixes {
		if len(n) >= len(s) && string(n[len(n)-len(s):]) == s {
			return true
		}
	}
	return false
}

type masker struct {
	headers map[string]bool
	fields  map[string]bool // lowercase names
	folded  map[string]bool // normalized names of fields
	paths   [][]string
}

// secretHeader reports whether a header of this name is a credential.
func (m *masker) secretHeader(name string) bool {
	if m.headers[strings.ToLower(name)] {
		return true
	}
	var buf [64]byte
	n := folded(buf[:], name)
	return m.folded[string(n)] || hasSecretSuffix(n, secretSuffixes) || hasSecretSuffix(n, headerSuffixes)
}

// secretField reports whether a query parameter or body field of this name
// is a credential.
func (m *masker) secretField(name string) bool {
	if m.fields[strings.ToLower(name)] {
		return true
	}
	var buf [64]byte
	n := folded(buf[:], name)
	return m.folded[string(n)] || hasSecretSuffix(n, secretSuffixes)
}

func newMasker(paths, credentialHeaders []string) (*masker, error) {
	m := &masker{headers: map[string]bool{}, fields: map[string]bool{}, folded: map[string]bool{}}
	for _, h := range secretHeaders {
		m.headers[h] = true
	}
	for _, h := range credentialHeaders {
		m.headers[strings.ToLower(h)] = true
	}
	for _, f := range secretFields {
		m.fields[f] = true
		m.folded[normalizeName(f)] = true
	}
	for _, p := range paths {
		segs, err := parseMaskPath(p)
		if err != nil {
			return nil, err
		}
		m.paths = append(m.paths, segs)
	}
	return m, nil
}

// parseMaskPath accepts "input.request.body.password" or the JSON-pointer
// form "/input/request/body/password" (needed for keys containing dots) and
// returns the segments below "input".
func parseMaskPath(p string) ([]string, error) {
	var segs []string
	switch {
	case strings.HasPrefix(p, "/"):
		segs = strings.Split(p[1:], "/")
		for i, s := range segs {
			if strings.IndexByte(s, '~') >= 0 {
				segs[i] = pointerUnescaper.Replace(s)
			}
		}
	default:
		segs = strings.Split(p, ".")
	}
	if len(segs) < 2 || segs[0] != "input" {
		return nil, fmt.Errorf("mask path %q must start with input. and name a field", p)
	}
	for _, s := range segs[1:] {
		if s == "" {
			return nil, fmt.Errorf("mask path %q has an empty segment", p)
		}
	}
	return segs[1:], nil
}

// apply erases credentials and the configured and policy-requested paths
// from input (the event's own copy) and returns the erased paths as JSON
// pointers, sorted.
//
// The direct encoder (encode_input.go) applies the rules for request
// headers, query and body itself, while it writes an input no mask path
// applies to: a rule added here must be added there too.
// TestEncodeDirectMatchesGeneral and FuzzEncodeDirect compare the two.
func (m *masker) apply(input map[string]any, policyPaths []string) []string {
	var erased []string
	req, _ := input["request"].(map[string]any)
	if req != nil {
		if hs, ok := req["headers"].(map[string]any); ok {
			for k := range hs {
				if m.secretHeader(k) {
					delete(hs, k)
					erased = append(erased, "/input/request/headers/"+pointerEscape(k))
				} else if m.redactHeaderValue(hs, k) {
					erased = append(erased, "/input/request/headers/"+pointerEscape(k))
				}
			}
		}
		if q, ok := req["query"].(map[string]any); ok {
			for k := range q {
				if m.secretField(k) {
					delete(q, k)
					erased = append(erased, "/input/request/query/"+pointerEscape(k))
				}
			}
		}
		erased = m.eraseFields(req["body"], []string{"request", "body"}, erased)
	}
	erased = m.applyEnvoy(input, erased)
	for _, segs := range m.paths {
		if eraseAt(input, segs) {
			erased = append(erased, toPointer(segs))
		}
	}
	for _, p := range policyPaths {
		segs, err := parseMaskPath(p)
		if err != nil {
			continue // the policy's mask is advisory for malformed paths
		}
		if eraseAt(input, segs) {
			erased = append(erased, toPointer(segs))
		}
	}
	sort.Strings(erased)
	return erased
}

// eraseFields erases secret fields at any depth of v, which is at the
// segments at below input. The path is a stack of unescaped segments,
// turned into a JSON pointer only for what is erased.
func (m *masker) eraseFields(v any, at []string, erased []string) []string {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if m.secretField(k) {
				delete(t, k)
				erased = append(erased, toPointer(append(at, k)))
				continue
			}
			switch x.(type) {
			case map[string]any, []any:
				erased = m.eraseFields(x, append(at, k), erased)
			}
		}
	case []any:
		for i, x := range t {
			switch x.(type) {
			case map[string]any, []any:
				erased = m.eraseFields(x, append(at, strconv.Itoa(i)), erased)
			}
		}
	}
	return erased
}

func eraseAt(input map[string]any, segs []string) bool {
	cur := input
	for i, s := range segs {
		if i == len(segs)-1 {
			if _, ok := cur[s]; !ok {
				return false
			}
			delete(cur, s)
			return true
		}
		next, ok := cur[s].(map[string]any)
		if !ok {
			return false
		}
		cur = next
	}
	return false
}

func toPointer(segs []string) string {
	var b strings.Builder
	b.WriteString("/input")
	for _, s := range segs {
		b.WriteByte('/')
		b.WriteString(pointerEscape(s))
	}
	return b.String()
}

var (
	pointerEscaper   = strings.NewReplacer("~", "~0", "/", "~1")
	pointerUnescaper = strings.NewReplacer("~1", "/", "~0", "~")
)

func pointerEscape(s string) string {
	if strings.IndexByte(s, '~') < 0 && strings.IndexByte(s, '/') < 0 {
		return s
	}
	return pointerEscaper.Replace(s)
}

// applyEnvoy erases credentials from the opa-envoy-plugin fields that
// ext_authz adds: the CheckRequest attributes (headers, header_map, the raw
// body and any secret query parameter inside the path), parsed_query and
// parsed_body.
func (m *masker) applyEnvoy(input map[string]any, erased []string) []string {
	if q, ok := input["parsed_query"].(map[string]any); ok {
		for k := range q {
			if m.secretField(k) {
				delete(q, k)
				erased = append(erased, "/input/parsed_query/"+pointerEscape(k))
			}
		}
	}
	erased = m.eraseFields(input["parsed_body"], []string{"parsed_body"}, erased)
	attrs, _ := input["attributes"].(map[string]any)
	req, _ := attrs["request"].(map[string]any)
	h, _ := req["http"].(map[string]any)
	if h == nil {
		return erased
	}
	const at = "/input/attributes/request/http"
	if hs, ok := h["headers"].(map[string]any); ok {
		for k := range hs {
			if m.secretHeader(k) {
				delete(hs, k)
				erased = append(erased, at+"/headers/"+pointerEscape(k))
			} else if m.redactHeaderValue(hs, k) {
				erased = append(erased, at+"/headers/"+pointerEscape(k))
			}
		}
	}
	if hm, ok := h["headerMap"].(map[string]any); ok {
		if list, ok := hm["headers"].([]any); ok {
			kept := list[:0]
			for _, item := range list {
				hv, _ := item.(map[string]any)
				if k, _ := hv["key"].(string); m.secretHeader(k) {
					erased = append(erased, at+"/headerMap/headers/"+pointerEscape(k))
					continue
				} else if hv != nil && m.redactHeaderMapValue(hv) {
					erased = append(erased, at+"/headerMap/headers/"+pointerEscape(k))
				}
				kept = append(kept, item)
			}
			hm["headers"] = kept
		}
	}
	// The raw body can hold anything; its parsed form (parsed_body) is
	// logged with secret fields erased instead.
	for _, k := range []string{"body", "rawBody"} {
		if _, ok := h[k]; ok {
			delete(h, k)
			erased = append(erased, at+"/"+k)
		}
	}
	for _, k := range []string{"path", "query"} {
		if s, ok := h[k].(string); ok {
			if red, changed := m.redactQuery(s); changed {
				h[k] = red
				erased = append(erased, at+"/"+k)
			}
		}
	}
	return erased
}

// redactQuery replaces the values of secret query parameters in a path or
// query string with "REDACTED". Parameters are split on '&', and also on
// ';' and '#' (separators some parsers use, and the fragment where OAuth
// implicit flows put tokens), so that a request refused for them still
// keeps its secrets out of the log.
func (m *masker) redactQuery(s string) (string, bool) {
	prefix, q, hasQ := strings.Cut(s, "?")
	if !hasQ {
		q, prefix = s, ""
	}
	var b strings.Builder
	changed := false
	for rest := q; ; {
		part, sep := rest, ""
		if i := strings.IndexAny(rest, "&;#"); i >= 0 {
			part, sep, rest = rest[:i], rest[i:i+1], rest[i+1:]
		}
		k, _, _ := strings.Cut(part, "=")
		dk, err := url.QueryUnescape(k)
		if err != nil {
			dk = k
		}
		if m.secretField(dk) {
			part = k + "=REDACTED"
			changed = true
		}
		b.WriteString(part)
		b.WriteString(sep)
		if sep == "" {
			break
		}
	}
	if !changed {
		return s, false
	}
	if hasQ {
		return prefix + "?" + b.String(), true
	}
	return b.String(), true
}

// redactHeaderValue redacts secret query parameters inside the value of
// header k when it carries a URI (X-Original-URI, X-Forwarded-Uri,
// Referer, Envoy's :path, ...). It reports whether it changed anything.
func (m *masker) redactHeaderValue(hs map[string]any, k string) bool {
	s, ok := hs[k].(string)
	if !ok {
		return false
	}
	red, changed := m.redactURIValue(s)
	if changed {
		hs[k] = red
	}
	return changed
}

// redactURIValue is redactQuery for a header value, which carries a query
// only if it has a '?' or '#'.
func (m *masker) redactURIValue(s string) (string, bool) {
	if !strings.ContainsAny(s, "?#") {
		return s, false
	}
	return m.redactQuery(s)
}

// redactHeaderMapValue is redactHeaderValue for an ext_authz header_map
// entry, whose value may be in rawValue (base64 in protojson).
func (m *masker) redactHeaderMapValue(hv map[string]any) bool {
	if raw, ok := hv["rawValue"].(string); ok {
		if b, err := base64.StdEncoding.DecodeString(raw); err == nil {
			if red, changed := m.redactQuery(string(b)); changed && strings.ContainsAny(string(b), "?#") {
				delete(hv, "rawValue")
				hv["value"] = red
				return true
			}
		}
	}
	return m.redactHeaderValue(hv, "value")
}
