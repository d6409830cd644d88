package log

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/policygate/policygate/decision"
)

// The event encoder. Every line is hashed as written (see chain.go), so
// the bytes of an event are part of the log's format: this encoder writes
// exactly what encoding/json.Marshal writes for the same event — members in
// struct order with the same omitempty rules, map keys sorted, strings with
// HTML characters, control characters, invalid UTF-8 and U+2028/U+2029
// escaped the same way, numbers formatted the same way — without reflection.
// Values of types it does not know are written by encoding/json itself, and
// an event it cannot encode (a NaN, an invalid json.Number) is handed whole
// to encoding/json, so errors are encoding/json's too. encode_test.go holds
// the two encoders to the same bytes, fuzzing included.

// wire is the encoded form of an event: the event's members, then erased.
type wire struct {
	*decision.Event
	Erased []string `json:"erased,omitempty"`
}

// encodeScratch holds the buffers events are encoded into before they are
// copied out at their exact size; keys is scratch for sorting map keys,
// shared by nested maps as a stack. src, m, erased and path serve direct
// encoding (encode_input.go): the input written in place of ev.Input, the
// masker whose rules apply to it, the pointers erased from it and the
// path of the value being written.
type encodeScratch struct {
	b    []byte
	keys []string

	src    *decision.Input
	m      *masker
	erased []string
	path   []string
}

var encodeScratches = sync.Pool{New: func() any {
	return &encodeScratch{b: make([]byte, 0, 4096), keys: make([]string, 0, 64), path: make([]string, 0, 16)}
}}

// maxPooledScratch keeps one huge event from pinning its buffer in the pool.
const maxPooledScratch = 256 << 10

// encodeEvent returns the JSON object for ev with erased (no newline).
func encodeEvent(ev *decision.Event, erased []string) ([]byte, error) {
	s := encodeScratches.Get().(*encodeScratch)
	b, ok := s.event(s.b[:0], ev, erased)
	var out []byte
	if ok {
		out = make([]byte, len(b), len(b)+1) // room for Encode's newline
		copy(out, b)
	}
	if cap(b) <= maxPooledScratch {
		s.b, s.keys = b[:0], s.keys[:0]
		encodeScratches.Put(s)
	}
	if ok {
		return out, nil
	}
	return json.Marshal(wire{Event: ev, Erased: erased})
}

// event appends the members of decision.Event in declaration order, with
// the omitempty rules of its tags. ok is false when some value cannot be
// encoded; the caller then lets encoding/json report why.
func (s *encodeScratch) event(b []byte, ev *decision.Event, erased []string) ([]byte, bool) {
	ok := true
	b = append(b, `{"decision_id":`...)
	b = appendString(b, ev.DecisionID)
	b = append(b, `,"timestamp":"`...)
	// AppendText writes what MarshalJSON quotes (strict RFC 3339), and
	// fails where it fails.
	ts, err := ev.Timestamp.AppendText(b)
	if err != nil {
		return b, false
	}
	b = append(ts, '"')
	b = append(b, `,"path":`...)
	b = appendString(b, ev.Path)
	b = append(b, `,"input":`...)
	if s.src != nil {
		var iok bool
		b, iok = s.input(b)
		ok = ok && iok
		erased = s.erased
	} else {
		b, ok = s.value(b, ev.Input, ok)
	}
	b = append(b, `,"result":`...)
	b, ok = s.value(b, ev.Result, ok)
	if len(ev.Bundles) > 0 {
		b = append(b, `,"bundles":{`...)
		start, end := sortKeys(s, ev.Bundles)
		for i := start; i < end; i++ {
			if i > start {
				b = append(b, ',')
			}
			k := s.keys[i]
			b = appendString(b, k)
			b = append(b, `:{"revision":`...)
			b = appendString(b, ev.Bundles[k].Revision)
			b = append(b, '}')
		}
		s.keys = s.keys[:start]
		b = append(b, '}')
	}
	if len(ev.Labels) > 0 {
		b = append(b, `,"labels":`...)
		b = s.stringMap(b, ev.Labels)
	}
	b = append(b, `,"metrics":`...)
	if ev.Metrics == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '{')
		start, end := sortKeys(s, ev.Metrics)
		for i := start; i < end; i++ {
			if i > start {
				b = append(b, ',')
			}
			k := s.keys[i]
			b = appendString(b, k)
			b = append(b, ':')
			b = strconv.AppendInt(b, ev.Metrics[k], 10)
		}
		s.keys = s.keys[:start]
		b = append(b, '}')
	}
	b = append(b, `,"route":`...)
	b = appendString(b, ev.Route)
	b = append(b, `,"subject":`...)
	b = appendString(b, ev.Subject)
	b = append(b, `,"identity_method":`...)
	b = appendString(b, ev.IdentityMethod)
	b = append(b, `,"decision":`...)
	b = appendString(b, string(ev.Decision))
	b = append(b, `,"allowed":`...)
	b = strconv.AppendBool(b, ev.Allowed)
	if ev.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, ev.Reason)
	}
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(ev.Status), 10)
	if ev.UpstreamStatus != 0 {
		b = append(b, `,"upstream_status":`...)
		b = strconv.AppendInt(b, int64(ev.UpstreamStatus), 10)
	}
	if ev.Error != "" {
		b = append(b, `,"error":`...)
		b = appendString(b, ev.Error)
	}
	b = append(b, `,"cache_hit":`...)
	b = strconv.AppendBool(b, ev.CacheHit)
	if ev.RateLimit != nil {
		b = append(b, `,"rate_limit":`...)
		b, ok = s.value(b, ev.RateLimit, ok)
	}
	if ev.Phase != "" {
		b = append(b, `,"phase":`...)
		b = appendString(b, ev.Phase)
	}
	if len(erased) > 0 {
		b = append(b, `,"erased":`...)
		b = s.strings(b, erased)
	}
	b = append(b, '}')
	return b, ok
}

