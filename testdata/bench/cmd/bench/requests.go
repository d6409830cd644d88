package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/policygate/policygate/decision"
)

// The load: identities callers, each holding rolesPerIdentity roles of the
// reference policy, each sending rounds × (3 GETs + 1 POST) distinct
// requests its roles allow. Every variant must answer every one of them
// with 2xx: the bench measures the allow path.
const (
	identities       = 8
	rolesPerIdentity = 3
	rounds           = 2
	getsPerPost      = 3
	postBody         = `{"name":"bench-key","ttl_seconds":3600}`
	postContentType  = "application/json"
	// userAgent and accept are sent with every request, as an admin
	// client would.
	userAgent = "policygate-bench/1"
	accept    = "application/json"
)

// request is one request of the mix.
type request struct {
	who    *identity
	method string
	path   string
	body   string // POST only
}

func (r request) String() string { return fmt.Sprintf("%s %s as %s", r.method, r.path, r.who.subject) }

// permission is one entry of data.rbac.roles[role].
type permission struct {
	Method string `json:"method"`
	Path   string `json:"path"`
}

// pickRequests reads the roles of the reference policy from the OPA server,
// signs a token per identity, and keeps, for each, the concrete requests
// derived from its roles' patterns that the policy allows.
func (b *bench) pickRequests(ctx context.Context) error {
	roles, err := b.policyRoles(ctx)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(roles))
	for name := range roles {
		names = append(names, name)
	}
	sort.Strings(names)
	n := len(names)
	b.roles = n
	if n == 0 {
		return fmt.Errorf("%s: data.rbac.roles is empty", policyRel)
	}
	var list []request
	for i := range identities {
		var picked []string
		has := map[string]bool{}
		add := func(idx int) {
			if name := names[idx%n]; !has[name] {
				has[name] = true
				picked = append(picked, name)
			}
		}
		for k := range rolesPerIdentity {
			add(i*6 + k*17)
		}
		var gets, posts []request
		// An identity needs an allowed GET and an allowed POST; if its
		// roles grant only one kind, it gets more roles.
		for extra := 0; ; extra++ {
			who, err := b.auth.identity(fmt.Sprintf("svc-bench-%d", i), picked)
			if err != nil {
				return err
			}
			if gets, posts, err = b.allowedRequests(ctx, &who, roles); err != nil {
				return err
			}
			if len(gets) > 0 && len(posts) > 0 {
				break
			}
			if extra >= n {
				return fmt.Errorf("%s: no role combination of identity %d allows both a GET and a POST; the load needs both", policyRel, i)
			}
			add(i*6 + 1 + extra*7)
		}
		for r := range rounds {
			for g := range getsPerPost {
				list = append(list, gets[(r*getsPerPost+g)%len(gets)])
			}
			list = append(list, posts[r%len(posts)])
		}
	}
	b.requests = list
	return nil
}

// policyRoles reads data.rbac.roles from the OPA server, which loaded the
// reference policy as a bundle.
func (b *bench) policyRoles(ctx context.Context) (map[string][]permission, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.opaURL+"/v1/data/rbac/roles", nil)
	if err != nil {
		return nil, err
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("opa: read data.rbac.roles: %w", err)
	}
	defer resp.Body.Close()
	var out struct {
		Result map[string][]permission `json:"result"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("opa: read data.rbac.roles: status %d: %v", resp.StatusCode, err)
	}
	return out.Result, nil
}

// allowedRequests derives concrete requests from the patterns of who's
// roles and asks the OPA server which of them the policy allows.
func (b *bench) allowedRequests(ctx context.Context, who *identity, roles map[string][]permission) (gets, posts []request, err error) {
	seen := map[string]bool{}
	for _, role := range who.roles {
		for i, p := range roles[role] {
			methods := []string{strings.ToUpper(p.Method)}
			if p.Method == "*" {
				methods = []string{http.MethodGet, http.MethodPost}
			}
			path := concretePath(p.Path, i)
			for _, m := range methods {
				if (m != http.MethodGet && m != http.MethodPost) || seen[m+" "+path] {
					continue
				}
				seen[m+" "+path] = true
				r := request{who: who, method: m, path: path}
				if m == http.MethodPost {
					r.body = postBody
				}
				ok, err := b.opaAllows(ctx, r)
				if err != nil {
					return nil, nil, err
				}
				switch {
				case !ok:
				case m == http.MethodGet:
					gets = append(gets, r)
				default:
					posts = append(posts, r)
				}
			}
		}
	}
	return gets, posts, nil
}

// concretePath turns a path pattern into a path it matches: "*" stands for
// one segment, "**" for any number.
func concretePath(pattern string, n int) string {
	id := fmt.Sprintf("bench-%d", n)
	segs := strings.Split(pattern, "/")
	for i, s := range segs {
		switch {
		case s == "**":
			segs[i] = id + "/item"
		case strings.Contains(s, "*"):
			segs[i] = strings.ReplaceAll(s, "*", id)
		}
	}
	return strings.Join(segs, "/")
}

// opaAllows asks the OPA server for the decision on r with the input
// policygate would build.
func (b *bench) opaAllows(ctx context.Context, r request) (bool, error) {
	payload, err := json.Marshal(struct {
		Input decision.Input `json:"input"`
	}{inputOf(r)})
	if err != nil {
		return false, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.opaURL+"/v1/data/"+rule, bytes.NewReader(payload))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := probeClient.Do(req)
	if err != nil {
		return false, fmt.Errorf("opa: decide %s: %w", r, err)
	}
	defer resp.Body.Close()
	var out struct {
		Result json.RawMessage `json:"result"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("opa: decide %s: status %d: %v", r, resp.StatusCode, err)
	}
	return allows(out.Result), nil
}

