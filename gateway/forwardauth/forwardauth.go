// Package forwardauth is the forward-auth front door for reverse proxies
// that ask an external service before serving a request: nginx
// auth_request, Caddy forward_auth and Traefik ForwardAuth. The proxy sends
// the original request's headers plus the original method and URI in
// X-Forwarded-Method / X-Forwarded-Uri (Traefik, Caddy) or
// X-Original-Method / X-Original-URI (nginx); policygate decides it through
// the same decision path as its own reverse proxy and answers 2xx to allow
// (with identity headers for the proxy to copy) or the denial status.
//
// The original method and URI are believed only from configured trusted
// proxies; from anyone else the request is refused without evaluation.
//
// It must not import decision internals, bundles or xds.
//
// Concurrency: a *Handler is immutable and safe for concurrent use.
package forwardauth

import (
	"errors"
	"net/http"
	"net/netip"
	"time"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/gateway/guard"
)

// Handler answers forward-auth requests on every path of its listener.
type Handler struct {
	guard *guard.Guard
}

// New returns a forward-auth handler deciding with g.
func New(g *guard.Guard) *Handler { return &Handler{guard: g} }

// Headers a proxy uses to describe the original request.
var (
	methodHeaders = []string{"X-Forwarded-Method", "X-Original-Method"}
	uriHeaders    = []string{"X-Forwarded-Uri", "X-Original-Uri", "X-Original-Url"}
)

func first(h http.Header, names []string) string {
	for _, n := range names {
		if v := h.Get(n); v != "" {
			return v
		}
	}
	return ""
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	peer := netip.Addr{}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		peer = ap.Addr().Unmap()
	}
	req := &guard.Request{
		Method:        first(r.Header, methodHeaders),
		Target:        first(r.Header, uriHeaders),
		Host:          r.Host,
		Header:        r.Header,
		Peer:          peer,
		ContentLength: 0, // proxies do not send the body to forward-auth
		Start:         start,
		FrontDoor:     "forward_auth",
	}
	if fh := r.Header.Get("X-Forwarded-Host"); fh != "" {
		req.Host = fh
	}
	req.TLS = r.Header.Get("X-Forwarded-Proto") == "https"

	var v *guard.Verdict
	switch {
	case !h.guard.IsTrusted(peer):
		// The original-request headers of an untrusted caller are ignored:
		// nothing else describes the request to decide, so it is refused.
		req.Method, req.Target = r.Method, r.RequestURI
		v = h.guard.Refuse(req, http.StatusForbidden, "untrusted_proxy", errors.New("forward-auth caller is not a trusted proxy"))
	case req.Method == "" || req.Target == "":
		v = h.guard.Refuse(req, http.StatusBadRequest, "missing_original_request",
			errors.New("X-Forwarded-Method/X-Forwarded-Uri (or X-Original-Method/X-Original-URI) required"))
	default:
		v = h.guard.Check(r.Context(), req)
	}

	w.Header().Set(guard.HeaderDecisionID, v.ID())
	for k, val := range v.Decision.Result.ResponseHeaders {
		w.Header().Set(k, val)
	}
	if v.RateLimit != nil {
		v.RateLimit.SetHeaders(w.Header())
	}
	if !v.Allowed {
		h.guard.Record(r.Context(), v, decision.Completion{Status: v.Status, Latency: time.Since(start)})
		guard.WriteDenial(w, v.Status, v.Code, v.ID(), v.Reason)
		return
	}
	// The proxy copies these onto the request it forwards (nginx
	// auth_request_set, Caddy copy_headers, Traefik authResponseHeaders).
	w.Header().Set(guard.HeaderUpstreamID, v.ID())
	if id := v.Decision.Input.Identity; id.Authenticated {
		w.Header().Set(guard.HeaderUpstreamSubject, id.Subject)
	}
	for k, val := range v.Decision.Result.Headers {
		w.Header().Set(k, val)
	}
	w.Header().Set("Cache-Control", "no-store")
	h.guard.Record(r.Context(), v, decision.Completion{Status: http.StatusOK, Latency: time.Since(start)})
	w.WriteHeader(http.StatusOK)
}
