package xds

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"gopkg.in/yaml.v3"
)

const deployDir = "../deploy"

// parseBootstrap reads Envoy YAML as Envoy does: YAML → JSON → proto3 JSON,
// unknown fields rejected, typed_config resolved by type URL.
func parseBootstrap(raw []byte) (*bootstrapv3.Bootstrap, error) {
	var doc any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("json: %w", err)
	}
	bs := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(js, bs); err != nil {
		return nil, fmt.Errorf("protojson: %w", err)
	}
	return bs, nil
}

// validateDeep runs Envoy's validation rules on m and on every message
// packed in an Any inside it, which Validate alone does not open.
func validateDeep(m proto.Message) error {
	var errs []error
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.ProtoReflect().Descriptor().FullName(), err))
		}
	}
	var visit func(protoreflect.Message)
	visitValue := func(fd protoreflect.FieldDescriptor, v protoreflect.Value) {
		if fd.Message() == nil {
			return
		}
		msg := v.Message()
		if a, ok := msg.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", a.GetTypeUrl(), err))
				return
			}
			errs = append(errs, validateDeep(inner))
			return
		}
		visit(msg)
	}
	visit = func(msg protoreflect.Message) {
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList():
				for i := 0; i < v.List().Len(); i++ {
					visitValue(fd, v.List().Get(i))
				}
			case fd.IsMap():
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					visitValue(fd.MapValue(), mv)
					return true
				})
			default:
				visitValue(fd, v)
			}
			return true
		})
	}
	visit(m.ProtoReflect())
	return errors.Join(errs...)
}

