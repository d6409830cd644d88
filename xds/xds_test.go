package xds

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/xds")

const goldenDir = "../testdata/xds"

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func testConfig() Config {
	return Config{
		Listen:   "127.0.0.1:18000",
		ExtAuthz: ExtAuthzConfig{Address: "127.0.0.1:9191", WithRequestBody: &BodyConfig{MaxBytes: 65536}},
		Nodes: []NodeConfig{
			{ID: "edge-vault-1", Routes: []string{"vault"}},
			{Cluster: "rabbitmq-edge", Routes: []string{"rabbitmq", "sampleapi"}},
		},
	}
}

// testRoutes are shaped like the gateway's parsed routes: prefixes without
// a trailing slash, "" for the root.
func testRoutes(t testing.TB) []Route {
	return []Route{
		{Name: "sampleapi", PathPrefix: "", Upstream: mustURL(t, "http://127.0.0.1:9091"), Timeout: 30 * time.Second},
		{Name: "rabbitmq", PathPrefix: "/api", Upstream: mustURL(t, "http://127.0.0.1:15672"), Timeout: 30 * time.Second, AllowEncodedSlash: true},
		{Name: "vault-keys", Host: "vault.example.com", PathPrefix: "/v1", Upstream: mustURL(t, "https://vault.internal:8200"), Timeout: 10 * time.Second},
		{Name: "vault", Host: "vault.example.com", PathPrefix: "/v1/sys", Upstream: mustURL(t, "https://vault.internal:8200"), Timeout: 10 * time.Second},
	}
}

func newBuilder(t testing.TB, cfg Config) *Builder {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// protoJSON renders messages as an indented JSON array. protojson's own
// whitespace is deliberately unstable, so it is compacted and re-indented.
func protoJSON[T proto.Message](t testing.TB, msgs []T) []byte {
	t.Helper()
	list := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var c bytes.Buffer
		if err := json.Compact(&c, b); err != nil {
			t.Fatal(err)
		}
		list = append(list, c.Bytes())
	}
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join(goldenDir, name)
	if *update {
		if err := os.MkdirAll(goldenDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./xds -run TestGolden -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file; if the change is intended, run go test ./xds -run TestGolden -update\ngot:\n%s", path, got)
	}
}

func TestGolden(t *testing.T) {
	b := newBuilder(t, testConfig())
	res, err := b.Resources(testRoutes(t))
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "listeners.json", protoJSON(t, res.Listeners))
	golden(t, "routes.json", protoJSON(t, res.RouteConfigs))
	golden(t, "clusters.json", protoJSON(t, res.Clusters))
	golden(t, "endpoints.json", protoJSON(t, res.Endpoints))

	px, err := b.Proxyless("admin.grpc", []Route{
		{Name: "health", PathPrefix: "/grpc.health.v1.Health", Upstream: mustURL(t, "http://127.0.0.1:50051"), Timeout: 5 * time.Second},
		{Name: "rest", Upstream: mustURL(t, "http://backend.internal:8080")},
	})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "proxyless_listeners.json", protoJSON(t, px.Listeners))
	golden(t, "proxyless_routes.json", protoJSON(t, px.RouteConfigs))
	golden(t, "proxyless_clusters.json", protoJSON(t, px.Clusters))
	golden(t, "proxyless_endpoints.json", protoJSON(t, px.Endpoints))
}

