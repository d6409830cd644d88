package log

import (
	"slices"
	"strconv"

	"github.com/policygate/policygate/decision"
)

// Direct encoding of an event's input. The general path copies the input
// into plain maps (decision.Input.Map), erases credentials and mask paths
// from the copy (masker.apply) and encodes the result. When no mask path
// applies — none configured, none from the policy — and the front door
// added no fields of its own (Input.Extra, whose Envoy shapes have masking
// rules of their own), the erasures are exactly the credential rules on
// request headers, query and body. This encoder applies those rules while
// it writes the decision.Input itself, and writes the bytes the general
// path would have written: the same members in the same (sorted) order,
// the same values — Map turns nil lists and maps into empty ones and
// []string and map[string]string into their JSON-value forms, which only
// matters for nil, and the body copy is what the erasure rules see — and
// the same erased pointers. encode_input_test.go holds the two paths to the
// same bytes, fuzzing included.

// directInput reports whether ev's input can be encoded directly.
func (m *masker) directInput(ev *decision.Event) bool {
	return ev.Input == nil && ev.Source != nil && len(m.paths) == 0 && len(ev.Mask) == 0 && len(ev.Source.Extra) == 0
}

// encodeDirect is encodeEvent for an event whose input m.directInput
// accepts. ok is false when some value cannot be encoded; the caller then
// takes the general path, which reports the error.
func encodeDirect(ev *decision.Event, m *masker) (line []byte, ok bool) {
	s := encodeScratches.Get().(*encodeScratch)
	s.src, s.m, s.erased = ev.Source, m, s.erased[:0]
	b, ok := s.event(s.b[:0], ev, nil)
	if ok {
		line = make([]byte, len(b), len(b)+1)
		copy(line, b)
	}
	s.src, s.m = nil, nil
	if cap(b) <= maxPooledScratch {
		s.b, s.keys, s.path = b[:0], s.keys[:0], s.path[:0]
		clear(s.erased)
		s.erased = s.erased[:0]
		encodeScratches.Put(s)
	}
	return line, ok
}

