// Package proxy is the HTTP front door: it canonicalizes each request,
// routes it, authenticates the caller, builds the policy input, asks the
// decision engine, enforces the answer and forwards allowed requests with
// httputil.ReverseProxy, logging every request exactly once.
//
// It must not import decision internals (decision/rego, decision/log),
// bundles or xds.
//
// Concurrency: a *Handler is immutable after New and safe for concurrent
// use; per-request state travels in the request context.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/gateway/canon"
	"github.com/policygate/policygate/gateway/route"
)

// Decider evaluates and records decisions (decision.Engine).
type Decider interface {
	Decide(ctx context.Context, path string, in *decision.Input) *decision.Decision
	Record(ctx context.Context, d *decision.Decision, c decision.Completion) error
}

// Authenticator verifies the caller's credentials (authn.Authenticator).
type Authenticator interface {
	Authenticate(ctx context.Context, h http.Header) (decision.Identity, error)
	CredentialHeaders() []string
}

// Config wires a Handler.
type Config struct {
	Routes        *route.Table
	Decider       Decider
	Authenticator Authenticator
	// TrustedProxies are peers whose forwarding headers (X-Forwarded-*,
	// Forwarded, X-Original-URL, ...) are believed. Empty: nobody's are.
	TrustedProxies []netip.Prefix
	// Transport overrides the upstream transport (tests). Nil means a tuned
	// http.Transport per route.
	Transport http.RoundTripper
	// Log receives operational errors. Nil discards.
	Log *slog.Logger
}

// Handler is the gateway's reverse-proxy front door.
type Handler struct {
	routes  *route.Table
	decider Decider
	authn   Authenticator
	trusted []netip.Prefix
	log     *slog.Logger
	proxies map[*route.Route]*httputil.ReverseProxy
	strip   []string // canonical header names never forwarded nor shown to policies
}

// Header names the gateway sets on forwarded requests; clients cannot
// supply them.
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
	// Only trusted proxies may say where a request came from or what it
	// originally asked for.
	forwarding = []string{
		"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
		"X-Forwarded-Port", "X-Forwarded-Uri", "X-Forwarded-Path", "X-Forwarded-Prefix",
		"X-Forwarded-Method", "X-Original-Url", "X-Original-Uri", "X-Original-Method",
		"X-Rewrite-Url", "X-Envoy-Original-Path", "X-Real-Ip", "X-Client-Ip",
		"True-Client-Ip", "Cf-Connecting-Ip",
	}
)

