// Package proxy is the HTTP reverse-proxy front door: it hands each request
// to the shared decision path (gateway/guard), enforces the verdict and
// forwards allowed requests with httputil.ReverseProxy, recording every
// request exactly once.
//
// It must not import decision internals (decision/rego, decision/log),
// bundles or xds.
//
// Concurrency: a *Handler is immutable after New and safe for concurrent
// use; per-request state travels in the request context.
package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/gateway/canon"
	"github.com/policygate/policygate/gateway/guard"
	"github.com/policygate/policygate/gateway/route"
)

// Config wires a Handler.
type Config struct {
	// Guard runs the shared decision path. Required.
	Guard *guard.Guard
	// Transport overrides the upstream transport (tests). Nil means a tuned
	// http.Transport per route.
	Transport http.RoundTripper
	// Log receives operational errors. Nil discards.
	Log *slog.Logger
	// BodyTimeout bounds reading the part of a request body the policy
	// sees, so that a client sending it slowly (or never) cannot hold the
	// request before it is decided. Zero: no bound. The rest of the body
	// is streamed to the upstream without it.
	BodyTimeout time.Duration
}

// Handler is the gateway's reverse-proxy front door.
type Handler struct {
	guard       *guard.Guard
	log         *slog.Logger
	proxies     map[*route.Route]*httputil.ReverseProxy
	bodyTimeout time.Duration
}

// New builds the handler and one reverse proxy per route.
func New(cfg Config) (*Handler, error) {
	if cfg.Guard == nil {
		return nil, errors.New("proxy: guard is required")
	}
	h := &Handler{
		guard:       cfg.Guard,
		log:         cfg.Log,
		proxies:     map[*route.Route]*httputil.ReverseProxy{},
		bodyTimeout: cfg.BodyTimeout,
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	pool := newBufferPool()
	for _, r := range cfg.Guard.Routes().Routes() {
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
	v        *guard.Verdict
	r        *http.Request
	recorded bool

	upstreamStart   time.Time
	upstreamLatency time.Duration
	upstreamStatus  int
	status          int
	err             error
}

type stateKey struct{}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req := &guard.Request{
		Method:        r.Method,
		Target:        r.RequestURI,
		Host:          r.Host,
		Header:        r.Header,
		Peer:          peerAddr(r.RemoteAddr),
		TLS:           r.TLS != nil,
		Body:          r.Body,
		ContentLength: r.ContentLength,
		Start:         time.Now(),
		FrontDoor:     "proxy",
	}
	var rc *http.ResponseController
	if h.bodyTimeout > 0 && r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		rc = http.NewResponseController(w)
		if rc.SetReadDeadline(time.Now().Add(h.bodyTimeout)) != nil {
			rc = nil // the connection cannot bound reads: nothing to undo
		}
	}
	v := h.guard.Check(r.Context(), req)
	if rc != nil && v.Allowed {
		// The rest streams to the upstream unbounded. A refused request
		// keeps the bound: the server drains an unread body before
		// answering, and that must not wait forever either.
		_ = rc.SetReadDeadline(time.Time{})
	}
	w.Header().Set(guard.HeaderDecisionID, v.ID())
	for k, val := range v.Decision.Result.ResponseHeaders {
		w.Header().Set(k, val)
	}
	if !v.Allowed {
		if v.RateLimit != nil {
			v.RateLimit.SetHeaders(w.Header())
		}
		// The event is recorded before the client can see the answer, so an
		// answer a client got always has its event (durable mode).
		h.finish(r, v, decision.Completion{Status: v.Status})
		guard.WriteDenial(w, v.Status, v.Code, v.ID(), v.Reason)
		return
	}
	st := &state{v: v, r: r}
	ctx := context.WithValue(r.Context(), stateKey{}, st)
	h.proxies[v.Route].ServeHTTP(w, r.WithContext(ctx))
	h.complete(st) // when neither the response nor the error path recorded it
}

