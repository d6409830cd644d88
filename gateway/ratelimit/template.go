package ratelimit

import (
	"fmt"
	"strings"
)

// Values are the request facts a route's key templates may use. The
// gateway fills them from verified identity and the canonical request
// only, never from raw headers.
type Values struct {
	Subject    string // {subject}: identity.subject
	Issuer     string // {issuer}: identity.issuer
	KeyID      string // {key_id}: identity.key_id
	RemoteAddr string // {remote_addr}: request.remote_addr (the peer or first untrusted hop)
	Host       string // {host}: request.host
	Method     string // {method}: request.method
}

type placeholder uint8

const (
	phLiteral placeholder = iota
	phRoute
	phSubject
	phIssuer
	phKeyID
	phRemoteAddr
	phHost
	phMethod
)

var placeholders = map[string]placeholder{
	"route":       phRoute,
	"subject":     phSubject,
	"issuer":      phIssuer,
	"key_id":      phKeyID,
	"remote_addr": phRemoteAddr,
	"host":        phHost,
	"method":      phMethod,
}

// template is a key pattern parsed once at configuration time, such as
// "caller:{subject}".
type template struct {
	parts []tmplPart
	size  int // literal bytes, to size the expansion
}

type tmplPart struct {
	ph  placeholder
	lit string
}

// parseTemplate parses s. Placeholders are {name} with a name from the
// fixed set above; any other brace is an error, so a typo never silently
// becomes a shared literal key.
func parseTemplate(s string) (template, error) {
	var t template
	for rest := s; rest != ""; {
		i := strings.IndexAny(rest, "{}")
		if i < 0 {
			t.parts = append(t.parts, tmplPart{lit: rest})
			t.size += len(rest)
			break
		}
		if i > 0 {
			t.parts = append(t.parts, tmplPart{lit: rest[:i]})
			t.size += i
		}
		if rest[i] == '}' {
			return template{}, fmt.Errorf("%q: unmatched '}'", s)
		}
		end := strings.IndexByte(rest[i:], '}')
		if end < 0 {
			return template{}, fmt.Errorf("%q: unterminated placeholder", s)
		}
		name := rest[i+1 : i+end]
		ph, ok := placeholders[name]
		if !ok {
			return template{}, fmt.Errorf("%q: unknown placeholder {%s} (want one of {route}, {subject}, {issuer}, {key_id}, {remote_addr}, {host}, {method})", s, name)
		}
		t.parts = append(t.parts, tmplPart{ph: ph})
		rest = rest[i+end+1:]
	}
	return t, nil
}

// expand substitutes v. An empty value expands to nothing: callers without
// a subject share the key "caller:" — one budget for all anonymous callers.
func (t *template) expand(route string, v *Values) string {
	if len(t.parts) == 1 && t.parts[0].ph == phLiteral {
		return t.parts[0].lit
	}
	var b strings.Builder
	b.Grow(t.size + 32)
	for _, p := range t.parts {
		switch p.ph {
		case phLiteral:
			b.WriteString(p.lit)
		case phRoute:
			b.WriteString(route)
		case phSubject:
			b.WriteString(v.Subject)
		case phIssuer:
			b.WriteString(v.Issuer)
		case phKeyID:
			b.WriteString(v.KeyID)
		case phRemoteAddr:
			b.WriteString(v.RemoteAddr)
		case phHost:
			b.WriteString(v.Host)
		case phMethod:
			b.WriteString(v.Method)
		}
	}
	return b.String()
}