// New builds the handler and one reverse proxy per route.
func New(cfg Config) (*Handler, error) {
	if cfg.Routes == nil || cfg.Decider == nil || cfg.Authenticator == nil {
		return nil, errors.New("proxy: routes, decider and authenticator are required")
	}
	h := &Handler{
		routes:  cfg.Routes,
		decider: cfg.Decider,
		authn:   cfg.Authenticator,
		trusted: cfg.TrustedProxies,
		log:     cfg.Log,
		proxies: map[*route.Route]*httputil.ReverseProxy{},
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.strip = append(h.strip, hopByHop...)
	h.strip = append(h.strip, methodOverride...)
	for _, c := range cfg.Authenticator.CredentialHeaders() {
		h.strip = append(h.strip, textproto.CanonicalMIMEHeaderKey(c))
	}
	pool := newBufferPool()
	for _, r := range cfg.Routes.Routes() {
		rt := cfg.Transport
		if rt == nil {
			rt = newTransport(r.Timeout)
		}
		h.proxies[r] = &httputil.ReverseProxy{
			Rewrite:        h.rewrite,
			Transport:      rt,
			BufferPool:     pool,
			ModifyResponse: h.modifyResponse,
			ErrorHandler:   h.upstreamError,
			ErrorLog:       slog.NewLogLogger(h.log.Handler(), slog.LevelWarn),
		}
	}
	return h, nil
}

func newTransport(timeout time.Duration) *http.Transport {
	return &http.Transport{
		Proxy:                 nil, // never route admin traffic through an environment proxy
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: timeout,
		ExpectContinueTimeout: time.Second,
	}
}

// state is what one request carries from decision to forwarding.
type state struct {
	route    *route.Route
	target   *canon.Target
	header   http.Header // cleaned client headers, as the policy saw them
	xff      string      // trusted X-Forwarded-For chain to extend, or ""
	decision *decision.Decision
	body     io.Reader
	bodyLen  int64

	upstreamStart   time.Time
	upstreamLatency time.Duration
	upstreamStatus  int
	status          int
	err             error
}

type stateKey struct{}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := decision.NewID()
	w.Header().Set(HeaderDecisionID, id)
	in := &decision.Input{Identity: decision.Anonymous()}
	in.Request = decision.Request{ID: id, Method: r.Method, RawPath: rawPathOf(r.RequestURI)}

	peer, trusted := h.peer(r)
	in.Request.RemoteAddr = peer.String()
	in.Request.Scheme = "http"
	if r.TLS != nil {
		in.Request.Scheme = "https"
	}

	// The request-target is parsed permissively for %2F here; the route
	// decides below whether it accepts encoded slashes.
	tg, err := canon.Parse(r.RequestURI, canon.Options{AllowEncodedSlash: true})
	if err != nil {
		h.rejectRequest(w, r, in, start, http.StatusBadRequest, codeOf(err), err)
		return
	}
	host, err := canon.Host(r.Host)
	if err != nil {
		h.rejectRequest(w, r, in, start, http.StatusBadRequest, codeOf(err), err)
		return
	}
	in.Request.Host, in.Request.Path, in.Request.Segments = host, tg.Path, tg.Segments
	in.Request.Query = map[string][]string(tg.Query)
	if in.Request.Query == nil {
		in.Request.Query = map[string][]string{}
	}
	rt := h.routes.Match(host, tg.Path)
	if rt == nil {
		h.rejectRequest(w, r, in, start, http.StatusNotFound, "no_route", nil)
		return
	}
	in.Route = decision.Route{Name: rt.Name, Labels: rt.Labels}
	if in.Route.Labels == nil {
		in.Route.Labels = map[string]string{}
	}
	if !rt.AllowEncodedSlash && hasSlash(tg.Segments) {
		h.rejectRequest(w, r, in, start, http.StatusBadRequest, "bad_path", errors.New("encoded slash not allowed on this route"))
		return
	}
	if _, ok := tg.Query["_method"]; ok {
		h.rejectRequest(w, r, in, start, http.StatusBadRequest, "method_override", errors.New("_method query parameter"))
		return
	}
	if r.Header.Get("Upgrade") != "" {
		h.rejectRequest(w, r, in, start, http.StatusBadRequest, "upgrade_not_supported", nil)
		return
	}

	header, xff := h.cleanHeader(r.Header, trusted)
	in.Request.Headers = flatten(header)

	ident, err := h.authn.Authenticate(r.Context(), r.Header)
	if err != nil {
		h.rejectRequest(w, r, in, start, http.StatusUnauthorized, "invalid_credentials", err)
		return
	}
	in.Identity = ident

	st := &state{route: rt, target: tg, header: header, xff: xff}
	if err := readBody(r, rt.BodyLimit, header.Get("Content-Type"), in, st); err != nil {
		h.rejectRequest(w, r, in, start, http.StatusBadRequest, codeOf(err), err)
		return
	}

	d := h.decider.Decide(r.Context(), rt.Policy, in)
	st.decision = d
	for k, v := range d.Result.ResponseHeaders {
		w.Header().Set(k, v)
	}
	if !d.Result.Allow {
		status := d.Result.HTTPStatus()
		writeDenial(w, status, d.Result.Code(), d.ID, d.Result.Reason)
		h.record(r, d, decision.Completion{Status: status, Latency: time.Since(start)})
		return
	}

	ctx := context.WithValue(r.Context(), stateKey{}, st)
	h.proxies[rt].ServeHTTP(w, r.WithContext(ctx))
	c := decision.Completion{
		Status:          st.status,
		UpstreamStatus:  st.upstreamStatus,
		UpstreamLatency: st.upstreamLatency,
		Latency:         time.Since(start),
	}
	if st.err != nil {
		c.Error = "upstream: " + st.err.Error()
	}
	h.record(r, d, c)
}

