// Package guard is the decision path every front door shares: it
// canonicalizes a request, routes it, cleans its headers, authenticates the
// caller, reads the body for the policy, builds the canonical input and asks
// the decision engine. The HTTP reverse proxy, the forward-auth endpoint and
// the Envoy ext_authz server each turn their own wire format into a
// Request and act on the Verdict, so one policy governs a call whichever
// way it arrives.
//
// It must not import decision internals (decision/rego, decision/log),
// bundles or xds.
//
// Concurrency: a *Guard is immutable after New and safe for concurrent use.
package guard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/textproto"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/gateway/canon"
	"github.com/policygate/policygate/gateway/ratelimit"
	"github.com/policygate/policygate/gateway/route"
)

// Decider evaluates and records decisions (decision.Engine).
type Decider interface {
	Decide(ctx context.Context, path string, in *decision.Input, opts ...decision.DecideOption) *decision.Decision
	Record(ctx context.Context, d *decision.Decision, c decision.Completion) error
	Commit(ctx context.Context, d *decision.Decision) error
}

// Authenticator verifies the caller's credentials (authn.Authenticator).
type Authenticator interface {
	Authenticate(ctx context.Context, h http.Header) (decision.Identity, error)
	CredentialHeaders() []string
}

// Config wires a Guard.
type Config struct {
	Routes        *route.Table
	Decider       Decider
	Authenticator Authenticator
	// TrustedProxies are peers whose forwarding headers (X-Forwarded-*,
	// Forwarded, X-Original-URL, ...) are believed. Empty: nobody's are.
	TrustedProxies []netip.Prefix
	// RateLimits enforces route and decision rate limits. Nil: routes are
	// not rate-limited, and a decision that returns rate_limit is denied
	// (503 rate_limit_unavailable) since its limit cannot be enforced.
	RateLimits *ratelimit.Enforcer
	// Registerer receives the request metrics. Nil registers nothing.
	Registerer prometheus.Registerer
	// Log receives operational errors. Nil discards.
	Log *slog.Logger
}

// Guard runs the shared decision path.
type Guard struct {
	routes  *route.Table
	decider Decider
	authn   Authenticator
	trusted []netip.Prefix
	log     *slog.Logger
	metrics *metrics
	limits  *ratelimit.Enforcer
	strip   map[string]bool // HeaderKey of names never forwarded nor shown to policies
}

// Header names the gateway owns; clients cannot supply them.
const (
	HeaderDecisionID      = "X-Decision-Id"
	HeaderUpstreamID      = "X-Policygate-Decision-Id"
	HeaderUpstreamSubject = "X-Policygate-Subject"
	gatewayHeaderPrefix   = "X-Policygate-"
)

var (
	hopByHop = []string{
		"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
	}
	methodOverride = []string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override"}
	// Proxy is no standard header, but CGI-style backends turn it into the
	// HTTP_PROXY environment variable their HTTP clients obey (httpoxy).
	httpoxy = []string{"Proxy"}
	// Only trusted proxies may say where a request came from or what it
	// originally asked for.
	forwarding = []string{
		"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
		"X-Forwarded-Port", "X-Forwarded-Uri", "X-Forwarded-Path", "X-Forwarded-Prefix",
		"X-Forwarded-Method", "X-Original-Url", "X-Original-Uri", "X-Original-Method",
		"X-Rewrite-Url", "X-Envoy-Original-Path", "X-Real-Ip", "X-Client-Ip",
		"True-Client-Ip", "Cf-Connecting-Ip",
	}
	forwardingKeys   = keySet(forwarding)
	gatewayKeyPrefix = HeaderKey(gatewayHeaderPrefix)
	decisionIDKey    = HeaderKey(HeaderDecisionID)
	xffKey           = HeaderKey("X-Forwarded-For")
)

