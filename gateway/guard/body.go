package guard

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/policygate/policygate/decision"
)

type bodyError struct{ err error }

func (e *bodyError) Error() string { return "body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// readBody reads up to limit bytes of the request body and parses JSON or
// form bodies for the policy. The bytes read are replayed to the upstream
// followed by the unread rest, so the upstream always receives the whole
// body. Bodies the parsers of gateway and backend could read differently —
// duplicate JSON keys, trailing data, invalid UTF-8 — are rejected.
func readBody(body io.Reader, contentLength, limit int64, contentType string, in *decision.Input, v *Verdict) error {
	if limit < 0 || body == nil || body == http.NoBody || contentLength == 0 {
		return nil
	}
	kind := bodyKind(contentType)
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
		in.Request.Body = val
	case "form":
		if !utf8.Valid(buf) {
			return &bodyError{errors.New("invalid UTF-8 in form body")}
		}
		q, err := url.ParseQuery(string(buf))
		if err != nil {
			return &bodyError{err}
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

func bodyKind(contentType string) string {
	if contentType == "" {
		return ""
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return ""
	}
	switch {
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		return "json"
	case mt == "application/x-www-form-urlencoded":
		return "form"
	}
	return ""
}

// parseJSON decodes exactly one JSON value with numbers kept exact,
// rejecting duplicate object keys and trailing data.
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
	default:
		return t, nil // string, json.Number, bool, nil
	}
}
