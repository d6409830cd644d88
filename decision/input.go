// Package decision owns the policy decision contract: the canonical Input a
// policy sees, the Result it returns, and the Engine that decides a request
// (cache → evaluate → interpret → log).
//
// It must not import gateway, bundles, xds or net/http; OPA itself lives only
// in decision/rego, decision logging in decision/log.
//
// Concurrency: an Engine is safe for concurrent use. The active policy is an
// immutable value behind an atomic pointer; each Decide call loads it once,
// so one request is never decided by two revisions. Cache keys include the
// activation, so a new one makes every cached decision unreachable at once;
// cached Results are shared between requests and never modified.
package decision

// Input is the document a policy sees as `input`. The gateway builds it once
// per request from verified facts only; see the README for the contract.
type Input struct {
	Request  Request  `json:"request"`
	Identity Identity `json:"identity"`
	Route    Route    `json:"route"`
	// Extra holds front-door-specific top-level fields (ext_authz adds the
	// opa-envoy-plugin shape: attributes, parsed_path, ...). Keys never
	// replace request, identity or route.
	Extra map[string]any `json:"-"`
}

// Request is the canonical view of the HTTP request: Path is exactly the path
// forwarded upstream.
type Request struct {
	ID            string              `json:"id"`
	Method        string              `json:"method"`
	Scheme        string              `json:"scheme"`
	Host          string              `json:"host"`
	Path          string              `json:"path"`
	RawPath       string              `json:"raw_path"`
	Segments      []string            `json:"segments"`
	Query         map[string][]string `json:"query"`
	Headers       map[string]string   `json:"headers"`
	Body          any                 `json:"body"`
	BodyTruncated bool                `json:"body_truncated"`
	RemoteAddr    string              `json:"remote_addr"`
}

// Identity holds what authentication verified about the caller. Nothing in
// it is copied from an unverified header.
type Identity struct {
	Authenticated bool           `json:"authenticated"`
	Method        string         `json:"method"` // "mtls", "jwt", "api_key" or "none"
	Subject       string         `json:"subject"`
	Issuer        string         `json:"issuer"`
	SpiffeID      string         `json:"spiffe_id"`
	KeyID         string         `json:"key_id"`
	Groups        []string       `json:"groups"`
	Claims        map[string]any `json:"claims"`
}

// Identity methods.
const (
	MethodNone   = "none"
	MethodAPIKey = "api_key"
	MethodJWT    = "jwt"
	MethodMTLS   = "mtls"
)

// Anonymous is the identity of a caller that presented no credential.
func Anonymous() Identity {
	return Identity{Method: MethodNone, Groups: []string{}, Claims: map[string]any{}}
}

// Route names the configured route that matched, so one policy can serve
// many routes.
type Route struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
}

// Map returns the input as plain JSON-shaped values (map[string]any, []any,
// string, bool, float64-compatible numbers). The log masks this copy, never
// the Input itself.
func (in *Input) Map() map[string]any {
	r := &in.Request
	query := make(map[string]any, len(r.Query))
	for k, vs := range r.Query {
		query[k] = stringsToAny(vs)
	}
	headers := make(map[string]any, len(r.Headers))
	for k, v := range r.Headers {
		headers[k] = v
	}
	id := &in.Identity
	labels := make(map[string]any, len(in.Route.Labels))
	for k, v := range in.Route.Labels {
		labels[k] = v
	}
	m := make(map[string]any, 3+len(in.Extra))
	for k, v := range in.Extra {
		m[k] = deepCopy(v)
	}
	m["request"] = map[string]any{
		"id":             r.ID,
		"method":         r.Method,
		"scheme":         r.Scheme,
		"host":           r.Host,
		"path":           r.Path,
		"raw_path":       r.RawPath,
		"segments":       stringsToAny(r.Segments),
		"query":          query,
		"headers":        headers,
		"body":           deepCopy(r.Body),
		"body_truncated": r.BodyTruncated,
		"remote_addr":    r.RemoteAddr,
	}
	m["identity"] = map[string]any{
		"authenticated": id.Authenticated,
		"method":        id.Method,
		"subject":       id.Subject,
		"issuer":        id.Issuer,
		"spiffe_id":     id.SpiffeID,
		"key_id":        id.KeyID,
		"groups":        stringsToAny(id.Groups),
		"claims":        deepCopy(id.Claims),
	}
	m["route"] = map[string]any{
		"name":   in.Route.Name,
		"labels": labels,
	}
	return m
}

func stringsToAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// deepCopy copies JSON-shaped values so that masking a logged copy can never
// reach the value the request path still uses.
func deepCopy(v any) any {
	switch t := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(t))
		for k, x := range t {
			m[k] = deepCopy(x)
		}
		return m
	case []any:
		s := make([]any, len(t))
		for i, x := range t {
			s[i] = deepCopy(x)
		}
		return s
	case []string:
		return stringsToAny(t)
	case map[string]string:
		m := make(map[string]any, len(t))
		for k, x := range t {
			m[k] = x
		}
		return m
	default:
		return v
	}
}