func TestResourceShape(t *testing.T) {
	b := newBuilder(t, testConfig())
	res, err := b.Resources(testRoutes(t))
	if err != nil {
		t.Fatal(err)
	}
	if n := []int{len(res.Listeners), len(res.RouteConfigs), len(res.Clusters), len(res.Endpoints)}; n[0] != 1 || n[1] != 1 || n[2] != 4 || n[3] != 2 {
		t.Fatalf("listeners, routes, clusters, endpoints = %v, want [1 1 4 2] (ext_authz + 3 upstreams; 2 upstreams by IP)", n)
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := res.Listeners[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	var filters []string
	for _, f := range hcm.GetHttpFilters() {
		filters = append(filters, f.GetName())
	}
	if got := strings.Join(filters, ","); got != "envoy.filters.http.ext_authz,envoy.filters.http.router" {
		t.Errorf("http filters = %s", got)
	}
	if !hcm.GetNormalizePath().GetValue() || !hcm.GetMergeSlashes() {
		t.Error("path normalization and merge_slashes must be on")
	}
	// rabbitmq allows %2F, so the listener keeps it for policygate to judge.
	if got := hcm.GetPathWithEscapedSlashesAction(); got != hcmv3.HttpConnectionManager_KEEP_UNCHANGED {
		t.Errorf("escaped slashes = %v, want KEEP_UNCHANGED", got)
	}

	// Route order within the vault host: its own routes, longest prefix
	// first, then the any-host fallbacks.
	vhs := res.RouteConfigs[0].GetVirtualHosts()
	if len(vhs) != 2 || vhs[0].GetName() != "vault.example.com" || vhs[1].GetDomains()[0] != "*" {
		t.Fatalf("virtual hosts = %v", vhs)
	}
	var order []string
	for _, r := range vhs[0].GetRoutes() {
		order = append(order, r.GetName())
	}
	if got := strings.Join(order, ","); got != "vault,vault-keys,rabbitmq,sampleapi" {
		t.Errorf("vault.example.com route order = %s", got)
	}
}

func TestEscapedSlashesRejectedByDefault(t *testing.T) {
	b := newBuilder(t, testConfig())
	rs := testRoutes(t)
	for i := range rs {
		rs[i].AllowEncodedSlash = false
	}
	res, err := b.Resources(rs)
	if err != nil {
		t.Fatal(err)
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := res.Listeners[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	if got := hcm.GetPathWithEscapedSlashesAction(); got != hcmv3.HttpConnectionManager_REJECT_REQUEST {
		t.Errorf("escaped slashes = %v, want REJECT_REQUEST", got)
	}
}

func TestVersionsAreContentHashes(t *testing.T) {
	b := newBuilder(t, testConfig())
	rs := testRoutes(t)
	s1, err := b.Build(rs)
	if err != nil {
		t.Fatal(err)
	}
	// The same routes in another order: the same versions.
	rev := append([]Route(nil), rs...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	s2, err := newBuilder(t, testConfig()).Build(rev)
	if err != nil {
		t.Fatal(err)
	}
	if s1.Version() != s2.Version() {
		t.Fatalf("set versions differ for equal routes: %s vs %s", s1.Version(), s2.Version())
	}
	for k, snap := range s1.Snapshots {
		if snap.Version() != s2.Snapshots[k].Version() {
			t.Errorf("group %s: versions differ for equal routes", k)
		}
	}

	// A changed upstream port changes clusters, endpoints and routes, not
	// the listener.
	changed := append([]Route(nil), rs...)
	changed[0].Upstream = mustURL(t, "http://127.0.0.1:9092")
	s3, err := b.Build(changed)
	if err != nil {
		t.Fatal(err)
	}
	a, c := s1.Snapshots[DefaultGroup], s3.Snapshots[DefaultGroup]
	if a.Version() == c.Version() {
		t.Fatal("a changed upstream kept the snapshot version")
	}
	for _, tc := range []struct {
		typeURL string
		same    bool
	}{
		{resourcev3.ListenerType, true},
		{resourcev3.RouteType, false},
		{resourcev3.ClusterType, false},
		{resourcev3.EndpointType, false},
	} {
		if same := a.TypeVersion(tc.typeURL) == c.TypeVersion(tc.typeURL); same != tc.same {
			t.Errorf("%s: version unchanged = %v, want %v", tc.typeURL, same, tc.same)
		}
	}
	// The rabbitmq-edge group does not route to vault; the vault node does
	// not route to sampleapi.
	if s1.Snapshots["id/edge-vault-1"].Version() != s3.Snapshots["id/edge-vault-1"].Version() {
		t.Error("a change to sampleapi changed the vault-only group")
	}
}

func TestBuildGroups(t *testing.T) {
	set, err := newBuilder(t, testConfig()).Build(testRoutes(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		group    string
		clusters int // ext_authz + upstreams
		routes   []string
	}{
		{DefaultGroup, 4, []string{"rabbitmq", "sampleapi", "vault", "vault-keys"}},
		{"id/edge-vault-1", 2, []string{"vault"}},
		{"cluster/rabbitmq-edge", 3, []string{"rabbitmq", "sampleapi"}},
	} {
		t.Run(tc.group, func(t *testing.T) {
			snap, ok := set.Snapshots[tc.group]
			if !ok {
				t.Fatalf("no snapshot for %s", tc.group)
			}
			if err := snap.Consistent(); err != nil {
				t.Fatal(err)
			}
			if n := len(snap.Resources().Clusters); n != tc.clusters {
				t.Errorf("clusters = %d, want %d", n, tc.clusters)
			}
			names := map[string]bool{}
			for _, vh := range snap.Resources().RouteConfigs[0].GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					names[r.GetName()] = true
				}
			}
			if len(names) != len(tc.routes) {
				t.Errorf("routes = %v, want %v", names, tc.routes)
			}
			for _, r := range tc.routes {
				if !names[r] {
					t.Errorf("route %s missing", r)
				}
			}
		})
	}
	if len(set.Snapshots) != 3 {
		t.Errorf("groups = %d, want 3", len(set.Snapshots))
	}
}

func TestNodeKey(t *testing.T) {
	b := newBuilder(t, testConfig())
	for _, tc := range []struct {
		id, cluster, want string
	}{
		{"edge-vault-1", "rabbitmq-edge", "id/edge-vault-1"}, // id wins over cluster
		{"edge-2", "rabbitmq-edge", "cluster/rabbitmq-edge"},
		{"edge-3", "other", DefaultGroup},
		{"", "", DefaultGroup},
	} {
		if got := b.NodeKey(&corev3.Node{Id: tc.id, Cluster: tc.cluster}); got != tc.want {
			t.Errorf("NodeKey(%q, %q) = %q, want %q", tc.id, tc.cluster, got, tc.want)
		}
	}
	if got := b.NodeKey(nil); got != DefaultGroup {
		t.Errorf("NodeKey(nil) = %q", got)
	}
}

func TestConfigErrors(t *testing.T) {
	ok := testConfig()
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want []string
	}{
		{"listen missing", func(c *Config) { c.Listen = "" }, []string{"listen: required"}},
		{"listen not host:port", func(c *Config) { c.Listen = "18000" }, []string{"listen: "}},
		{"listener address", func(c *Config) { c.EnvoyListenerAddress = "example.com" }, []string{"envoy_listener_address: "}},
		{"listener port", func(c *Config) { c.EnvoyListenerPort = 70000 }, []string{"envoy_listener_port: 70000"}},
		{"ext_authz address", func(c *Config) { c.ExtAuthz.Address = "" }, []string{"ext_authz.address: required"}},
		{"ext_authz port", func(c *Config) { c.ExtAuthz.Address = "policygate:http" }, []string{"ext_authz.address: "}},
		{"ext_authz timeout", func(c *Config) { c.ExtAuthz.Timeout = "-1s" }, []string{"ext_authz.timeout: "}},
		{"body limit", func(c *Config) { c.ExtAuthz.WithRequestBody.MaxBytes = 0 }, []string{"ext_authz.with_request_body.max_bytes: "}},
		{"node id and cluster", func(c *Config) { c.Nodes[0].Cluster = "x" }, []string{"nodes[0].id: exactly one"}},
		{"node without routes", func(c *Config) { c.Nodes[1].Routes = nil }, []string{"nodes[1].routes: "}},
		{"duplicate node", func(c *Config) { c.Nodes = append(c.Nodes, NodeConfig{ID: "edge-vault-1", Routes: []string{"vault"}}) }, []string{"nodes[2].id: duplicate"}},
		{"all at once", func(c *Config) { c.Listen = ""; c.ExtAuthz.Address = "" }, []string{"listen: required", "ext_authz.address: required"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			c.ExtAuthz.WithRequestBody = &BodyConfig{MaxBytes: ok.ExtAuthz.WithRequestBody.MaxBytes}
			c.Nodes = append([]NodeConfig(nil), ok.Nodes...)
			tc.edit(&c)
			_, err := New(c)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	if _, err := New(ok); err != nil {
		t.Fatalf("valid config: %v", err)
	}
}

func TestBuildErrors(t *testing.T) {
	b := newBuilder(t, testConfig())
	for _, tc := range []struct {
		name   string
		routes func([]Route) []Route
		want   string
	}{
		{"unknown node route", func(rs []Route) []Route { return rs[:2] }, `nodes[0].routes[0]: unknown route "vault"`},
		{"duplicate name", func(rs []Route) []Route { return append(rs, rs[0]) }, "routes[4].name: duplicate"},
		{"no upstream", func(rs []Route) []Route { rs[1].Upstream = nil; return rs }, "routes[1].upstream: required"},
		{"bad scheme", func(rs []Route) []Route { rs[1].Upstream = mustURL(t, "ftp://x"); return rs }, "routes[1].upstream: "},
		{"bad prefix", func(rs []Route) []Route { rs[1].PathPrefix = "api"; return rs }, "routes[1].path_prefix: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := b.Build(tc.routes(testRoutes(t)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestSnapshotChecks(t *testing.T) {
	b := newBuilder(t, testConfig())
	fresh := func(t *testing.T) *Resources {
		res, err := b.Resources(testRoutes(t))
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	for _, tc := range []struct {
		name string
		edit func(*Resources)
		want string
	}{
		{"route to a missing cluster", func(r *Resources) {
			r.RouteConfigs[0].VirtualHosts[0].Routes[0].GetRoute().ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: "nowhere"}
		}, `cluster "nowhere" is not defined`},
		{"missing endpoints", func(r *Resources) { r.Endpoints = r.Endpoints[:1] }, "cluster load assignment \"upstream_http_127.0.0.1_9091\" is referenced but not defined"},
		{"unreferenced endpoints", func(r *Resources) { r.Endpoints = append(r.Endpoints, loadAssignment("stray", "127.0.0.1", 1)) }, "cluster load assignment \"stray\" is defined but not referenced"},
		{"missing route configuration", func(r *Resources) { r.RouteConfigs = nil }, "route configuration \"policygate_routes\" is referenced but not defined"},
		{"duplicate cluster", func(r *Resources) { r.Clusters = append(r.Clusters, r.Clusters[0]) }, "duplicate resource name"},
		{"invalid cluster", func(r *Resources) { r.Clusters[0].ConnectTimeout = durationpb.New(-time.Second) }, "ConnectTimeout"},
		{"unnamed listener", func(r *Resources) { r.Listeners = append(r.Listeners, &listenerv3.Listener{}) }, "name is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := fresh(t)
			tc.edit(res)
			if _, err := res.Snapshot(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestExtAuthzCluster(t *testing.T) {
	for _, tc := range []struct {
		name    string
		address string
		caFile  string
		typ     string
		tls     bool
	}{
		{"address, plaintext", "127.0.0.1:9191", "", "STATIC", false},
		{"name, plaintext", "policygate.internal:9191", "", "STRICT_DNS", false},
		{"name, TLS", "policygate.internal:9191", "/etc/envoy/policygate-ca.pem", "STRICT_DNS", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.ExtAuthz.Address, cfg.ExtAuthz.CAFile = tc.address, tc.caFile
			res, err := newBuilder(t, cfg).Resources(testRoutes(t))
			if err != nil {
				t.Fatal(err)
			}
			c := res.Clusters[0]
			if c.GetName() != ExtAuthzClusterName || c.GetType().String() != tc.typ {
				t.Fatalf("cluster %s type %s, want %s %s", c.GetName(), c.GetType(), ExtAuthzClusterName, tc.typ)
			}
			if got := c.GetTransportSocket() != nil; got != tc.tls {
				t.Errorf("TLS = %v, want %v", got, tc.tls)
			}
			if err := validateDeep(c); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestGeneratedResourcesValidateDeep(t *testing.T) {
	res, err := newBuilder(t, testConfig()).Resources(testRoutes(t))
	if err != nil {
		t.Fatal(err)
	}
	var all []proto.Message
	for _, m := range res.Listeners {
		all = append(all, m)
	}
	for _, m := range res.RouteConfigs {
		all = append(all, m)
	}
	for _, m := range res.Clusters {
		all = append(all, m)
	}
	for _, m := range res.Endpoints {
		all = append(all, m)
	}
	for _, m := range all {
		if err := validateDeep(m); err != nil {
			t.Error(err)
		}
	}
}

func TestProxylessRefusesTLS(t *testing.T) {
	b := newBuilder(t, testConfig())
	_, err := b.Proxyless("x", []Route{{Name: "a", Upstream: mustURL(t, "https://backend:443")}})
	if err == nil || !strings.Contains(err.Error(), "https upstreams") {
		t.Fatalf("error = %v", err)
	}
}
