// Package extauthz is the Envoy front door: an
// envoy.service.auth.v3.Authorization server. Each Check request is turned
// into the same canonical input the reverse proxy builds (gateway/guard),
// plus the fields policies written for opa-envoy-plugin expect
// (attributes, parsed_path, parsed_query, parsed_body, truncated_body,
// version), so one policy governs a call whichever way it arrives and
// existing opa-envoy policies run unchanged. Decisions map to
// OkHttpResponse / DeniedHttpResponse.
//
// A malformed Check (no HTTP attributes, non-UTF-8 values) is denied before
// any evaluation, whatever the route's configuration. Oversized Checks are
// refused by the gRPC server's receive limit (RESOURCE_EXHAUSTED).
//
// It must not import decision internals, bundles or xds.
//
// Concurrency: a *Server is immutable and safe for concurrent use.
package extauthz

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/gateway/canon"
	"github.com/policygate/policygate/gateway/guard"
)

// Server implements envoy.service.auth.v3.Authorization.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	guard *guard.Guard
}

var _ authv3.AuthorizationServer = (*Server)(nil)

// New returns an ext_authz server deciding with g.
func New(g *guard.Guard) *Server { return &Server{guard: g} }

// partialBodyHeader is set by Envoy when it sent only part of the body.
const partialBodyHeader = "x-envoy-auth-partial-body"

// Check decides one request Envoy is about to forward.
func (s *Server) Check(ctx context.Context, cr *authv3.CheckRequest) (resp *authv3.CheckResponse, err error) {
	start := time.Now()
	recorded := false
	defer func() {
		// gRPC does not recover a handler's panic: the process would die.
		// Nor is an error an answer: Envoy may fail open on one. A Check
		// that panics is denied, and logged unless it already was.
		if p := recover(); p != nil {
			v := s.guard.Refuse(&guard.Request{Header: http.Header{}, Start: start, FrontDoor: "ext_authz"},
				http.StatusInternalServerError, "internal_error", fmt.Errorf("ext_authz: panic: %v", p))
			if !recorded {
				s.guard.Record(ctx, v, decision.Completion{Status: http.StatusInternalServerError, Latency: time.Since(start)})
			}
			resp, err = respond(v), nil
		}
	}()
	req, rerr := s.request(cr)
	req.Start, req.FrontDoor = start, "ext_authz"
	var v *guard.Verdict
	if rerr != nil {
		v = s.guard.Refuse(req, http.StatusBadRequest, "malformed_request", rerr)
	} else {
		v = s.guard.Check(ctx, req)
	}
	resp = respond(v)
	status := http.StatusOK
	if !v.Allowed {
		status = v.Status
	}
	recorded = true
	s.guard.Record(ctx, v, decision.Completion{Status: status, Latency: time.Since(start)})
	return resp, nil
}

// request maps a CheckRequest to the shared Request. On error it still
// returns what it could read, for the log.
func (s *Server) request(cr *authv3.CheckRequest) (*guard.Request, error) {
	req := &guard.Request{Header: http.Header{}, ContentLength: 0}
	attrs := cr.GetAttributes()
	httpReq := attrs.GetRequest().GetHttp()
	if httpReq == nil {
		return req, errors.New("check request has no HTTP attributes")
	}
	req.Method, req.Target, req.Host = httpReq.GetMethod(), httpReq.GetPath(), httpReq.GetHost()
	req.TLS = httpReq.GetScheme() == "https"
	if sa := attrs.GetSource().GetAddress().GetSocketAddress(); sa != nil {
		if a, err := netip.ParseAddr(sa.GetAddress()); err == nil {
			req.Peer = a
		}
	}
	for _, f := range []string{req.Method, req.Target, req.Host, httpReq.GetScheme()} {
		if !utf8.ValidString(f) {
			return req, errors.New("non-UTF-8 request attribute")
		}
	}
	if req.Method == "" || req.Target == "" {
		return req, errors.New("check request lacks method or path")
	}
	if hm := httpReq.GetHeaderMap(); hm != nil && len(hm.GetHeaders()) > 0 {
		for _, hv := range hm.GetHeaders() {
			val := hv.GetValue()
			if len(hv.GetRawValue()) > 0 {
				val = string(hv.GetRawValue())
			}
			if !utf8.ValidString(hv.GetKey()) || !utf8.ValidString(val) {
				return req, errors.New("non-UTF-8 header")
			}
			addHeader(req.Header, hv.GetKey(), val)
		}
	} else {
		for k, val := range httpReq.GetHeaders() {
			if !utf8.ValidString(k) || !utf8.ValidString(val) {
				return req, errors.New("non-UTF-8 header")
			}
			addHeader(req.Header, k, val)
		}
	}
	body := httpReq.GetRawBody()
	if len(body) == 0 && httpReq.GetBody() != "" {
		body = []byte(httpReq.GetBody())
	}
	if len(body) > 0 {
		req.Body, req.ContentLength = bytes.NewReader(body), int64(len(body))
	}
	req.BodyTruncated = strings.EqualFold(req.Header.Get(partialBodyHeader), "true") ||
		(httpReq.GetSize() > 0 && httpReq.GetSize() > int64(len(body)) && len(body) > 0)
	req.Header.Del(partialBodyHeader)
	req.Extra = envoyInput(s.withoutSecrets(cr), req, body)
	return req, nil
}

