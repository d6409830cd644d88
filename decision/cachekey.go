package decision

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"math"
	"slices"
	"sync"
)

// The cache key is a security boundary: a collision would hand one
// caller's decision to another. It is therefore a SHA-256 digest of an
// injective encoding: every value is type-tagged and length-prefixed, maps
// are written in sorted key order, and an absent field is distinct from
// every present value. Two inputs that differ in anything the rule can read
// (or in the identity, which is always written whole) get different keys,
// short of a SHA-256 collision; no equality check on hit is needed.
//
// request.id is never written: it is unique per request, so writing it
// would make every key unique. Rules that read it explicitly are reported
// non-deterministic by their CachePolicy and are not cached by default.

// Tags of the canonical encoding.
const (
	tagAbsent  = 'A'
	tagNull    = 'n'
	tagTrue    = 't'
	tagFalse   = 'f'
	tagString  = 's'
	tagNumber  = 'N' // json.Number, as written
	tagFloat   = 'F'
	tagInt     = 'I'
	tagArray   = 'a'
	tagObject  = 'o'
	tagJSON    = 'j' // any other Go type, as encoding/json writes it
	tagOmitted = 'X' // request.id
)

// keyEncoder writes the canonical encoding. keys is scratch space for
// sorting map keys: each map sorts its keys at the end of it and truncates
// them when done, so nested maps share it without allocating.
type keyEncoder struct {
	b    []byte
	keys []string
}

var keyEncoders = sync.Pool{New: func() any {
	return &keyEncoder{b: make([]byte, 0, 1024), keys: make([]string, 0, 64)}
}}

// newCacheKey derives the key of a decision of path, under the activation
// gen, for in, reading only fields (and the whole identity). ok is false
// when some value cannot be encoded; such a request is not cached.
func newCacheKey(gen uint64, path string, fields [][]string, in *Input) (key CacheKey, ok bool) {
	e := keyEncoders.Get().(*keyEncoder)
	e.b, e.keys = e.b[:0], e.keys[:0]
	e.b = append(e.b, "policygate.decision.cache.v1\x00"...)
	e.b = binary.BigEndian.AppendUint64(e.b, gen)
	e.string(path)
	ok = e.identity(&in.Identity)
	e.uvarint(uint64(len(fields)))
	for _, f := range fields {
		if !ok {
			break
		}
		e.uvarint(uint64(len(f)))
		for _, seg := range f {
			e.string(seg)
		}
		ok = e.inputField(f, in)
	}
	if ok {
		key = sha256.Sum256(e.b)
	}
	// Pooled buffers stay small. The keys they still hold are released when
	// the pool is, at the next garbage collections.
	if cap(e.b) <= 64<<10 && cap(e.keys) <= 4096 {
		keyEncoders.Put(e)
	}
	return key, ok
}

// inputField writes the value at path below input. Any other top-level
// name is a front door's extra field (Input.Extra), or absent. Fields of
// request and route this encoder does not know (one added to Input later)
// write the whole section: caching less precisely is always safe, caching
// on a field never written never is.
func (e *keyEncoder) inputField(path []string, in *Input) bool {
	if len(path) == 0 {
		return e.wholeInput(in)
	}
	switch path[0] {
	case "request":
		return e.request(path[1:], &in.Request)
	case "identity":
		return e.identity(&in.Identity)
	case "route":
		e.route(path[1:], &in.Route)
		return true
	}
	return e.value(descend(in.Extra, path))
}

func (e *keyEncoder) wholeInput(in *Input) bool {
	e.tag(tagObject)
	e.uvarint(3)
	e.string("identity")
	if !e.identity(&in.Identity) {
		return false
	}
	e.string("request")
	if !e.request(nil, &in.Request) {
		return false
	}
	e.string("route")
	e.route(nil, &in.Route)
	e.string("extra")
	return e.value(in.Extra)
}

func (e *keyEncoder) request(path []string, r *Request) bool {
	if len(path) == 0 {
		e.tag(tagObject)
		e.uvarint(12)
		// Keys in sorted order, as for any object.
		e.string("body")
		ok := e.value(r.Body)
		e.string("body_truncated")
		e.bool(r.BodyTruncated)
		e.string("headers")
		e.stringMap(r.Headers)
		e.string("host")
		e.taggedString(r.Host)
		e.string("id")
		e.tag(tagOmitted)
		e.string("method")
		e.taggedString(r.Method)
		e.string("path")
		e.taggedString(r.Path)
		e.string("query")
		e.query(r.Query)
		e.string("raw_path")
		e.taggedString(r.RawPath)
		e.string("remote_addr")
		e.taggedString(r.RemoteAddr)
		e.string("scheme")
		e.taggedString(r.Scheme)
		e.string("segments")
		e.strings(r.Segments)
		return ok
	}
	switch path[0] {
	case "id":
		e.tag(tagOmitted)
	case "method":
		e.taggedString(r.Method)
	case "scheme":
		e.taggedString(r.Scheme)
	case "host":
		e.taggedString(r.Host)
	case "path":
		e.taggedString(r.Path)
	case "raw_path":
		e.taggedString(r.RawPath)
	case "remote_addr":
		e.taggedString(r.RemoteAddr)
	case "body_truncated":
		e.bool(r.BodyTruncated)
	case "segments":
		e.strings(r.Segments)
	case "headers":
		if len(path) == 1 {
			e.stringMap(r.Headers)
		} else if v, ok := r.Headers[path[1]]; ok {
			e.taggedString(v)
		} else {
			e.tag(tagAbsent)
		}
	case "query":
		if len(path) == 1 {
			e.query(r.Query)
		} else if v, ok := r.Query[path[1]]; ok {
			e.strings(v)
		} else {
			e.tag(tagAbsent)
		}
	case "body":
		return e.value(descend(r.Body, path[1:]))
	default:
		return e.request(nil, r)
	}
	return true
}