// input writes s.src as Map would build it, erased as apply would erase
// it, and collects the erased pointers in s.erased, sorted.
func (s *encodeScratch) input(b []byte) ([]byte, bool) {
	in := s.src
	ok := true
	id := &in.Identity
	b = append(b, `{"identity":{"authenticated":`...)
	b = strconv.AppendBool(b, id.Authenticated)
	b = append(b, `,"claims":`...)
	if id.Claims == nil {
		b = append(b, "{}"...)
	} else {
		b, ok = s.copied(b, id.Claims, ok)
	}
	b = append(b, `,"groups":`...)
	b = s.stringList(b, id.Groups)
	b = append(b, `,"issuer":`...)
	b = appendString(b, id.Issuer)
	b = append(b, `,"key_id":`...)
	b = appendString(b, id.KeyID)
	b = append(b, `,"method":`...)
	b = appendString(b, id.Method)
	b = append(b, `,"spiffe_id":`...)
	b = appendString(b, id.SpiffeID)
	b = append(b, `,"subject":`...)
	b = appendString(b, id.Subject)

	r := &in.Request
	b = append(b, `},"request":{"body":`...)
	s.path = append(s.path[:0], "request", "body")
	b, ok = s.body(b, r.Body, ok)
	b = append(b, `,"body_truncated":`...)
	b = strconv.AppendBool(b, r.BodyTruncated)
	b = append(b, `,"headers":{`...)
	start, end := sortKeys(s, r.Headers)
	first := true
	for i := start; i < end; i++ {
		k := s.keys[i]
		if s.m.secretHeader(k) {
			s.erased = append(s.erased, "/input/request/headers/"+pointerEscape(k))
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendString(b, k)
		b = append(b, ':')
		v, redacted := s.m.redactURIValue(r.Headers[k])
		if redacted {
			s.erased = append(s.erased, "/input/request/headers/"+pointerEscape(k))
		}
		b = appendString(b, v)
	}
	s.keys = s.keys[:start]
	b = append(b, `},"host":`...)
	b = appendString(b, r.Host)
	b = append(b, `,"id":`...)
	b = appendString(b, r.ID)
	b = append(b, `,"method":`...)
	b = appendString(b, r.Method)
	b = append(b, `,"path":`...)
	b = appendString(b, r.Path)
	b = append(b, `,"query":{`...)
	start, end = sortKeys(s, r.Query)
	first = true
	for i := start; i < end; i++ {
		k := s.keys[i]
		if s.m.secretField(k) {
			s.erased = append(s.erased, "/input/request/query/"+pointerEscape(k))
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendString(b, k)
		b = append(b, ':')
		b = s.stringList(b, r.Query[k])
	}
	s.keys = s.keys[:start]
	b = append(b, `},"raw_path":`...)
	b = appendString(b, r.RawPath)
	b = append(b, `,"remote_addr":`...)
	b = appendString(b, r.RemoteAddr)
	b = append(b, `,"scheme":`...)
	b = appendString(b, r.Scheme)
	b = append(b, `,"segments":`...)
	b = s.stringList(b, r.Segments)

	b = append(b, `},"route":{"labels":`...)
	if in.Route.Labels == nil {
		b = append(b, "{}"...)
	} else {
		b = s.stringMap(b, in.Route.Labels)
	}
	b = append(b, `,"name":`...)
	b = appendString(b, in.Route.Name)
	b = append(b, "}}"...)
	slices.Sort(s.erased)
	return b, ok
}

// stringList writes a list of strings as Map copies it: nil is empty.
func (s *encodeScratch) stringList(b []byte, ss []string) []byte {
	if ss == nil {
		return append(b, "[]"...)
	}
	return s.strings(b, ss)
}

// copied writes v as Map's deep copy holds it: nil maps and lists (of the
// kinds the copy converts) are empty, the rest as written by value.
func (s *encodeScratch) copied(b []byte, v any, ok bool) ([]byte, bool) {
	return s.encode(b, v, ok, true)
}

// body writes the request body as Map copies it with the fields apply
// erases left out: at any depth of objects and arrays, a field whose name
// is a credential (masker.secretField). s.path holds the unescaped
// segments below input of the value being written.
func (s *encodeScratch) body(b []byte, v any, ok bool) ([]byte, bool) {
	switch t := v.(type) {
	case map[string]any:
		if t == nil {
			return append(b, "{}"...), ok
		}
		b = append(b, '{')
		start, end := sortKeys(s, t)
		first := true
		for i := start; i < end; i++ {
			k := s.keys[i]
			if s.m.secretField(k) {
				s.erased = append(s.erased, toPointer(append(s.path, k)))
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = appendString(b, k)
			b = append(b, ':')
			s.path = append(s.path, k)
			b, ok = s.body(b, t[k], ok)
			s.path = s.path[:len(s.path)-1]
		}
		s.keys = s.keys[:start]
		return append(b, '}'), ok
	case map[string]string:
		// The copy is a map[string]any, which the erasure reaches.
		if t == nil {
			return append(b, "{}"...), ok
		}
		b = append(b, '{')
		start, end := sortKeys(s, t)
		first := true
		for i := start; i < end; i++ {
			k := s.keys[i]
			if s.m.secretField(k) {
				s.erased = append(s.erased, toPointer(append(s.path, k)))
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, t[k])
		}
		s.keys = s.keys[:start]
		return append(b, '}'), ok
	case []any:
		if t == nil {
			return append(b, "[]"...), ok
		}
		b = append(b, '[')
		for i, x := range t {
			if i > 0 {
				b = append(b, ',')
			}
			s.path = append(s.path, strconv.Itoa(i))
			b, ok = s.body(b, x, ok)
			s.path = s.path[:len(s.path)-1]
		}
		return append(b, ']'), ok
	}
	return s.copied(b, v, ok)
}