// withoutSecrets returns a copy of cr whose headers lack what the decision
// path never shows to policies: the client's credentials, hop-by-hop and
// override headers. Policies see verified identity, never the raw
// Authorization header, in this shape too.
func (s *Server) withoutSecrets(cr *authv3.CheckRequest) *authv3.CheckRequest {
	c := proto.Clone(cr).(*authv3.CheckRequest)
	h := c.GetAttributes().GetRequest().GetHttp()
	for k := range h.GetHeaders() {
		if !strings.HasPrefix(k, ":") && s.guard.Strips(k) {
			delete(h.Headers, k)
		}
	}
	if hm := h.GetHeaderMap(); hm != nil {
		kept := hm.Headers[:0]
		for _, hv := range hm.GetHeaders() {
			if strings.HasPrefix(hv.GetKey(), ":") || !s.guard.Strips(hv.GetKey()) {
				kept = append(kept, hv)
			}
		}
		hm.Headers = kept
	}
	return c
}

// addHeader adds one request header. HTTP/2 pseudo-headers (:path,
// :method, ...) are attributes Envoy sends separately, not headers.
func addHeader(h http.Header, k, v string) {
	if k == "" || strings.HasPrefix(k, ":") {
		return
	}
	h.Add(k, v)
}

// envoyInput builds the opa-envoy-plugin fields: attributes (the
// CheckRequest's attributes as protojson), parsed_path, parsed_query,
// parsed_body, truncated_body and version.
func envoyInput(cr *authv3.CheckRequest, req *guard.Request, body []byte) map[string]any {
	extra := map[string]any{
		"version":        map[string]any{"encoding": "protojson", "ext_authz": "v3"},
		"parsed_path":    []any{},
		"parsed_query":   map[string]any{},
		"parsed_body":    nil,
		"truncated_body": req.BodyTruncated,
	}
	if raw, err := protojson.Marshal(cr.GetAttributes()); err == nil {
		var attrs map[string]any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if dec.Decode(&attrs) == nil {
			extra["attributes"] = attrs
		}
	}
	if tg, err := canon.Parse(req.Target, canon.Options{AllowEncodedSlash: true}); err == nil {
		segs := make([]any, len(tg.Segments))
		for i, s := range tg.Segments {
			segs[i] = s
		}
		extra["parsed_path"] = segs
		q := make(map[string]any, len(tg.Query))
		for k, vs := range tg.Query {
			items := make([]any, len(vs))
			for i, v := range vs {
				items[i] = v
			}
			q[k] = items
		}
		extra["parsed_query"] = q
	}
	// parsed_body is what the gateway's own strict parser reads (the one
	// that refuses duplicate keys and trailing data for input.request.body),
	// so that opa-envoy policies never decide on a body a backend could
	// read differently.
	if len(body) > 0 && !req.BodyTruncated && guard.IsJSON(req.Header.Get("Content-Type")) {
		if v, err := guard.ParseJSON(body); err == nil {
			extra["parsed_body"] = v
		}
	}
	return extra
}

func respond(v *guard.Verdict) *authv3.CheckResponse {
	d := v.Decision
	meta, _ := structpb.NewStruct(map[string]any{"decision_id": v.ID()})
	respHeaders := map[string]string{guard.HeaderDecisionID: v.ID()}
	for k, val := range d.Result.ResponseHeaders {
		respHeaders[k] = val
	}
	if v.RateLimit != nil {
		h := http.Header{}
		v.RateLimit.SetHeaders(h)
		for k := range h {
			respHeaders[k] = h.Get(k)
		}
	}
	if !v.Allowed {
		code := codes.PermissionDenied
		if v.Status == http.StatusUnauthorized {
			code = codes.Unauthenticated
		}
		reason := v.Reason
		if reason == "" {
			reason = v.Code
		}
		body, _ := json.Marshal(map[string]string{"error": v.Code, "decision_id": v.ID(), "reason": reason})
		respHeaders["Content-Type"] = "application/json"
		respHeaders["Cache-Control"] = "no-store"
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(code), Message: v.Code},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status:  &typev3.HttpStatus{Code: typev3.StatusCode(v.Status)},
				Headers: headerOptions(respHeaders),
				Body:    string(append(body, '\n')),
			}},
			DynamicMetadata: meta,
		}
	}
	upstream := map[string]string{guard.HeaderUpstreamID: v.ID()}
	if id := d.Input.Identity; id.Authenticated {
		upstream[guard.HeaderUpstreamSubject] = id.Subject
	}
	if v.Route.UpstreamAuthorization != "" {
		upstream["Authorization"] = v.Route.UpstreamAuthorization
	}
	for k, val := range d.Result.Headers {
		upstream[k] = val
	}
	// Headers the reverse proxy would not forward are removed from what
	// Envoy forwards: client credentials, method overrides, forged gateway
	// headers, untrusted forwarding headers.
	remove := map[string]bool{}
	for _, h := range v.Removed {
		remove[strings.ToLower(h)] = true
	}
	for _, h := range d.Result.RemoveHeaders {
		remove[strings.ToLower(h)] = true
	}
	// No other spelling of a header set or removed here (X_Foo for X-Foo)
	// reaches a backend that reads both as one.
	for _, h := range guard.OtherSpellings(v.Header, sortedKeys(upstream), d.Result.RemoveHeaders) {
		remove[strings.ToLower(h)] = true
	}
	for h := range upstream {
		delete(remove, strings.ToLower(h))
	}
	delete(remove, "connection") // hop-by-hop: Envoy handles these itself
	delete(remove, "transfer-encoding")
	delete(remove, "te")
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers:              headerOptions(upstream),
			HeadersToRemove:      sortedKeys(remove),
			ResponseHeadersToAdd: headerOptions(respHeaders),
		}},
		DynamicMetadata: meta,
	}
}

func headerOptions(m map[string]string) []*corev3.HeaderValueOption {
	out := make([]*corev3.HeaderValueOption, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: strings.ToLower(k), Value: m[k]},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
