package log

import (
	"fmt"
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
)

type masker struct {
	headers map[string]bool
	fields  map[string]bool
	paths   [][]string
}

func newMasker(paths, credentialHeaders []string) (*masker, error) {
	m := &masker{headers: map[string]bool{}, fields: map[string]bool{}}
	for _, h := range secretHeaders {
		m.headers[h] = true
	}
	for _, h := range credentialHeaders {
		m.headers[strings.ToLower(h)] = true
	}
	for _, f := range secretFields {
		m.fields[f] = true
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
				if m.headers[strings.ToLower(k)] {
					delete(hs, k)
					erased = append(erased, "/input/request/headers/"+pointerEscape(k))
				}
			}
		}
		if q, ok := req["query"].(map[string]any); ok {
			for k := range q {
				if m.fields[strings.ToLower(k)] {
					delete(q, k)
					erased = append(erased, "/input/request/query/"+pointerEscape(k))
				}
			}
		}
		erased = m.eraseFields(req["body"], "/input/request/body", erased)
	}
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
			if m.fields[strings.ToLower(k)] {
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