func TestEnvoyBootstrapsValidate(t *testing.T) {
	for _, name := range []string{"bootstrap.yaml", "static.yaml"} {
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(deployDir, "envoy", name))
			if err != nil {
				t.Fatal(err)
			}
			bs, err := parseBootstrap(raw)
			if err != nil {
				t.Fatal(err)
			}
			if err := validateDeep(bs); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestEnvoyBootstrapPointsAtPolicygate(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(deployDir, "envoy", "bootstrap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bs, err := parseBootstrap(raw)
	if err != nil {
		t.Fatal(err)
	}
	if bs.GetNode().GetId() == "" || bs.GetNode().GetCluster() == "" {
		t.Error("ADS needs the node's id and cluster: policygate selects routes by them")
	}
	ads := bs.GetDynamicResources().GetAdsConfig()
	cluster := ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName()
	found := false
	for _, c := range bs.GetStaticResources().GetClusters() {
		found = found || c.GetName() == cluster
	}
	if !found {
		t.Errorf("ads_config names cluster %q, which is not defined", cluster)
	}
	if bs.GetDynamicResources().GetLdsConfig().GetAds() == nil || bs.GetDynamicResources().GetCdsConfig().GetAds() == nil {
		t.Error("listeners and clusters must come over ADS")
	}
	for _, c := range bs.GetStaticResources().GetClusters() {
		if c.GetName() == ExtAuthzClusterName {
			t.Errorf("%s is defined statically; policygate sends it over CDS and Envoy would refuse the duplicate", ExtAuthzClusterName)
		}
	}
}

// TestEnvoyStaticMatchesBuilder keeps static.yaml in step with what the
// builder sends over xDS for the same single route.
func TestEnvoyStaticMatchesBuilder(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(deployDir, "envoy", "static.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bs, err := parseBootstrap(raw)
	if err != nil {
		t.Fatal(err)
	}
	b := newBuilder(t, Config{Listen: "127.0.0.1:18000", ExtAuthz: ExtAuthzConfig{Address: "127.0.0.1:9191", WithRequestBody: &BodyConfig{MaxBytes: 65536}}})
	res, err := b.Resources([]Route{{Name: "sampleapi", Upstream: mustURL(t, "http://127.0.0.1:9091"), Timeout: 30 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	hcmOf := func(a *anypb.Any) *hcmv3.HttpConnectionManager {
		h := &hcmv3.HttpConnectionManager{}
		if err := a.UnmarshalTo(h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	static := hcmOf(bs.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig())
	built := hcmOf(res.Listeners[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig())
	if !proto.Equal(static.GetRouteConfig(), res.RouteConfigs[0]) {
		t.Errorf("route_config differs from the builder's:\nstatic: %v\nbuilt:  %v", static.GetRouteConfig(), res.RouteConfigs[0])
	}
	// Apart from inline routes versus RDS, the connection managers agree.
	static.RouteSpecifier, built.RouteSpecifier = nil, nil
	if !proto.Equal(static, built) {
		t.Errorf("http_connection_manager differs from the builder's:\nstatic: %v\nbuilt:  %v", static, built)
	}
}

func TestParseBootstrapRejects(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown field", "static_resources: {clusterz: []}", "unknown field"},
		{"unknown type", `static_resources: {listeners: [{name: l, filter_chains: [{filters: [{name: f, typed_config: {"@type": type.googleapis.com/no.such.Type}}]}]}]}`, "no.such.Type"},
		{"invalid nested config", `static_resources: {listeners: [{name: l, address: {socket_address: {address: 0.0.0.0, port_value: 1}}, filter_chains: [{filters: [{name: f, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: x, rds: {route_config_name: r, config_source: {ads: {}}}, http_filters: [{name: ""}]}}]}]}]}`, "HttpFilter.Name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bs, err := parseBootstrap([]byte(tc.yaml))
			if err == nil {
				err = validateDeep(bs)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want %q", err, tc.want)
			}
		})
	}
}

// nginxBinary finds nginx. It is optional on developer machines;
// POLICYGATE_REQUIRE_NGINX=1 makes its absence a failure (CI).
func nginxBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		// Debian installs it in /usr/sbin, which a user's PATH may lack.
		bin, err = exec.LookPath("/usr/sbin/nginx")
	}
	if err != nil {
		if os.Getenv("POLICYGATE_REQUIRE_NGINX") == "1" {
			t.Fatal("nginx not installed and POLICYGATE_REQUIRE_NGINX=1")
		}
		t.Skip("nginx not installed")
	}
	return bin
}

// nginxPrefix writes the example, with replacements, into a fresh prefix.
func nginxPrefix(t *testing.T, replace ...string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(deployDir, "nginx", "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer(replace...).Replace(string(raw))
	prefix := t.TempDir()
	if err := os.WriteFile(filepath.Join(prefix, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return prefix
}

// TestNginxConfig runs nginx's own configuration test on the example.
func TestNginxConfig(t *testing.T) {
	bin := nginxBinary(t)
	prefix := nginxPrefix(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-t", "-q", "-p", prefix+"/", "-c", "nginx.conf", "-e", "stderr").CombinedOutput()
	if err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
}

// TestNginxAuthRequest runs the example for real between a stand-in for
// policygate's forward-auth front door (same contract: X-Original-Method
// and X-Original-URI in, 2xx with X-Policygate-Subject and X-Decision-Id or
// 401/403 out) and a backend that reports what it received.
func TestNginxAuthRequest(t *testing.T) {
	bin := nginxBinary(t)
	type seen struct{ method, uri, subject, decision string }
	var authSeen []seen
	var mu sync.Mutex
	auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		authSeen = append(authSeen, seen{r.Header.Get("X-Original-Method"), r.Header.Get("X-Original-URI"), "", ""})
		mu.Unlock()
		w.Header().Set("X-Decision-Id", "dec-1")
		switch {
		case r.URL.Path != "/v1/forward-auth":
			w.WriteHeader(http.StatusNotFound)
		case r.Header.Get("Authorization") == "":
			w.WriteHeader(http.StatusUnauthorized)
		case strings.HasPrefix(r.Header.Get("X-Original-URI"), "/public/"):
			w.Header().Set("X-Policygate-Subject", "ci-payments")
			w.WriteHeader(http.StatusOK)
		default:
			w.WriteHeader(http.StatusForbidden)
		}
	}))
	defer auth.Close()
	backendCh := make(chan seen, 16)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		backendCh <- seen{r.Method, r.RequestURI, r.Header.Get("X-Policygate-Subject"), r.Header.Get("X-Policygate-Decision-Id")}
		w.WriteHeader(http.StatusOK)
	}))
	defer backend.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := ln.Addr().String()
	ln.Close()
	prefix := nginxPrefix(t,
		"127.0.0.1:9190", strings.TrimPrefix(auth.URL, "http://"),
		"127.0.0.1:9091", strings.TrimPrefix(backend.URL, "http://"),
		"listen 127.0.0.1:8088", "listen "+front,
	)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-p", prefix+"/", "-c", "nginx.conf", "-e", "stderr", "-g", "daemon off; master_process off;")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill() // the nginx this test started, by its PID
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("nginx stderr:\n%s", stderr.String())
		}
	}()
	client := &http.Client{Timeout: 5 * time.Second}
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", front, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx did not listen on %s: %v", front, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	do := func(path string, hdr map[string]string) *http.Response {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+front+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}

	// Allowed: the backend gets the request as sent, with policygate's
	// subject and decision, not the client's.
	resp := do("/public/a?x=1", map[string]string{
		"Authorization":        "Bearer k",
		"X-Policygate-Subject": "admin",
		"X-Original-URI":       "/admin/x",
	})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("allowed request: %d", resp.StatusCode)
	}
	select {
	case got := <-backendCh:
		if got != (seen{http.MethodPost, "/public/a?x=1", "ci-payments", "dec-1"}) {
			t.Errorf("backend saw %+v", got)
		}
	case <-ctx.Done():
		t.Fatal("the backend was not called")
	}
	mu.Lock()
	if len(authSeen) != 1 || authSeen[0].method != http.MethodPost || authSeen[0].uri != "/public/a?x=1" {
		t.Errorf("forward-auth saw %+v: the client's X-Original-URI must not reach it", authSeen)
	}
	mu.Unlock()

	for _, tc := range []struct {
		name   string
		path   string
		hdr    map[string]string
		status int
	}{
		{"forbidden", "/admin/users", map[string]string{"Authorization": "Bearer k"}, http.StatusForbidden},
		{"unauthenticated", "/public/a", nil, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := do(tc.path, tc.hdr)
			if resp.StatusCode != tc.status || resp.Header.Get("X-Decision-Id") != "dec-1" || resp.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("status %d, X-Decision-Id %q, Cache-Control %q; want %d with the decision id, no-store",
					resp.StatusCode, resp.Header.Get("X-Decision-Id"), resp.Header.Get("Cache-Control"), tc.status)
			}
			select {
			case got := <-backendCh:
				t.Errorf("a denied request reached the backend: %+v", got)
			default:
			}
		})
	}
}