func (e *keyEncoder) identity(id *Identity) bool {
	e.tag(tagObject)
	e.uvarint(8)
	e.string("authenticated")
	e.bool(id.Authenticated)
	e.string("claims")
	ok := e.value(id.Claims)
	e.string("groups")
	e.strings(id.Groups)
	e.string("issuer")
	e.taggedString(id.Issuer)
	e.string("key_id")
	e.taggedString(id.KeyID)
	e.string("method")
	e.taggedString(id.Method)
	e.string("spiffe_id")
	e.taggedString(id.SpiffeID)
	e.string("subject")
	e.taggedString(id.Subject)
	return ok
}

func (e *keyEncoder) route(path []string, rt *Route) {
	if len(path) == 0 {
		e.tag(tagObject)
		e.uvarint(2)
		e.string("labels")
		e.stringMap(rt.Labels)
		e.string("name")
		e.taggedString(rt.Name)
		return
	}
	switch path[0] {
	case "name":
		e.taggedString(rt.Name)
	case "labels":
		if len(path) == 1 {
			e.stringMap(rt.Labels)
		} else if v, ok := rt.Labels[path[1]]; ok {
			e.taggedString(v)
		} else {
			e.tag(tagAbsent)
		}
	default:
		e.route(nil, rt)
	}
}

// absent marks a path that leads nowhere in a JSON value.
type absent struct{}

// descend follows object keys into a JSON-shaped value. It stops at the
// first value that is not an object: the whole of that value is written,
// which covers whatever the rule reads below it.
func descend(v any, path []string) any {
	for _, k := range path {
		switch t := v.(type) {
		case map[string]any:
			x, ok := t[k]
			if !ok {
				return absent{}
			}
			v = x
		case map[string]string:
			x, ok := t[k]
			if !ok {
				return absent{}
			}
			v = x
		case nil:
			return absent{}
		default:
			return v
		}
	}
	return v
}

func (e *keyEncoder) value(v any) bool {
	switch t := v.(type) {
	case absent:
		e.tag(tagAbsent)
	case nil:
		e.tag(tagNull)
	case bool:
		e.bool(t)
	case string:
		e.taggedString(t)
	case json.Number:
		e.tag(tagNumber)
		e.string(string(t))
	case float64:
		e.tag(tagFloat)
		e.b = binary.BigEndian.AppendUint64(e.b, math.Float64bits(t))
	case int:
		e.tag(tagInt)
		e.b = binary.BigEndian.AppendUint64(e.b, uint64(t))
	case int64:
		e.tag(tagInt)
		e.b = binary.BigEndian.AppendUint64(e.b, uint64(t))
	case []string:
		e.strings(t)
	case map[string]string:
		e.stringMap(t)
	case map[string][]string:
		e.query(t)
	case []any:
		e.tag(tagArray)
		e.uvarint(uint64(len(t)))
		for _, x := range t {
			if !e.value(x) {
				return false
			}
		}
	case map[string]any:
		e.tag(tagObject)
		e.uvarint(uint64(len(t)))
		start, end := sortKeys(e, t)
		defer e.dropKeys(start)
		for i := start; i < end; i++ {
			k := e.keys[i]
			e.string(k)
			if !e.value(t[k]) {
				return false
			}
		}
	default:
		raw, err := json.Marshal(t)
		if err != nil {
			return false
		}
		e.tag(tagJSON)
		e.uvarint(uint64(len(raw)))
		e.b = append(e.b, raw...)
	}
	return true
}

// sortKeys appends the keys of m to e.keys and sorts them; they are
// e.keys[start:end] until dropKeys(start).
func sortKeys[V any](e *keyEncoder, m map[string]V) (start, end int) {
	start = len(e.keys)
	e.keys = slices.Grow(e.keys, len(m))
	for k := range m {
		e.keys = append(e.keys, k)
	}
	end = len(e.keys)
	slices.Sort(e.keys[start:end])
	return start, end
}

func (e *keyEncoder) dropKeys(start int) { e.keys = e.keys[:start] }

func (e *keyEncoder) tag(t byte) { e.b = append(e.b, t) }

func (e *keyEncoder) uvarint(n uint64) { e.b = binary.AppendUvarint(e.b, n) }

func (e *keyEncoder) string(s string) {
	e.uvarint(uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *keyEncoder) taggedString(s string) {
	e.tag(tagString)
	e.string(s)
}

func (e *keyEncoder) bool(v bool) {
	if v {
		e.tag(tagTrue)
	} else {
		e.tag(tagFalse)
	}
}

func (e *keyEncoder) strings(ss []string) {
	e.tag(tagArray)
	e.uvarint(uint64(len(ss)))
	for _, s := range ss {
		e.taggedString(s)
	}
}

func (e *keyEncoder) stringMap(m map[string]string) {
	e.tag(tagObject)
	e.uvarint(uint64(len(m)))
	start, end := sortKeys(e, m)
	for i := start; i < end; i++ {
		k := e.keys[i]
		e.string(k)
		e.taggedString(m[k])
	}
	e.dropKeys(start)
}

func (e *keyEncoder) query(q map[string][]string) {
	e.tag(tagObject)
	e.uvarint(uint64(len(q)))
	start, end := sortKeys(e, q)
	for i := start; i < end; i++ {
		k := e.keys[i]
		e.string(k)
		e.strings(q[k])
	}
	e.dropKeys(start)
}