// allows interprets a decision document: true, or an object whose allow
// (or allowed) is true.
func allows(result json.RawMessage) bool {
	var b bool
	if json.Unmarshal(result, &b) == nil {
		return b
	}
	var obj struct {
		Allow   *bool `json:"allow"`
		Allowed *bool `json:"allowed"`
	}
	if json.Unmarshal(result, &obj) != nil {
		return false
	}
	if obj.Allow != nil {
		return *obj.Allow
	}
	return obj.Allowed != nil && *obj.Allowed
}

// inputOf builds the input document policygate gives the policy for r.
func inputOf(r request) decision.Input {
	segments := []string{}
	for _, s := range strings.Split(r.path, "/") {
		if s == "" {
			continue
		}
		if u, err := url.PathUnescape(s); err == nil {
			s = u
		}
		segments = append(segments, s)
	}
	headers := map[string]string{"accept": accept, "user-agent": userAgent}
	var body any
	if r.body != "" {
		headers["content-type"] = postContentType
		_ = json.Unmarshal([]byte(r.body), &body)
	}
	return decision.Input{
		Request: decision.Request{
			ID: "bench-preflight", Method: r.method, Scheme: "http", Host: "127.0.0.1",
			Path: r.path, RawPath: r.path, Segments: segments, Query: map[string][]string{},
			Headers: headers, Body: body, RemoteAddr: "127.0.0.1",
		},
		Identity: decision.Identity{
			Authenticated: true, Method: decision.MethodJWT, Subject: r.who.subject,
			Issuer: issuer, KeyID: keyID, Groups: []string{}, Claims: r.who.claims,
		},
		Route: decision.Route{Name: "bench", Labels: map[string]string{}},
	}
}

// luaScript is the wrk script: it cycles through the requests (formatted
// once, in init) and prints one machine-readable result line when done.
func luaScript(reqs []request) []byte {
	var b strings.Builder
	b.WriteString("-- policygate bench: the request mix, cycled in order.\nlocal reqs = {}\nlocal i = 0\n\nfunction init(args)\n")
	for _, r := range reqs {
		headers := fmt.Sprintf(`{["Authorization"] = %s, ["User-Agent"] = %s, ["Accept"] = %s`,
			luaString("Bearer "+r.who.token), luaString(userAgent), luaString(accept))
		body := "nil"
		if r.body != "" {
			headers += fmt.Sprintf(`, ["Content-Type"] = %s`, luaString(postContentType))
			body = luaString(r.body)
		}
		headers += "}"
		fmt.Fprintf(&b, "  reqs[#reqs + 1] = wrk.format(%s, %s, %s, %s)\n", luaString(r.method), luaString(r.path), headers, body)
	}
	b.WriteString(`end

function request()
  i = i % #reqs + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCHRESULT %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
`)
	return []byte(b.String())
}

// luaString quotes s as a Lua string literal.
func luaString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c >= 0x7f:
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}
