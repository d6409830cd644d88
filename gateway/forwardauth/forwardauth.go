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
// Proxies pass the client's own headers through next to the ones they set,
// so when the headers of both conventions (or repeated headers) describe
// the original request differently, it is refused as ambiguous.
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
	hostHeaders   = []string{"X-Forwarded-Host"}
	protoHeaders  = []string{"X-Forwarded-Proto"}
)

// errAmbiguous refuses a request whose original method, URI, host or
// scheme is described more than once with different values.
var errAmbiguous = errors.New("forward-auth headers describe the original request in conflicting ways")

// original returns the one value the headers names (in every spelling and
// every repetition) give the original request, "" when none is set. A
// proxy sets the headers of its own convention and passes the client's
// other headers through (nginx auth_request forwards a client's
// X-Forwarded-Uri next to the X-Original-URI it sets), so any disagreement
// means a client is describing the request too: it is refused rather than
// resolved by a precedence the proxy does not share.
func original(h http.Header, names []string) (string, error) {
	val := ""
	for _, n := range names {
		for _, v := range h.Values(n) {
			switch {
			case v == "":
			case val == "":
				val = v
			case v != val:
				return "", errAmbiguous
			}
		}
	}
	return val, nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	peer := netip.Addr{}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		peer = ap.Addr().Unmap()
	}
	req := &guard.Request{
		Host:          r.Host,
		Header:        r.Header,
		Peer:          peer,
		ContentLength: 0, // proxies do not send the body to forward-auth
		Start:         start,
		FrontDoor:     "forward_auth",
	}
	method, errM := original(r.Header, methodHeaders)
	target, errU := original(r.Header, uriHeaders)
	host, errH := original(r.Header, hostHeaders)
	proto, errP := original(r.Header, protoHeaders)
	ambiguous := errors.Join(errM, errU, errH, errP)
	req.Method, req.Target = method, target
	if host != "" {
		req.Host = host
	}
	req.TLS = proto == "https"

	var v *guard.Verdict
	switch {
	case !h.guard.IsTrusted(peer):
		// The original-request headers of an untrusted caller are ignored:
		// nothing else describes the request to decide, so it is refused.
		req.Method, req.Target, req.Host, req.TLS = r.Method, r.RequestURI, r.Host, false
		v = h.guard.Refuse(req, http.StatusForbidden, "untrusted_proxy", errors.New("forward-auth caller is not a trusted proxy"))
	case ambiguous != nil:
		req.Method, req.Target = r.Method, r.RequestURI
		v = h.guard.Refuse(req, http.StatusBadRequest, "ambiguous_original_request", ambiguous)
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
