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
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
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
}

// Handler is the gateway's reverse-proxy front door.
type Handler struct {
	guard   *guard.Guard
	log     *slog.Logger
	proxies map[*route.Route]*httputil.ReverseProxy
}

// New builds the handler and one reverse proxy per route.
func New(cfg Config) (*Handler, error) {
	if cfg.Guard == nil {
		return nil, errors.New("proxy: guard is required")
	}
	h := &Handler{
		guard:   cfg.Guard,
		log:     cfg.Log,
		proxies: map[*route.Route]*httputil.ReverseProxy{},
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
	v *guard.Verdict

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
	v := h.guard.Check(r.Context(), req)
	w.Header().Set(guard.HeaderDecisionID, v.ID())
	for k, val := range v.Decision.Result.ResponseHeaders {
		w.Header().Set(k, val)
	}
	if !v.Allowed {
		WriteDenial(w, v.Status, v.Code, v.ID(), v.Reason)
		h.finish(r, v, decision.Completion{Status: v.Status})
		return
	}
	st := &state{v: v}
	ctx := context.WithValue(r.Context(), stateKey{}, st)
	h.proxies[v.Route].ServeHTTP(w, r.WithContext(ctx))
	c := decision.Completion{
		Status:          st.status,
		UpstreamStatus:  st.upstreamStatus,
		UpstreamLatency: st.upstreamLatency,
	}
	if st.err != nil {
		c.Error = "upstream: " + st.err.Error()
	}
	h.finish(r, v, c)
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
	for k, val := range st.v.Decision.Result.ResponseHeaders {
		resp.Header.Set(k, val)
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
	h.log.Warn("upstream request failed", "route", st.v.Route.Name, "decision_id", st.v.ID(), "err", err)
	if status == 499 {
		return
	}
	WriteDenial(w, status, code, st.v.ID(), "")
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
