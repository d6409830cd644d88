// Package canon turns a request-target as received into the one canonical
// form that both the policy and the upstream see. Anything ambiguous —
// fragments, dot-segments in any encoding, empty segments, path parameters,
// backslashes, control bytes, bad escapes, invalid UTF-8 — is rejected, so a
// path can never be evaluated one way and served another.
//
// It imports only the standard library and must not import decision, bundles
// or xds. All functions are pure and safe for concurrent use.
package canon

import (
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Limits on what is accepted.
const (
	MaxPathBytes = 8 << 10
	MaxSegments  = 128
)

// Error is a rejection with a short, stable code safe to show to clients.
type Error struct {
	Code   string // e.g. "bad_path"
	Detail string // for logs
}

func (e *Error) Error() string { return "canon: " + e.Code + ": " + e.Detail }

func reject(code, format string, args ...any) error {
	return &Error{Code: code, Detail: fmt.Sprintf(format, args...)}
}

// Options relax the rules for backends that need it.
type Options struct {
	// AllowEncodedSlash accepts %2F and %5C inside a segment (RabbitMQ's
	// default vhost "/" is addressed as %2F). The escape is kept in the
	// forwarded path; the decoded segment is what the policy sees in
	// segments. A decoded segment is still rejected if it contains a
	// dot-segment or an empty segment when split on '/' or '\', so a backend
	// that decodes %2F early cannot be walked out of the matched prefix.
	AllowEncodedSlash bool
}

// Target is a canonical request-target.
type Target struct {
	Path     string     // canonical, percent-encoded: exactly what is forwarded
	RawPath  string     // the path as received
	Segments []string   // decoded segments of Path, no empty ones
	Query    url.Values // every value of repeated keys, in order
	RawQuery string     // canonical encoding of Query: exactly what is forwarded
	// EncodedSlash is set when a segment holds a '/' or '' once decoded,
	// or once decoded again by a backend that decodes twice (%252F).
	// Only possible with Options.AllowEncodedSlash.
	EncodedSlash bool
}

// URI is the canonical request-target: Path plus "?" and RawQuery when a
// query is present.
func (t *Target) URI() string {
	if t.RawQuery == "" {
		return t.Path
	}
	return t.Path + "?" + t.RawQuery
}

// Parse canonicalizes an origin-form request-target ("/a/b?x=1").
func Parse(requestURI string, opts Options) (*Target, error) {
	if requestURI == "" || requestURI[0] != '/' {
		return nil, reject("bad_path", "request-target %q is not in origin form", truncate(RedactTarget(requestURI)))
	}
	for i := 0; i < len(requestURI); i++ {
		c := requestURI[i]
		switch {
		case c == '#':
			return nil, reject("bad_path", "fragment in request-target")
		case c <= ' ' || c == 0x7f:
			return nil, reject("bad_path", "control or space byte 0x%02x in request-target", c)
		case c >= 0x80:
			return nil, reject("bad_path", "raw non-ASCII byte in request-target")
		}
	}
	rawPath, rawQuery, hasQuery := strings.Cut(requestURI, "?")
	if len(rawPath) > MaxPathBytes {
		return nil, reject("path_too_long", "path of %d bytes", len(rawPath))
	}
	t := &Target{RawPath: rawPath}
	if err := t.parsePath(rawPath, opts); err != nil {
		return nil, err
	}
	if hasQuery {
		if err := t.parseQuery(rawQuery); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (t *Target) parsePath(rawPath string, opts Options) error {
	if rawPath == "/" {
		t.Path, t.Segments = "/", []string{}
		return nil
	}
	parts := strings.Split(rawPath[1:], "/")
	trailingSlash := false
	if parts[len(parts)-1] == "" {
		trailingSlash = true
		parts = parts[:len(parts)-1]
	}
	if len(parts) > MaxSegments {
		return reject("bad_path", "%d segments", len(parts))
	}
	segs := make([]string, 0, len(parts))
	var b strings.Builder
	b.Grow(len(rawPath) + 8)
	for _, raw := range parts {
		if raw == "" {
			return reject("bad_path", "empty path segment")
		}
		if strings.ContainsAny(raw, `\;`) {
			return reject("bad_path", "backslash or path parameter in segment")
		}
		seg, err := url.PathUnescape(raw)
		if err != nil {
			return reject("bad_path", "invalid percent-encoding")
		}
		slash, err := checkSegment(seg, opts)
		if err != nil {
			return err
		}
		t.EncodedSlash = t.EncodedSlash || slash
		segs = append(segs, seg)
		b.WriteByte('/')
		b.WriteString(escapeSegment(seg))
	}
	if trailingSlash {
		b.WriteByte('/')
	}
	t.Path, t.Segments = b.String(), segs
	return nil
}

// maxDecodings bounds how many more times a decoded segment is decoded
// again to look for what it hides; one that still decodes to something
// else after that is refused.
const maxDecodings = 3

// checkSegment checks a decoded segment, and what it becomes when decoded
// again: backends and frameworks that percent-decode twice read
// /a/%252e%252e/b as /a/../b, so a dot-segment, control byte or slash is
// refused (or, for a slash, reported) at every decoding depth. It reports
// whether the segment holds a slash or backslash at some depth.
func checkSegment(seg string, opts Options) (slash bool, err error) {
	for i := 0; ; i++ {
		s, err := checkDecoded(seg, opts)
		if err != nil {
			return false, err
		}
		slash = slash || s
		if strings.IndexByte(seg, '%') < 0 {
			return slash, nil
		}
		again, err := url.PathUnescape(seg)
		if err != nil || again == seg {
			return slash, nil // not an escape to any decoder: kept literally
		}
		if i == maxDecodings {
			return false, reject("bad_path", "percent-encoding nested more than %d times", maxDecodings)
		}
		seg = again
	}
}

// checkDecoded checks one decoding of a segment.
func checkDecoded(seg string, opts Options) (slash bool, err error) {
	if seg == "." || seg == ".." {
		return false, reject("bad_path", "dot-segment")
	}
	if !utf8.ValidString(seg) {
		return false, reject("bad_path", "invalid UTF-8 in path")
	}
	for _, r := range seg {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false, reject("bad_path", "control character in path")
		}
	}
	if strings.ContainsAny(seg, `/\`) {
		slash = true
		if !opts.AllowEncodedSlash {
			return false, reject("bad_path", "encoded slash or backslash in path")
		}
		for _, sub := range strings.FieldsFunc(seg, func(r rune) bool { return r == '/' || r == '\\' }) {
			if sub == "." || sub == ".." {
				return false, reject("bad_path", "dot-segment inside an encoded segment")
			}
		}
		if strings.Contains(seg, "//") || strings.Contains(seg, `\\`) {
			return false, reject("bad_path", "empty segment inside an encoded segment")
		}
	}
	return slash, nil
}

// escapeSegment percent-encodes everything but unreserved characters and
// the sub-delimiters that carry no path meaning; ';' and '%' are always
// encoded, so the result re-parses to exactly the same segment.
func escapeSegment(s string) string {
	const hex = "0123456789ABCDEF"
	n := 0
	for i := 0; i < len(s); i++ {
		if !keepInSegment(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	buf := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if keepInSegment(c) {
			buf = append(buf, c)
			continue
		}
		buf = append(buf, '%', hex[c>>4], hex[c&15])
	}
	return string(buf)
}

func keepInSegment(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '~', '!', '$', '&', '\'', '(', ')', '*', '+', ',', '=', ':', '@':
		return true
	}
	return false
}

// parseQuery keeps every value of repeated keys and re-encodes the query
// canonically (keys sorted, values in order), so the upstream parses the
// same values the policy saw. Semicolon separators and bad escapes are
// rejected: parsers disagree on them.
func (t *Target) parseQuery(raw string) error {
	if raw == "" {
		t.Query = url.Values{}
		return nil
	}
	q, err := url.ParseQuery(raw)
	if err != nil {
		return reject("bad_query", "%v", err)
	}
	for k, vs := range q {
		if !utf8.ValidString(k) {
			return reject("bad_query", "invalid UTF-8 in query")
		}
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return reject("bad_query", "invalid UTF-8 in query")
			}
		}
	}
	t.Query, t.RawQuery = q, q.Encode()
	return nil
}

// Host returns the canonical host: lowercase, port removed, trailing dot
// removed. It rejects hosts with characters no DNS name or IP literal has.
func Host(hostport string) (string, error) {
	h := strings.ToLower(hostport)
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return "", reject("bad_host", "unterminated IPv6 literal")
		}
		rest := h[end+1:]
		if rest != "" && !validPort(rest) {
			return "", reject("bad_host", "bad port")
		}
		return h[:end+1], nil
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		if !validPort(h[i:]) {
			return "", reject("bad_host", "bad port")
		}
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_') {
			return "", reject("bad_host", "invalid character in host")
		}
	}
	return h, nil
}

func validPort(s string) bool {
	if len(s) < 2 || s[0] != ':' || len(s) > 6 {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// RedactTarget returns a request-target as received without what may hold
// a credential: the query, the fragment and the user information of an
// authority ("http://user:pass@host/p?access_token=x#t" gives
// "http://host/p"). Logs and error details show this, never the target.
func RedactTarget(target string) string {
	if i := strings.IndexAny(target, "?#"); i >= 0 {
		target = target[:i]
	}
	start := 0
	if i := strings.Index(target, "//"); i >= 0 {
		start = i + 2 // "scheme://authority/..." or "//authority/..."
	} else if target != "" && target[0] != '/' {
		start = 0 // authority-form ("user:pass@host:port")
	} else {
		return target
	}
	end := len(target)
	if i := strings.IndexByte(target[start:], '/'); i >= 0 {
		end = start + i
	}
	if at := strings.LastIndexByte(target[start:end], '@'); at >= 0 {
		return target[:start] + target[start+at+1:]
	}
	return target
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