// value appends v as encoding/json would. Once ok is false the output is
// discarded, so the rest is written carelessly.
func (s *encodeScratch) value(b []byte, v any, ok bool) ([]byte, bool) {
	return s.encode(b, v, ok, false)
}

// encode writes v as JSON. With nilEmpty, nil maps and lists are written
// empty ({} / []) as Input.Map's deep copy holds them; otherwise null, as
// json.Marshal writes them.
func (s *encodeScratch) encode(b []byte, v any, ok, nilEmpty bool) ([]byte, bool) {
	switch t := v.(type) {
	case nil:
		return append(b, "null"...), ok
	case string:
		return appendString(b, t), ok
	case bool:
		return strconv.AppendBool(b, t), ok
	case float64:
		return appendFloat(b, t, ok)
	case json.Number:
		n := string(t)
		if n == "" {
			n = "0"
		}
		if !isValidNumber(n) {
			return b, false
		}
		return append(b, n...), ok
	case int:
		return strconv.AppendInt(b, int64(t), 10), ok
	case int64:
		return strconv.AppendInt(b, t, 10), ok
	case map[string]any:
		if t == nil {
			if nilEmpty {
				return append(b, "{}"...), ok
			}
			return append(b, "null"...), ok
		}
		b = append(b, '{')
		start, end := sortKeys(s, t)
		for i := start; i < end; i++ {
			if i > start {
				b = append(b, ',')
			}
			k := s.keys[i]
			b = appendString(b, k)
			b = append(b, ':')
			b, ok = s.encode(b, t[k], ok, nilEmpty)
		}
		s.keys = s.keys[:start]
		return append(b, '}'), ok
	case []any:
		if t == nil {
			if nilEmpty {
				return append(b, "[]"...), ok
			}
			return append(b, "null"...), ok
		}
		b = append(b, '[')
		for i, x := range t {
			if i > 0 {
				b = append(b, ',')
			}
			b, ok = s.encode(b, x, ok, nilEmpty)
		}
		return append(b, ']'), ok
	case []string:
		if nilEmpty {
			return s.stringList(b, t), ok
		}
		return s.strings(b, t), ok
	case map[string]string:
		if nilEmpty && t == nil {
			return append(b, "{}"...), ok
		}
		return s.stringMap(b, t), ok
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return b, false
	}
	return append(b, raw...), ok
}

func (s *encodeScratch) strings(b []byte, ss []string) []byte {
	if ss == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, x := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, x)
	}
	return append(b, ']')
}

func (s *encodeScratch) stringMap(b []byte, m map[string]string) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	b = append(b, '{')
	start, end := sortKeys(s, m)
	for i := start; i < end; i++ {
		if i > start {
			b = append(b, ',')
		}
		k := s.keys[i]
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, m[k])
	}
	s.keys = s.keys[:start]
	return append(b, '}')
}

// sortKeys pushes the keys of m onto s.keys and sorts them: they are
// s.keys[start:end] until the caller truncates s.keys back to start.
func sortKeys[V any](s *encodeScratch, m map[string]V) (start, end int) {
	start = len(s.keys)
	for k := range m {
		s.keys = append(s.keys, k)
	}
	end = len(s.keys)
	slices.Sort(s.keys[start:end])
	return start, end
}

// appendFloat formats f as encoding/json does: like ES6, 'f' between 1e-6
// and 1e21, else 'e' with the exponent unpadded. NaN and ±Inf cannot be
// encoded.
func appendFloat(b []byte, f float64, ok bool) ([]byte, bool) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return b, false
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 → e-9
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, ok
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string the way encoding/json does with
// HTML escaping on: ", \ and control characters escaped (\b \f \n \r \t
// by name), <, > and & as \u003c \u003e \u0026, invalid UTF-8 as \ufffd,
// U+2028 and U+2029 as \u2028 and \u2029.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if htmlSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// htmlSafe marks the ASCII bytes encoding/json writes unescaped when it
// escapes HTML: from space to DEL, except ", \, <, > and &.
var htmlSafe = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		switch c {
		case '"', '\\', '<', '>', '&':
		default:
			t[c] = true
		}
	}
	return t
}()

// isValidNumber reports whether s is a JSON number literal (RFC 8259),
// the check encoding/json makes before writing a json.Number.
func isValidNumber(s string) bool {
	if s == "" {
		return false
	}
	if s[0] == '-' {
		s = s[1:]
		if s == "" {
			return false
		}
	}
	switch {
	case s[0] == '0':
		s = s[1:]
	case '1' <= s[0] && s[0] <= '9':
		s = s[1:]
		for len(s) > 0 && '0' <= s[0] && s[0] <= '9' {
			s = s[1:]
		}
	default:
		return false
	}
	if len(s) >= 2 && s[0] == '.' && '0' <= s[1] && s[1] <= '9' {
		s = s[2:]
		for len(s) > 0 && '0' <= s[0] && s[0] <= '9' {
			s = s[1:]
		}
	}
	if len(s) >= 2 && (s[0] == 'e' || s[0] == 'E') {
		s = s[1:]
		if s[0] == '+' || s[0] == '-' {
			s = s[1:]
			if s == "" {
				return false
			}
		}
		for len(s) > 0 && '0' <= s[0] && s[0] <= '9' {
			s = s[1:]
		}
	}
	return s == ""
}