func (h *Handler) record(r *http.Request, d *decision.Decision, c decision.Completion) {
	// The event is written even when the client has gone away.
	_ = h.decider.Record(context.WithoutCancel(r.Context()), d, c)
}

// rejectRequest answers a request that was refused before any policy ran
// (malformed, unrouted, bad credentials) and logs it like any decision.
func (h *Handler) rejectRequest(w http.ResponseWriter, r *http.Request, in *decision.Input, start time.Time, status int, code string, cause error) {
	if in.Request.Headers == nil {
		in.Request.Headers = map[string]string{}
	}
	d := &decision.Decision{
		ID:        in.Request.ID,
		Input:     in,
		Timestamp: start,
		Result:    decision.Result{Outcome: decision.OutcomeDeny, Reason: code, Status: status},
		Err:       cause,
	}
	if status == http.StatusUnauthorized {
		w.Header().Add("Www-Authenticate", `Basic realm="policygate"`)
		w.Header().Add("Www-Authenticate", `Bearer realm="policygate"`)
	}
	writeDenial(w, status, code, d.ID, "")
	h.record(r, d, decision.Completion{Status: status, Latency: time.Since(start)})
}

func writeDenial(w http.ResponseWriter, status int, code, id, reason string) {
	if status == http.StatusUnauthorized && w.Header().Get("Www-Authenticate") == "" {
		w.Header().Add("Www-Authenticate", `Basic realm="policygate"`)
		w.Header().Add("Www-Authenticate", `Bearer realm="policygate"`)
	}
	if reason == "" {
		reason = code // some admin CLIs print only the reason field
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

func codeOf(err error) string {
	var ce *canon.Error
	if errors.As(err, &ce) {
		return ce.Code
	}
	var be *bodyError
	if errors.As(err, &be) {
		return "bad_body"
	}
	return "bad_request"
}

func rawPathOf(requestURI string) string {
	p, _, _ := strings.Cut(requestURI, "?")
	return p
}

func hasSlash(segs []string) bool {
	for _, s := range segs {
		if strings.ContainsAny(s, `/\`) {
			return true
		}
	}
	return false
}

// peer returns the client address the policy sees and whether the TCP peer
// is a trusted proxy. For trusted peers it walks X-Forwarded-For from the
// right and returns the first hop that is not itself trusted.
func (h *Handler) peer(r *http.Request) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	addr := ap.Addr().Unmap()
	if !h.isTrusted(addr) {
		return addr, false
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	client := addr
	for i := len(hops) - 1; i >= 0; i-- {
		s := strings.TrimSpace(hops[i])
		if s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			break
		}
		client = a.Unmap()
		if !h.isTrusted(client) {
			break
		}
	}
	return client, true
}

func (h *Handler) isTrusted(a netip.Addr) bool {
	for _, p := range h.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// cleanHeader returns the client's headers without hop-by-hop headers
// (including those named in Connection), credentials, method overrides,
// gateway-owned names and — unless the peer is trusted — forwarding and
// path-override headers. The policy sees exactly these; the upstream gets
// these plus what the gateway adds.
func (h *Handler) cleanHeader(in http.Header, trusted bool) (http.Header, string) {
	out := in.Clone()
	for _, v := range in.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				out.Del(name)
			}
		}
	}
	for _, name := range h.strip {
		out.Del(name)
	}
	for name := range out {
		if strings.HasPrefix(name, gatewayHeaderPrefix) || name == HeaderDecisionID {
			delete(out, name)
		}
	}
	xff := ""
	if trusted {
		xff = strings.Join(out.Values("X-Forwarded-For"), ", ")
	} else {
		for _, name := range forwarding {
			out.Del(name)
		}
	}
	out.Del("X-Forwarded-For") // rebuilt in rewrite
	return out, xff
}

func flatten(h http.Header) map[string]string {
	m := make(map[string]string, len(h))
	for k, vs := range h {
		m[strings.ToLower(k)] = strings.Join(vs, ", ")
	}
	return m
}

// rewrite runs after ReverseProxy has removed hop-by-hop headers, so
// nothing a client lists in Connection can remove what is set here.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(stateKey{}).(*state)
	rt, d := st.route, st.decision
	u := *rt.Upstream
	u.RawQuery = st.target.RawQuery
	setEscapedPath(&u, st.target)
	pr.Out.URL = &u
	pr.Out.Host = rt.Upstream.Host
	pr.Out.Header = st.header.Clone()
	if st.xff != "" {
		pr.Out.Header.Set("X-Forwarded-For", st.xff)
	}
	pr.SetXForwarded()
	if rt.UpstreamAuthorization != "" {
		pr.Out.Header.Set("Authorization", rt.UpstreamAuthorization)
	}
	pr.Out.Header.Set(HeaderUpstreamID, d.ID)
	if id := d.Input.Identity; id.Authenticated && validHeaderValue(id.Subject) {
		pr.Out.Header.Set(HeaderUpstreamSubject, id.Subject)
	}
	for _, name := range d.Result.RemoveHeaders {
		pr.Out.Header.Del(name)
	}
	for k, v := range d.Result.Headers {
		pr.Out.Header.Set(k, v)
	}
	if st.body != nil {
		pr.Out.Body = io.NopCloser(st.body)
		pr.Out.ContentLength = st.bodyLen
		if st.bodyLen >= 0 {
			pr.Out.TransferEncoding = nil
		}
		pr.Out.GetBody = nil
	}
	st.upstreamStart = time.Now()
}

// setEscapedPath makes the outbound request-target exactly the canonical
// path: Path holds the decoded form, RawPath the canonical encoding, which
// url.URL.EscapedPath returns verbatim because it is a valid encoding of
// Path.
func setEscapedPath(u *url.URL, t *canon.Target) {
	decoded, err := url.PathUnescape(t.Path)
	if err != nil { // cannot happen for a canonical path
		u.Path, u.RawPath = t.Path, ""
		return
	}
	u.Path, u.RawPath = decoded, t.Path
}

func (h *Handler) modifyResponse(resp *http.Response) error {
	st := resp.Request.Context().Value(stateKey{}).(*state)
	st.upstreamLatency = time.Since(st.upstreamStart)
	st.upstreamStatus, st.status = resp.StatusCode, resp.StatusCode
	resp.Header.Del(HeaderDecisionID)
	for k, v := range st.decision.Result.ResponseHeaders {
		resp.Header.Set(k, v)
	}
	return nil
}

func (h *Handler) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	st := r.Context().Value(stateKey{}).(*state)
	if !st.upstreamStart.IsZero() && st.upstreamLatency == 0 {
		st.upstreamLatency = time.Since(st.upstreamStart)
	}
	status, code := http.StatusBadGateway, "upstream_unavailable"
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		status, code = http.StatusGatewayTimeout, "upstream_timeout"
	}
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		status, code = 499, "client_closed"
	}
	st.status, st.err = status, err
	h.log.Warn("upstream request failed", "route", st.route.Name, "decision_id", st.decision.ID, "err", err)
	if status == 499 {
		return
	}
	writeDenial(w, status, code, st.decision.ID, "")
}

func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return s != ""
}

type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(x []byte) { b.p.Put(&x) }
