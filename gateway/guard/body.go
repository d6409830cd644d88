package guard

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/policygate/policygate/decision"
)

type bodyError struct{ err error }

func (e *bodyError) Error() string { return "body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// methodOverrideField is the body field Rails, Laravel and Symfony read as
// the request's method (form, multipart and, in Laravel, JSON bodies). The
// policy sees the method the upstream acts on, so a body carrying it is
// refused like the _method query parameter.
const methodOverrideField = "_method"

// errBodyMethodOverride refuses a body that carries methodOverrideField.
var errBodyMethodOverride = errors.New("_method field in the request body")

// readBody reads up to limit bytes of the request body and parses JSON or
// form bodies for the policy. The bytes read are replayed to the upstream
// followed by the unread rest, so the upstream always receives the whole
// body. Bodies the parsers of gateway and backend could read differently —
// duplicate JSON keys, trailing data, invalid UTF-8 — are rejected.
func readBody(body io.Reader, contentLength, limit int64, contentTypes []string, in *decision.Input, v *Verdict) error {
	if limit < 0 || body == nil || body == http.NoBody || contentLength == 0 {
		return nil
	}
	// Which of two Content-Types a backend believes is its own choice.
	if len(contentTypes) > 1 {
		return &bodyError{errors.New("more than one Content-Type")}
	}
	contentType := ""
	if len(contentTypes) == 1 {
		contentType = contentTypes[0]
	}
	kind, err := bodyKind(contentType)
	if err != nil {
		return &bodyError{err}
	}
	if kind == "" {
		return nil // opaque to the policy; streamed through untouched
	}
	buf, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return &bodyError{fmt.Errorf("read: %w", err)}
	}
	if int64(len(buf)) > limit {
		in.Request.BodyTruncated = true
		v.Body, v.BodyLen = io.MultiReader(bytes.NewReader(buf), body), contentLength
		return nil
	}
	v.Body, v.BodyLen = bytes.NewReader(buf), int64(len(buf))
	switch kind {
	case "json":
		val, err := parseJSON(buf)
		if err != nil {
			return &bodyError{err}
		}
		if m, ok := val.(map[string]any); ok {
			if _, ok := m[methodOverrideField]; ok {
				return errBodyMethodOverride
			}
		}
		in.Request.Body = val
	case "multipart":
		// Not shown to the policy; read only to refuse a method override.
		return checkMultipart(buf, contentType)
	case "form":
		if !utf8.Valid(buf) {
			return &bodyError{errors.New("invalid UTF-8 in form body")}
		}
		q, err := url.ParseQuery(string(buf))
		if err != nil {
			return &bodyError{err}
		}
		if _, ok := q[methodOverrideField]; ok {
			return errBodyMethodOverride
		}
		m := make(map[string]any, len(q))
		for k, vs := range q {
			items := make([]any, len(vs))
			for i, v := range vs {
				items[i] = v
			}
			m[k] = items
		}
		in.Request.Body = m
	}
	return nil
}

// bodyKind says how a body of this Content-Type is read for the policy:
// "json", "form", "multipart" (checked, not shown) or "" (opaque). A type
// the gateway reads is refused when a backend could decode it otherwise:
// parameters the gateway cannot parse, or a charset other than UTF-8
// (Django decodes JSON and form bodies with the declared charset, so
// "+AGE-dmin" is "admin" under charset=utf-7).
func bodyKind(contentType string) (string, error) {
	if contentType == "" {
		return "", nil
	}
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		// Look at every type the header might be read as.
		for _, part := range strings.Split(contentType, ",") {
			t, _, _ := strings.Cut(part, ";")
			if kindOf(strings.ToLower(strings.TrimSpace(t))) != "" {
				return "", fmt.Errorf("unreadable Content-Type %q", contentType)
			}
		}
		return "", nil
	}
	kind := kindOf(mt)
	if cs, ok := params["charset"]; ok && (kind == "json" || kind == "form") &&
		!strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "utf8") {
		return "", fmt.Errorf("charset %q: only UTF-8 bodies are read", cs)
	}
	return kind, nil
}

func kindOf(mediaType string) string {
	switch {
	case mediaType == "application/json" || strings.HasSuffix(mediaType, "+json"):
		return "json"
	case mediaType == "application/x-www-form-urlencoded":
		return "form"
	case mediaType == "multipart/form-data":
		return "multipart"
	}
	return ""
}

