package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

func extAuthzTestConfig(policies, upstream string) string {
	return fmt.Sprintf(`server:
  listen: 127.0.0.1:0
ext_authz:
  listen: 127.0.0.1:0
  max_message_bytes: 65536
policy:
  dir: %s
authn:
  api_key_header: X-Api-Key
  api_keys:
%s%s%sroutes:
  - name: sampleapi
    path_prefix: /v1
    upstream: %s
    policy: sampleapi/decision
    upstream_auth:
      type: bearer
      token_file: backend.token
  - name: envoy
    path_prefix: /public
    upstream: %s
    policy: envoy/authz/result
  - name: orders
    path_prefix: /orders
    upstream: %s
    policy: envoy/authz/result
decision_log:
  output: file
  path: LOGFILE
  flush_interval: 5ms
`, policies, saAdmin.yaml(), saCI.yaml(), saAuditor.yaml(), upstream, upstream, upstream)
}

// checkRequest builds a CheckRequest the way Envoy sends it.
func checkRequest(method, path string, headers map[string]string, body string) *authv3.CheckRequest {
	h := map[string]string{":authority": "api.test", ":method": method, ":path": path}
	for k, v := range headers {
		h[strings.ToLower(k)] = v
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: "192.0.2.10", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 40000}},
		}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Id: "envoy-req-1", Method: method, Path: path, Host: "api.test", Scheme: "http",
			Protocol: "HTTP/1.1", Headers: h, Body: body, Size: int64(len(body)),
		}},
	}}
}

func headerValues(opts []*corev3.HeaderValueOption) map[string]string {
	m := map[string]string{}
	for _, o := range opts {
		m[o.GetHeader().GetKey()] = o.GetHeader().GetValue()
	}
	return m
}