// complete records the request once, with what is known of its outcome.
// It runs before the response headers are passed to the client.
func (h *Handler) complete(st *state) {
	if st.recorded {
		return
	}
	st.recorded = true
	c := decision.Completion{
		Status:          st.status,
		UpstreamStatus:  st.upstreamStatus,
		UpstreamLatency: st.upstreamLatency,
	}
	if st.err != nil {
		c.Error = "upstream: " + st.err.Error()
	}
	h.finish(st.r, st.v, c)
}

func (h *Handler) finish(r *http.Request, v *guard.Verdict, c decision.Completion) {
	c.Latency = time.Since(v.Start())
	h.guard.Record(r.Context(), v, c)
}

func peerAddr(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// rewrite runs after ReverseProxy has removed hop-by-hop headers, so
// nothing a client lists in Connection can remove what is set here.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(stateKey{}).(*state)
	v := st.v
	rt, d := v.Route, v.Decision
	u := *rt.Upstream
	u.RawQuery = v.Target.RawQuery
	setEscapedPath(&u, v.Target)
	pr.Out.URL = &u
	pr.Out.Host = rt.Upstream.Host
	pr.Out.Header = v.Header.Clone()
	if v.XFF != "" {
		pr.Out.Header.Set("X-Forwarded-For", v.XFF)
	}
	pr.SetXForwarded()
	if rt.UpstreamAuthorization != "" {
		pr.Out.Header.Set("Authorization", rt.UpstreamAuthorization)
	}
	pr.Out.Header.Set(guard.HeaderUpstreamID, d.ID)
	if id := d.Input.Identity; id.Authenticated && validHeaderValue(id.Subject) {
		pr.Out.Header.Set(guard.HeaderUpstreamSubject, id.Subject)
	}
	for _, name := range d.Result.RemoveHeaders {
		pr.Out.Header.Del(name)
	}
	for k, v := range d.Result.Headers {
		pr.Out.Header.Set(k, v)
	}
	// The headers set or removed here are the only ones of their name in
	// any spelling a CGI-style backend would read as the same.
	if hasUnderscoreName(pr.Out.Header) {
		for _, name := range guard.OtherSpellings(pr.Out.Header, gatewaySet, d.Result.RemoveHeaders, slices.Collect(maps.Keys(d.Result.Headers))) {
			delete(pr.Out.Header, name)
		}
	}
	// Request trailers are headers no policy saw and no hygiene ran on.
	pr.Out.Trailer = nil
	if v.Body != nil {
		pr.Out.Body = io.NopCloser(v.Body)
		pr.Out.ContentLength = v.BodyLen
		if v.BodyLen >= 0 {
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
	resp.Header.Del(guard.HeaderDecisionID)
	if st.v.RateLimit != nil {
		st.v.RateLimit.SetHeaders(resp.Header)
	}
	for k, val := range st.v.Decision.Result.ResponseHeaders {
		resp.Header.Set(k, val)
	}
	h.complete(st)
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
	h.log.Warn("upstream request failed", "route", st.v.Route.Name, "decision_id", st.v.ID(), "err", err)
	h.complete(st)
	if status == 499 {
		return
	}
	guard.WriteDenial(w, status, code, st.v.ID(), "")
}

func hasUnderscoreName(h http.Header) bool {
	for name := range h {
		if strings.IndexByte(name, '_') >= 0 {
			return true
		}
	}
	return false
}

// gatewaySet are the headers rewrite sets on every forwarded request.
var gatewaySet = []string{
	"Authorization", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
	guard.HeaderUpstreamID, guard.HeaderUpstreamSubject,
}

func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return s != ""
}

// copyBufferSize is the size of the buffers ReverseProxy copies bodies
// with.
const copyBufferSize = 32 << 10

// bufferPool pools ReverseProxy's copy buffers as array pointers: a buffer
// handed back is converted to the pointer to its own array, so Put
// allocates nothing (pooling a *[]byte would allocate one per Put).
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { return new([copyBufferSize]byte) }}}
}

func (b *bufferPool) Get() []byte { return b.p.Get().(*[copyBufferSize]byte)[:] }

func (b *bufferPool) Put(x []byte) {
	if cap(x) >= copyBufferSize {
		b.p.Put((*[copyBufferSize]byte)(x[:copyBufferSize]))
	}
}
