package log

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
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

func hasSecretSuffix(n string, suffixes []string) bool {
	for _, s := range suffixes {
		if strings.HasSuffix(n, s) {
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
	n := normalizeName(name)
	return m.folded[n] || hasSecretSuffix(n, secretSuffixes) || hasSecretSuffix(n, headerSuffixes)
}

// secretField reports whether a query parameter or body field of this name
// is a credential.
func (m *masker) secretField(name string) bool {
	if m.fields[strings.ToLower(name)] {
		return true
	}
	n := normalizeName(name)
	return m.folded[n] || hasSecretSuffix(n, secretSuffixes)
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
			segs[i] = strings.NewReplacer("~1", "/", "~0", "~").Replace(s)
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
func (m *masker) apply(input map[string]any, policyPaths []string) []string {
	var erased []string
	req, _ := input["request"].(map[string]any)
	if req != nil {
		if hs, ok := req["headers"].(map[string]any); ok {
			for k := range hs {
				if m.secretHeader(k) {
					delete(hs, k)
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
		erased = m.eraseFields(req["body"], "/input/request/body", erased)
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

func (m *masker) eraseFields(v any, at string, erased []string) []string {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if m.secretField(k) {
				delete(t, k)
				erased = append(erased, at+"/"+pointerEscape(k))
				continue
			}
			erased = m.eraseFields(x, at+"/"+pointerEscape(k), erased)
		}
	case []any:
		for i, x := range t {
			erased = m.eraseFields(x, fmt.Sprintf("%s/%d", at, i), erased)
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

func pointerEscape(s string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
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
	erased = m.eraseFields(input["parsed_body"], "/input/parsed_body", erased)
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
// query string with "REDACTED".
func (m *masker) redactQuery(s string) (string, bool) {
	prefix, q, hasQ := strings.Cut(s, "?")
	if !hasQ {
		q, prefix = s, ""
	}
	parts := strings.Split(q, "&")
	changed := false
	for i, p := range parts {
		k, _, _ := strings.Cut(p, "=")
		if dk, err := url.QueryUnescape(k); err == nil && m.secretField(dk) {
			parts[i] = k + "=REDACTED"
			changed = true
		}
	}
	if !changed {
		return s, false
	}
	if hasQ {
		return prefix + "?" + strings.Join(parts, "&"), true
	}
	return strings.Join(parts, "&"), true
}