// checkMultipart refuses a multipart/form-data body that carries a
// _method part, or that cannot be parsed (parsers disagree on malformed
// multipart bodies).
func checkMultipart(buf []byte, contentType string) error {
	_, params, err := mime.ParseMediaType(contentType)
	if err != nil || params["boundary"] == "" {
		return &bodyError{errors.New("multipart body without boundary")}
	}
	mr := multipart.NewReader(bytes.NewReader(buf), params["boundary"])
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return &bodyError{fmt.Errorf("multipart: %w", err)}
		}
		if p.FormName() == methodOverrideField {
			return errBodyMethodOverride
		}
	}
}

// ParseJSON is the strict JSON parser of the decision path, for front
// doors that show a body to policies in another shape (ext_authz's
// parsed_body): numbers kept exact; duplicate object keys (also keys equal
// under case folding), trailing data and invalid UTF-8 rejected.
func ParseJSON(b []byte) (any, error) { return parseJSON(b) }

// IsJSON reports whether a body of this Content-Type is parsed as JSON.
func IsJSON(contentType string) bool {
	kind, err := bodyKind(contentType)
	return err == nil && kind == "json"
}

// parseJSON decodes exactly one JSON value with numbers kept exact,
// rejecting duplicate object keys and trailing data. Keys that differ only
// in case count as duplicates: case-insensitive binders (Go's
// encoding/json, Jackson with ACCEPT_CASE_INSENSITIVE_PROPERTIES, ...) fill
// one field from both, the last one winning, while the policy would read
// only the exact name.
func parseJSON(b []byte) (any, error) {
	if !utf8.Valid(b) {
		return nil, errors.New("invalid UTF-8 in JSON body")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after JSON value")
	}
	return v, nil
}

const maxJSONDepth = 64

func decodeValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxJSONDepth {
		return nil, errors.New("JSON nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			m := map[string]any{}
			var folded map[string]bool // keys under case folding, once a key is not plain lowercase ASCII
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, fmt.Errorf("invalid JSON: %w", err)
				}
				k, ok := kt.(string)
				if !ok {
					return nil, errors.New("invalid JSON object key")
				}
				if _, dup := m[k]; dup {
					return nil, fmt.Errorf("duplicate JSON key %q", k)
				}
				if folded == nil && !lowerASCII(k) {
					folded = make(map[string]bool, len(m)+1)
					for prev := range m {
						folded[foldKey(prev)] = true
					}
				}
				if folded != nil {
					fk := foldKey(k)
					if folded[fk] {
						return nil, fmt.Errorf("JSON keys equal under case folding: %q", k)
					}
					folded[fk] = true
				}
				v, err := decodeValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				m[k] = v
			}
			if _, err := dec.Token(); err != nil {
				return nil, fmt.Errorf("invalid JSON: %w", err)
			}
			return m, nil
		case '[':
			s := []any{}
			for dec.More() {
				v, err := decodeValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				s = append(s, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, fmt.Errorf("invalid JSON: %w", err)
			}
			return s, nil
		}
		return nil, errors.New("invalid JSON")
	case json.Number:
		if err := checkNumber(string(t)); err != nil {
			return nil, err
		}
		return t, nil
	default:
		return t, nil // string, bool, nil
	}
}

// Bounds on a JSON number the policy is shown. Numbers stay exact for the
// policy, and OPA computes on them as arbitrary-precision values, so their
// size is its cost: beyond these bounds a number panics OPA's comparisons
// (1e100000000 <= 86400) or makes one floor() allocate gigabytes
// (1e1000000), and no admin API means them (float64 ends near 1e308).
const (
	maxNumberLen = 128
	maxNumberExp = 1000 // |decimal exponent|
)

// checkNumber refuses a JSON number (already valid JSON syntax) beyond
// maxNumberLen bytes or with an exponent beyond ±maxNumberExp.
func checkNumber(n string) error {
	if len(n) > maxNumberLen {
		return fmt.Errorf("JSON number of %d bytes exceeds %d", len(n), maxNumberLen)
	}
	i := strings.IndexAny(n, "eE")
	if i < 0 {
		return nil
	}
	exp, err := strconv.Atoi(n[i+1:]) // at most maxNumberLen digits: fits or fails
	if err != nil || exp > maxNumberExp || exp < -maxNumberExp {
		return fmt.Errorf("JSON number %s: exponent beyond ±%d", n, maxNumberExp)
	}
	return nil
}

// lowerASCII reports whether s has no upper-case letter and no non-ASCII
// byte: two such keys are equal under case folding only if equal.
func lowerASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x80 || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// foldKey maps s to one representative of its Unicode simple case-folding
// class (the smallest rune of each rune's orbit), so that two strings fold
// equal exactly when strings.EqualFold says so (K, k and the Kelvin sign;
// S, s and the long s).
func foldKey(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if f < m {
				m = f
			}
		}
		b.WriteRune(m)
	}
	return b.String()
}