// TestExtAuthz drives the Envoy ext_authz front door with a real gRPC
// client: the same policies, identities and decision log as the reverse
// proxy, the opa-envoy-plugin input shape, and refusals of malformed and
// oversized Checks.
func TestExtAuthz(t *testing.T) {
	e := startSampleEnv(t) // the sample API backend
	// One bundle holding the shipped policies and an opa-envoy-plugin
	// policy, exactly as written for that plugin.
	dir := t.TempDir()
	copyTree(t, repoPath(t, "policies"), dir)
	copyTree(t, repoPath(t, "testdata/extauthz/policy"), filepath.Join(dir, "envoy"))
	ge := startGateway(t, extAuthzTestConfig(dir, e.backend.URL), map[string]string{"backend.token": backendToken})

	conn, err := grpc.NewClient(ge.ExtAuthzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	check := func(t *testing.T, cr *authv3.CheckRequest) *authv3.CheckResponse {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := client.Check(ctx, cr)
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return resp
	}

	t.Run("allowed: headers to add and remove", func(t *testing.T) {
		resp := check(t, checkRequest("GET", "/v1/service-accounts?team=payments", map[string]string{
			"authorization": "Bearer " + saAuditor.Secret, "x-http-method-override": "DELETE", "x-policygate-subject": "forged",
		}, ""))
		if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
			t.Fatalf("status %v", resp.GetStatus())
		}
		ok := resp.GetOkResponse()
		add := headerValues(ok.GetHeaders())
		if add["x-policygate-subject"] != "auditor" || add["authorization"] != "Bearer "+backendToken || add["x-policygate-decision-id"] == "" {
			t.Errorf("headers to add %v", add)
		}
		rm := strings.Join(ok.GetHeadersToRemove(), ",")
		if !strings.Contains(rm, "x-http-method-override") {
			t.Errorf("headers to remove %q lack the method override", rm)
		}
		if resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue() != add["x-policygate-decision-id"] {
			t.Errorf("dynamic metadata %v", resp.GetDynamicMetadata())
		}
	})
	t.Run("denied and unauthenticated", func(t *testing.T) {
		resp := check(t, checkRequest("DELETE", "/v1/service-accounts/payments.deployer", map[string]string{"x-api-key": saAuditor.Secret}, ""))
		den := resp.GetDeniedResponse()
		if codes.Code(resp.GetStatus().GetCode()) != codes.PermissionDenied || den.GetStatus().GetCode() != 403 {
			t.Fatalf("deny: %v", resp)
		}
		var body map[string]string
		if err := json.Unmarshal([]byte(den.GetBody()), &body); err != nil || body["decision_id"] == "" || body["error"] != "forbidden" {
			t.Fatalf("denial body %q", den.GetBody())
		}
		resp = check(t, checkRequest("GET", "/v1/service-accounts", nil, ""))
		if codes.Code(resp.GetStatus().GetCode()) != codes.Unauthenticated || resp.GetDeniedResponse().GetStatus().GetCode() != 401 {
			t.Fatalf("unauthenticated: %v", resp)
		}
	})
	t.Run("same canonicalization as the proxy", func(t *testing.T) {
		for _, p := range []string{"//v1/service-accounts", "/v1/%2e%2e/admin", "/v1/a#b", "/v1/x?a=1;b=2"} {
			resp := check(t, checkRequest("GET", p, map[string]string{"x-api-key": saAdmin.Secret}, ""))
			if resp.GetDeniedResponse().GetStatus().GetCode() != 400 {
				t.Errorf("%s: %v", p, resp)
			}
		}
	})
	t.Run("opa-envoy-plugin policy runs unchanged", func(t *testing.T) {
		resp := check(t, checkRequest("GET", "/public/x", nil, ""))
		if resp.GetOkResponse() == nil || headerValues(resp.GetOkResponse().GetHeaders())["x-opa-envoy"] != "checked" ||
			headerValues(resp.GetOkResponse().GetResponseHeadersToAdd())["x-policy"] != "envoy.authz" {
			t.Fatalf("allow: %v", resp)
		}
		resp = check(t, checkRequest("POST", "/orders?dry_run=true", map[string]string{"content-type": "application/json"}, `{"amount": 42}`))
		if resp.GetOkResponse() == nil {
			t.Fatalf("body rule: %v", resp)
		}
		resp = check(t, checkRequest("POST", "/orders?dry_run=true", map[string]string{"content-type": "application/json"}, `{"amount": 420}`))
		if resp.GetDeniedResponse().GetStatus().GetCode() != 418 {
			t.Fatalf("http_status from the policy: %v", resp)
		}
	})
	t.Run("malformed checks are denied", func(t *testing.T) {
		// Envoy sends raw header bytes in header_map; a string field cannot
		// carry them.
		bad := checkRequest("GET", "/public/x", nil, "")
		bad.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":path", RawValue: []byte("/public/x")},
			{Key: "x-bad", RawValue: []byte("caf\xe9")},
		}}
		if resp := check(t, bad); resp.GetDeniedResponse().GetStatus().GetCode() != 400 {
			t.Errorf("non-UTF-8 header: %v", resp)
		}
		noHTTP := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{}}
		if resp := check(t, noHTTP); resp.GetDeniedResponse().GetStatus().GetCode() != 400 {
			t.Errorf("no HTTP attributes: %v", resp)
		}
	})
	t.Run("oversized check is refused", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := client.Check(ctx, checkRequest("POST", "/orders", map[string]string{"content-type": "application/json"},
			`{"pad":"`+strings.Repeat("x", 70000)+`"}`))
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("err %v, want RESOURCE_EXHAUSTED", err)
		}
	})
	t.Run("golden: CheckRequest to input", func(t *testing.T) {
		resp := check(t, checkRequest("POST", "/orders?dry_run=true&tag=a&tag=b", map[string]string{
			"content-type": "application/json", "user-agent": "golden/1", "x-api-key": saCI.Secret,
		}, `{"amount": 7, "note": "n"}`))
		id := resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue()
		ev := ge.WaitEvent(t, id)
		in := ev["input"].(map[string]any)
		req := in["request"].(map[string]any)
		delete(req, "id") // random per request
		got, _ := json.MarshalIndent(in, "", "  ")
		golden := repoPath(t, "testdata/extauthz/check_input.golden.json")
		if *update {
			if err := os.WriteFile(golden, append(got, '\n'), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run with -update to create)", err)
		}
		if strings.TrimSpace(string(want)) != strings.TrimSpace(string(got)) {
			t.Errorf("input differs from %s (run with -update after review):\n%s", golden, got)
		}
	})
	t.Run("every check is logged once", func(t *testing.T) {
		ge.Stop(t)
		ids := map[string]int{}
		for _, ev := range ge.Events(t) {
			ids[ev["decision_id"].(string)]++
		}
		var dup []string
		for id, n := range ids {
			if n != 1 {
				dup = append(dup, id)
			}
		}
		sort.Strings(dup)
		if len(dup) > 0 || len(ids) < 12 {
			t.Errorf("%d events, duplicated %v", len(ids), dup)
		}
		raw, err := os.ReadFile(ge.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range []string{saAdmin.Secret, saCI.Secret, saAuditor.Secret, backendToken} {
			if strings.Contains(string(raw), secret) {
				t.Errorf("decision log contains credential %q", secret)
			}
		}
	})
}

// copyTree copies the regular files below src into dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}