// HeaderKey is the name under which a header is matched against the
// names the gateway strips or sets: lower case, with '_' read as '-'.
// CGI-style backends (WSGI, PHP, Rack, ...) present X-Api-Key and X_Api_Key
// alike as HTTP_X_API_KEY, so a name is stripped in every such spelling.
func HeaderKey(name string) string {
	for i := 0; i < len(name); i++ {
		if c := name[i]; c == '_' || 'A' <= c && c <= 'Z' {
			return string(appendHeaderKey(nil, name))
		}
	}
	return name
}

// appendHeaderKey appends HeaderKey(name) to dst.
func appendHeaderKey(dst []byte, name string) []byte {
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == '_':
			dst = append(dst, '-')
		case 'A' <= c && c <= 'Z':
			dst = append(dst, c+('a'-'A'))
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// OtherSpellings returns the names in h that are another spelling (see
// HeaderKey) of one of names without being that name: a front door that
// sets or removes a header removes these too, so that a CGI-style backend
// cannot read a client's X_Foo as the gateway's X-Foo.
func OtherSpellings(h http.Header, names ...[]string) []string {
	var out []string
	for name := range h {
		if strings.IndexByte(name, '_') < 0 {
			continue // only an underscore makes two names one for such backends
		}
		k := HeaderKey(name)
		for _, list := range names {
			for _, n := range list {
				if HeaderKey(n) == k && textproto.CanonicalMIMEHeaderKey(n) != name {
					out = append(out, name)
				}
			}
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

func keySet(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[HeaderKey(n)] = true
	}
	return m
}

// New builds a Guard.
func New(cfg Config) (*Guard, error) {
	if cfg.Routes == nil || cfg.Decider == nil || cfg.Authenticator == nil {
		return nil, errors.New("guard: routes, decider and authenticator are required")
	}
	g := &Guard{
		routes:  cfg.Routes,
		decider: cfg.Decider,
		authn:   cfg.Authenticator,
		trusted: cfg.TrustedProxies,
		log:     cfg.Log,
		limits:  cfg.RateLimits,
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("guard: metrics: %w", err)
	}
	g.metrics = m
	g.strip = keySet(hopByHop)
	for _, list := range [][]string{methodOverride, httpoxy, cfg.Authenticator.CredentialHeaders()} {
		for _, n := range list {
			g.strip[HeaderKey(n)] = true
		}
	}
	return g, nil
}

// Strips reports whether the header name is one the decision path never
// shows to policies nor forwards whatever the peer: hop-by-hop headers,
// credentials, method overrides and gateway-owned names.
func (g *Guard) Strips(name string) bool {
	k := HeaderKey(name)
	return g.strip[k] || strings.HasPrefix(k, gatewayKeyPrefix) || k == decisionIDKey
}

// Routes returns the routing table.
func (g *Guard) Routes() *route.Table { return g.routes }

// Request is one call as a front door received it.
type Request struct {
	Method string
	Target string // origin-form request-target as received ("/a/b?x=1")
	Host   string // Host header or :authority
	Header http.Header
	Peer   netip.Addr // the TCP peer (or, for ext_authz, Envoy's downstream address)
	TLS    bool
	// Body is read up to the route's body limit for the policy. The
	// Verdict's Body replays what was read followed by the rest.
	Body          io.Reader
	ContentLength int64 // -1 when unknown
	// BodyTruncated marks a body the front door received only in part
	// (ext_authz's partial body): the policy never sees it parsed.
	BodyTruncated bool
	// Extra adds front-door-specific top-level input fields (ext_authz
	// adds the opa-envoy-plugin shape).
	Extra map[string]any
	// Start is when the front door received the request. Zero means now.
	Start time.Time
	// FrontDoor names the front door in metrics ("proxy", "forward_auth",
	// "ext_authz").
	FrontDoor string
}

// Verdict is the outcome of the decision path for one request.
type Verdict struct {
	Allowed bool
	Status  int    // status to answer a refused request with
	Code    string // short reason code for refused requests
	Reason  string // policy-authored reason, may be empty

	Decision *decision.Decision // always set, also for requests refused before evaluation
	Route    *route.Route       // nil when no route matched
	Target   *canon.Target      // nil when the target was rejected
	Header   http.Header        // the client's headers as the policy saw them
	Removed  []string           // header names removed from the client's request
	XFF      string             // a trusted proxy's X-Forwarded-For chain to extend
	Body     io.Reader          // the body to forward, nil when not read
	BodyLen  int64
	// RateLimit is the rate-limit check of an allowed decision; nil when
	// none ran. Front doors set its headers on the response.
	RateLimit *ratelimit.Outcome

	start     time.Time
	frontDoor string
}

// ID is the decision id of the request.
func (v *Verdict) ID() string { return v.Decision.ID }

// Start is when the request was received.
func (v *Verdict) Start() time.Time { return v.start }

// Check runs the decision path for req. It never returns an allowing
// Verdict for a request it could not fully canonicalize, route,
// authenticate and evaluate.
func (g *Guard) Check(ctx context.Context, req *Request) *Verdict {
	v, in := begin(req)
	in.Extra = req.Extra
	if req.TLS {
		in.Request.Scheme = "https"
	}
	peer, trusted := g.clientAddr(req.Peer, req.Header)
	if peer.IsValid() {
		in.Request.RemoteAddr = peer.String()
	}

	// The request-target is parsed permissively for %2F here; the route
	// decides below whether it accepts encoded slashes.
	tg, err := canon.Parse(req.Target, canon.Options{AllowEncodedSlash: true})
	if err != nil {
		return g.refuse(v, in, http.StatusBadRequest, codeOf(err), err)
	}
	host, err := canon.Host(req.Host)
	if err != nil {
		return g.refuse(v, in, http.StatusBadRequest, codeOf(err), err)
	}
	v.Target = tg
	in.Request.Host, in.Request.Path, in.Request.Segments = host, tg.Path, tg.Segments
	if tg.Query != nil {
		in.Request.Query = map[string][]string(tg.Query)
	}
	rt := g.routes.Match(host, tg.Path)
	if rt == nil {
		return g.refuse(v, in, http.StatusNotFound, "no_route", nil)
	}
	v.Route = rt
	in.Route = decision.Route{Name: rt.Name, Labels: rt.Labels}
	if !rt.AllowEncodedSlash && tg.EncodedSlash {
		return g.refuse(v, in, http.StatusBadRequest, "bad_path", errors.New("encoded slash not allowed on this route"))
	}
	if _, ok := tg.Query["_method"]; ok {
		return g.refuse(v, in, http.StatusBadRequest, "method_override", errors.New("_method query parameter"))
	}
	if req.Header.Get("Upgrade") != "" {
		return g.refuse(v, in, http.StatusBadRequest, "upgrade_not_supported", nil)
	}

	v.Header, v.XFF, v.Removed = g.cleanHeader(req.Header, trusted)
	in.Request.Headers = flatten(v.Header)

	ident, err := g.authn.Authenticate(ctx, req.Header)
	if err != nil {
		return g.refuse(v, in, http.StatusUnauthorized, "invalid_credentials", err)
	}
	in.Identity = ident

	if req.BodyTruncated {
		in.Request.BodyTruncated = true
		v.Body, v.BodyLen = req.Body, req.ContentLength
	} else if err := readBody(req.Body, req.ContentLength, rt.BodyLimit, v.Header.Values("Content-Type"), in, v); err != nil {
		status := http.StatusBadRequest
		if isTimeout(err) {
			status = http.StatusRequestTimeout
		}
		return g.refuse(v, in, status, codeOf(err), err)
	}

	d := g.decider.Decide(ctx, rt.Policy, in, decision.WithCacheTTL(rt.CacheTTL))
	v.Decision = d
	v.Allowed = d.Result.Allow
	v.Reason = d.Result.Reason
	if !v.Allowed {
		v.Status, v.Code = d.Result.HTTPStatus(), d.Result.Code()
		return v
	}
	// Only requests the policy allowed spend quota; all of a request's
	// limits are checked together, so one that rejects spends nothing.
	if g.limits == nil && len(d.Result.RateLimits) > 0 {
		// A limit the policy asked for cannot be enforced: deny rather
		// than let the call through unlimited.
		v.Allowed, v.Status, v.Code, v.Reason = false, http.StatusServiceUnavailable, "rate_limit_unavailable", ""
		return v
	}
	if g.limits != nil && (rt.RateLimit != nil || len(d.Result.RateLimits) > 0) {
		id := &in.Identity
		out := g.limits.Check(ctx, rt.RateLimit, &ratelimit.Values{
			Subject: id.Subject, Issuer: id.Issuer, KeyID: id.KeyID,
			RemoteAddr: in.Request.RemoteAddr, Host: in.Request.Host, Method: in.Request.Method,
		}, d.Result.RateLimits)
		if out.Result != ratelimit.ResultNone {
			v.RateLimit = &out
		}
		if !out.Allowed() {
			v.Allowed, v.Status, v.Code, v.Reason = false, out.Status, out.Code(), ""
			return v
		}
	}
	// No log, no privileged call.
	if rt.LogFailClosed {
		if err := g.decider.Commit(ctx, d); err != nil {
			v.Allowed, v.Status, v.Code, v.Reason = false, http.StatusServiceUnavailable, "log_unavailable", ""
		}
	}
	return v
}

// refuse builds the Verdict of a request refused before any policy ran
// (malformed, unrouted, bad credentials). It is logged like any decision.
func (g *Guard) refuse(v *Verdict, in *decision.Input, status int, code string, cause error) *Verdict {
	v.Allowed, v.Status, v.Code = false, status, code
	v.Decision = &decision.Decision{
		ID:        in.Request.ID,
		Input:     in,
		Timestamp: v.start,
		Result:    decision.Result{Outcome: decision.OutcomeDeny, Reason: code, Status: status},
		Err:       cause,
	}
	return v
}

// Refuse returns the Verdict of a request a front door refuses before the
// decision path (an untrusted forward-auth caller, a malformed ext_authz
// Check), so that it is recorded like every other request.
func (g *Guard) Refuse(req *Request, status int, code string, cause error) *Verdict {
	v, in := begin(req)
	if req.Peer.IsValid() {
		in.Request.RemoteAddr = req.Peer.Unmap().String()
	}
	return g.refuse(v, in, status, code, cause)
}

// begin starts the Verdict and the input of req with what is known before
// anything is parsed: a new decision id, the method, the raw path (never
// its query) and empty collections.
func begin(req *Request) (*Verdict, *decision.Input) {
	start := req.Start
	if start.IsZero() {
		start = time.Now()
	}
	in := &decision.Input{Identity: decision.Anonymous()}
	in.Request = decision.Request{
		ID:       decision.NewID(),
		Method:   req.Method,
		RawPath:  rawPathOf(req.Target),
		Headers:  map[string]string{},
		Query:    map[string][]string{},
		Segments: []string{},
		Scheme:   "http",
	}
	return &Verdict{start: start, frontDoor: req.FrontDoor}, in
}

// Record logs the request's decision with how it ended. The event is
// written even when the client has gone away.
func (g *Guard) Record(ctx context.Context, v *Verdict, c decision.Completion) {
	if c.Latency == 0 {
		c.Latency = time.Since(v.start)
	}
	if v.RateLimit != nil && c.RateLimit == nil {
		c.RateLimit = v.RateLimit.Log()
	}
	_ = g.decider.Record(context.WithoutCancel(ctx), v.Decision, c)
	g.metrics.observe(v.frontDoor, v, c)
}

func codeOf(err error) string {
	var ce *canon.Error
	if errors.As(err, &ce) {
		return ce.Code
	}
	if errors.Is(err, errBodyMethodOverride) {
		return "method_override"
	}
	if isTimeout(err) {
		return "body_timeout"
	}
	var be *bodyError
	if errors.As(err, &be) {
		return "bad_body"
	}
	return "bad_request"
}

// isTimeout reports whether err is a read deadline passing (the front
// door's bound on reading the body).
func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// rawPathOf is input.request.raw_path: the path as received, without the
// query, a fragment or user information (see canon.RedactTarget).
func rawPathOf(target string) string {
	return canon.RedactTarget(target)
}

// IsTrusted reports whether a is a configured trusted proxy.
func (g *Guard) IsTrusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range g.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientAddr returns the client address the policy sees and whether the
// peer is a trusted proxy. For trusted peers it walks X-Forwarded-For from
// the right and returns the first hop that is not itself trusted.
func (g *Guard) clientAddr(peer netip.Addr, h http.Header) (netip.Addr, bool) {
	peer = peer.Unmap()
	if !peer.IsValid() || !g.IsTrusted(peer) {
		return peer, false
	}
	hops := strings.Split(strings.Join(h.Values("X-Forwarded-For"), ","), ",")
	client := peer
	for i := len(hops) - 1; i >= 0; i-- {
		s := strings.TrimSpace(hops[i])
		if s == "" {
			continue
		}
		a, ok := parseHop(s)
		if !ok {
			// A hop that is no address ("unknown", garbage) is not a
			// trusted proxy either: the client is unknown, never the
			// trusted hop before it.
			return netip.Addr{}, true
		}
		client = a.Unmap()
		if !g.IsTrusted(client) {
			break
		}
	}
	return client, true
}

// parseHop reads one X-Forwarded-For hop: an address, or an address with
// a port as some proxies write it ("203.0.113.7:5555", "[2001:db8::1]:443").
func parseHop(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a, true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr(), true
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil && a.Is6() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// cleanHeader returns the client's headers without hop-by-hop headers
// (including those named in Connection), credentials, method overrides,
// gateway-owned names and — unless the peer is trusted — forwarding and
// path-override headers. The policy sees exactly these; the upstream gets
// these plus what the gateway adds. It also returns a trusted peer's
// X-Forwarded-For chain and the names it removed.
func (g *Guard) cleanHeader(in http.Header, trusted bool) (http.Header, string, []string) {
	out := in.Clone()
	if out == nil {
		out = http.Header{}
	}
	var removed []string
	var listed map[string]bool // HeaderKey of the names Connection lists
	for _, v := range in.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				if listed == nil {
					listed = map[string]bool{}
				}
				listed[HeaderKey(name)] = true
			}
		}
	}
	xff := ""
	if trusted && !listed[xffKey] {
		xff = strings.Join(out.Values("X-Forwarded-For"), ", ")
	}
	// Every spelling of a name is matched (see HeaderKey).
	var buf [64]byte
	for name := range out {
		kb := appendHeaderKey(buf[:0], name) // the lookups below do not allocate
		switch {
		case trusted && name == "X-Forwarded-For" && !listed[xffKey]:
			// Rebuilt by the front door from the trusted chain in xff.
			delete(out, name)
			continue
		case listed[string(kb)], g.strip[string(kb)], string(kb) == decisionIDKey, string(kb) == xffKey,
			len(kb) >= len(gatewayKeyPrefix) && string(kb[:len(gatewayKeyPrefix)]) == gatewayKeyPrefix,
			!trusted && forwardingKeys[string(kb)]:
		default:
			continue
		}
		delete(out, name)
		removed = append(removed, name)
	}
	sort.Strings(removed)
	return out, xff, removed
}

func flatten(h http.Header) map[string]string {
	m := make(map[string]string, len(h))
	for k, vs := range h {
		m[strings.ToLower(k)] = strings.Join(vs, ", ")
	}
	return m
}

// WriteDenial answers a refused request with the small JSON body of the
// decision contract. reason defaults to code: some admin CLIs print only a
// reason field.
func WriteDenial(w http.ResponseWriter, status int, code, id, reason string) {
	if status == http.StatusUnauthorized && w.Header().Get("Www-Authenticate") == "" {
		w.Header().Add("Www-Authenticate", `Basic realm="policygate"`)
		w.Header().Add("Www-Authenticate", `Bearer realm="policygate"`)
	}
	if reason == "" {
		reason = code
	}
	body := struct {
		Error      string `json:"error"`
		DecisionID string `json:"decision_id"`
		Reason     string `json:"reason,omitempty"`
	}{code, id, reason}
	b, _ := json.Marshal(body) // cannot fail for strings
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
