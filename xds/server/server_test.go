package server

import (
	"bytes"
	"context"
	"log/slog"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/policygate/policygate/xds"
)

// Named bounds: every wait in these tests ends.
const (
	testTimeout = 30 * time.Second       // a whole test
	answerWait  = 5 * time.Second        // "promptly": one response
	quietWindow = 750 * time.Millisecond // a NACK loop resends within milliseconds
)

var allTypes = []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func testRoutes(t testing.TB) []xds.Route {
	return []xds.Route{
		{Name: "sampleapi", Upstream: mustURL(t, "http://127.0.0.1:9091"), Timeout: 30 * time.Second},
		{Name: "rabbitmq", PathPrefix: "/api", Upstream: mustURL(t, "http://127.0.0.1:15672"), AllowEncodedSlash: true},
		{Name: "vault", Host: "vault.example.com", PathPrefix: "/v1", Upstream: mustURL(t, "https://vault.internal:8200")},
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type fixture struct {
	srv     *Server
	builder *xds.Builder
	reg     *prometheus.Registry
	logs    *syncBuffer
	ctx     context.Context
}

// start runs a server on loopback with routes published, and stops it when
// the test ends.
func start(t *testing.T, routes []xds.Route) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	b, err := xds.New(xds.Config{
		Listen:   "127.0.0.1:0",
		ExtAuthz: xds.ExtAuthzConfig{Address: "127.0.0.1:9191"},
		Nodes:    []xds.NodeConfig{{Cluster: "rabbitmq-edge", Routes: []string{"rabbitmq"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{builder: b, reg: prometheus.NewRegistry(), logs: &syncBuffer{}, ctx: ctx}
	f.srv, err = New(Config{
		Listen:     "127.0.0.1:0",
		NodeKey:    b.NodeKey,
		Log:        slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: f.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	if routes != nil {
		f.publish(t, routes)
	}
	done := make(chan error, 1)
	go func() { done <- f.srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(answerWait):
			t.Error("Run did not return after its context ended")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", f.logs.String())
		}
	})
	return f
}

func (f *fixture) publish(t *testing.T, routes []xds.Route) *xds.Set {
	t.Helper()
	set, err := f.builder.Build(routes)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.srv.Publish(f.ctx, set); err != nil {
		t.Fatal(err)
	}
	return set
}

func (f *fixture) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(f.srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		return -1
	}
	if c := out.GetCounter(); c != nil {
		return c.GetValue()
	}
	return out.GetGauge().GetValue()
}

// waitFor polls cond until it holds or answerWait passes: it waits on an
// event the server reports, not for a fixed time.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(answerWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sotwClient is an ADS state-of-the-world client, as Envoy speaks it.
type sotwClient struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	byType map[string]chan *discoveryv3.DiscoveryResponse
	first  bool
}

func newSotw(t *testing.T, f *fixture, node *corev3.Node) *sotwClient {
	t.Helper()
	ctx, cancel := context.WithCancel(f.ctx)
	t.Cleanup(cancel)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(f.dial(t)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &sotwClient{t: t, stream: stream, node: node, byType: map[string]chan *discoveryv3.DiscoveryResponse{}, first: true}
	for _, typ := range allTypes {
		c.byType[typ] = make(chan *discoveryv3.DiscoveryResponse, 64)
	}
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			if ch, ok := c.byType[resp.GetTypeUrl()]; ok {
				ch <- resp
			}
		}
	}()
	return c
}

func (c *sotwClient) send(typeURL, version, nonce string, names []string, detail *statuspb.Status) {
	c.t.Helper()
	req := &discoveryv3.DiscoveryRequest{TypeUrl: typeURL, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names, ErrorDetail: detail}
	if c.first {
		req.Node, c.first = c.node, false // as Envoy with set_node_on_first_message_only
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send %s: %v", typeURL, err)
	}
}

func (c *sotwClient) recv(typeURL string) *discoveryv3.DiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.byType[typeURL]:
		return r
	case <-time.After(answerWait):
		c.t.Fatalf("no %s response within %s", typeURL, answerWait)
		return nil
	}
}

// quiet counts the responses of typeURL arriving within the window.
func (c *sotwClient) quiet(typeURL string, window time.Duration) int {
	n := 0
	t := time.NewTimer(window)
	defer t.Stop()
	for {
		select {
		case <-c.byType[typeURL]:
			n++
		case <-t.C:
			return n
		}
	}
}

// ack subscribes to typeURL, receives the answer and acknowledges it.
func (c *sotwClient) subscribe(typeURL string, names []string) *discoveryv3.DiscoveryResponse {
	c.t.Helper()
	c.send(typeURL, "", "", names, nil)
	r := c.recv(typeURL)
	c.send(typeURL, r.GetVersionInfo(), r.GetNonce(), names, nil)
	return r
}

func resourceNames(t *testing.T, r *discoveryv3.DiscoveryResponse) []string {
	t.Helper()
	var names []string
	for _, a := range r.GetResources() {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		switch v := m.(type) {
		case *clusterv3.Cluster:
			names = append(names, v.GetName())
		case *endpointv3.ClusterLoadAssignment:
			names = append(names, v.GetClusterName())
		default:
			names = append(names, string(m.ProtoReflect().Descriptor().Name()))
		}
	}
	sort.Strings(names)
	return names
}

func edsNames(set *xds.Set, group string) []string {
	var out []string
	for _, e := range set.Snapshots[group].Resources().Endpoints {
		out = append(out, e.GetClusterName())
	}
	sort.Strings(out)
	return out
}

func nodeStatus(s *Server, id string) (NodeStatus, bool) {
	for _, n := range s.Status() {
		if n.ID == id {
			return n, true
		}
	}
	return NodeStatus{}, false
}

func TestADSStateOfTheWorld(t *testing.T) {
	f := start(t, nil)
	set := f.publish(t, testRoutes(t))
	snap := set.Snapshots[xds.DefaultGroup]
	c := newSotw(t, f, &corev3.Node{Id: "envoy-1", Cluster: "edge"})

	// Envoy's order: clusters, their endpoints, listeners, their routes.
	cds := c.subscribe(resourcev3.ClusterType, nil)
	eds := c.subscribe(resourcev3.EndpointType, edsNames(set, xds.DefaultGroup))
	lds := c.subscribe(resourcev3.ListenerType, nil)
	rds := c.subscribe(resourcev3.RouteType, []string{xds.RouteConfigName})
	for _, tc := range []struct {
		resp *discoveryv3.DiscoveryResponse
		n    int
	}{{cds, 4}, {eds, 2}, {lds, 1}, {rds, 1}} {
		typ := tc.resp.GetTypeUrl()
		if got := len(tc.resp.GetResources()); got != tc.n {
			t.Errorf("%s: %d resources, want %d", typ, got, tc.n)
		}
		if got, want := tc.resp.GetVersionInfo(), snap.TypeVersion(typ); got != want {
			t.Errorf("%s: version %s, want the content hash %s", typ, got, want)
		}
	}
	waitFor(t, "four ACKs", func() bool {
		n, ok := nodeStatus(f.srv, "envoy-1")
		if !ok {
			return false
		}
		for _, typ := range allTypes {
			if n.Types[typ].Acked != snap.TypeVersion(typ) {
				return false
			}
		}
		return true
	})
	for _, typ := range allTypes {
		if got := value(f.srv.metrics.acks.WithLabelValues(typ)); got != 1 {
			t.Errorf("acks_total{%s} = %v, want 1", typ, got)
		}
	}
	if got := value(f.srv.metrics.streams.WithLabelValues("sotw")); got != 1 {
		t.Errorf("streams{sotw} = %v, want 1", got)
	}

	// Publishing the same routes again changes nothing and sends nothing.
	f.publish(t, testRoutes(t))
	if n := c.quiet(resourcev3.ClusterType, quietWindow); n != 0 {
		t.Errorf("republishing equal routes sent %d CDS responses", n)
	}

	// A config change produces a new snapshot; only the changed types move.
	routes := append(testRoutes(t), xds.Route{Name: "keys", PathPrefix: "/keys", Upstream: mustURL(t, "http://127.0.0.1:9300")})
	set2 := f.publish(t, routes)
	cds2 := c.recv(resourcev3.ClusterType)
	if got := len(cds2.GetResources()); got != 5 {
		t.Errorf("CDS after a new route: %d clusters, want 5", got)
	}
	if cds2.GetVersionInfo() != set2.Snapshots[xds.DefaultGroup].TypeVersion(resourcev3.ClusterType) {
		t.Error("CDS version is not the new content hash")
	}
	if n := c.quiet(resourcev3.ListenerType, quietWindow); n != 0 {
		t.Errorf("the listener did not change but %d LDS responses were sent", n)
	}
}

func TestADSNackIsNotResent(t *testing.T) {
	f := start(t, testRoutes(t))
	c := newSotw(t, f, &corev3.Node{Id: "envoy-nack", Cluster: "edge"})
	cds1 := c.subscribe(resourcev3.ClusterType, nil)
	v1 := cds1.GetVersionInfo()
	waitFor(t, "the ACK of v1", func() bool {
		n, _ := nodeStatus(f.srv, "envoy-nack")
		return n.Types[resourcev3.ClusterType].Acked == v1
	})

	// v2 arrives; the node rejects it.
	f.publish(t, append(testRoutes(t), xds.Route{Name: "keys", PathPrefix: "/keys", Upstream: mustURL(t, "http://127.0.0.1:9300")}))
	cds2 := c.recv(resourcev3.ClusterType)
	v2 := cds2.GetVersionInfo()
	if v2 == v1 {
		t.Fatal("a changed snapshot kept its version")
	}
	reason := "cluster upstream_http_127.0.0.1_9300: test rejection"
	c.send(resourcev3.ClusterType, v1, cds2.GetNonce(), nil, &statuspb.Status{Code: int32(codes.InvalidArgument), Message: reason})

	nacks := f.srv.metrics.nacks.WithLabelValues(resourcev3.ClusterType)
	waitFor(t, "the NACK to be counted", func() bool { return value(nacks) == 1 })
	resent := c.quiet(resourcev3.ClusterType, quietWindow)
	if resent != 0 {
		t.Errorf("the rejected version was sent %d more times within %s", resent, quietWindow)
	}
	n, _ := nodeStatus(f.srv, "envoy-nack")
	ts := n.Types[resourcev3.ClusterType]
	if ts.Acked != v1 || ts.Rejected != v2 || ts.Error != reason {
		t.Errorf("status = %+v, want acked %s (the last accepted), rejected %s with the node's reason", ts, v1, v2)
	}
	if got := value(f.srv.metrics.acks.WithLabelValues(resourcev3.ClusterType)); got != 1 {
		t.Errorf("acks_total = %v: the NACK was counted as an ACK", got)
	}
	for _, want := range []string{"xds NACK", "rejected_version=" + v2, "acked_version=" + v1} {
		if !strings.Contains(f.logs.String(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
	t.Logf("NACK: v1=%s acked, v2=%s rejected, nacks_total=%v, CDS responses resent within %s: %d",
		v1, v2, value(nacks), quietWindow, resent)

	// The stream is alive: the next different snapshot is sent at once,
	// and accepting it clears the rejection.
	set3 := f.publish(t, append(testRoutes(t), xds.Route{Name: "keys", PathPrefix: "/keys", Upstream: mustURL(t, "http://127.0.0.1:9301")}))
	cds3 := c.recv(resourcev3.ClusterType)
	v3 := set3.Snapshots[xds.DefaultGroup].TypeVersion(resourcev3.ClusterType)
	if cds3.GetVersionInfo() != v3 {
		t.Fatalf("after the NACK got version %s, want the new %s", cds3.GetVersionInfo(), v3)
	}
	c.send(resourcev3.ClusterType, v3, cds3.GetNonce(), nil, nil)
	waitFor(t, "the ACK of v3", func() bool {
		n, _ := nodeStatus(f.srv, "envoy-nack")
		ts := n.Types[resourcev3.ClusterType]
		return ts.Acked == v3 && ts.Rejected == ""
	})
}

func TestADSResubscribeAtUnchangedVersion(t *testing.T) {
	f := start(t, testRoutes(t))
	set := f.publish(t, testRoutes(t))
	all := edsNames(set, xds.DefaultGroup)
	if len(all) != 2 {
		t.Fatalf("want 2 EDS clusters, have %v", all)
	}
	c := newSotw(t, f, &corev3.Node{Id: "envoy-resub", Cluster: "edge"})
	first := c.subscribe(resourcev3.EndpointType, all[:1])
	if got := resourceNames(t, first); len(got) != 1 || got[0] != all[0] {
		t.Fatalf("first EDS answer = %v, want [%s]", got, all[0])
	}
	// Same version, same nonce, one more name: the new name is answered.
	t0 := time.Now()
	c.send(resourcev3.EndpointType, first.GetVersionInfo(), first.GetNonce(), all, nil)
	second := c.recv(resourcev3.EndpointType)
	if got := resourceNames(t, second); strings.Join(got, ",") != strings.Join(all, ",") {
		t.Errorf("re-subscription answer = %v, want %v", got, all)
	}
	if second.GetVersionInfo() != first.GetVersionInfo() {
		t.Errorf("version changed from %s to %s without a new snapshot", first.GetVersionInfo(), second.GetVersionInfo())
	}
	t.Logf("re-subscription at version %s answered in %s", second.GetVersionInfo(), time.Since(t0).Round(time.Millisecond))
}

func TestADSNodeGroups(t *testing.T) {
	f := start(t, testRoutes(t))
	c := newSotw(t, f, &corev3.Node{Id: "rmq-envoy-1", Cluster: "rabbitmq-edge"})
	cds := c.subscribe(resourcev3.ClusterType, nil)
	got := resourceNames(t, cds)
	want := []string{xds.ExtAuthzClusterName, "upstream_http_127.0.0.1_15672"}
	sort.Strings(want)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("rabbitmq-edge clusters = %v, want %v", got, want)
	}
	waitFor(t, "the node's status", func() bool {
		n, ok := nodeStatus(f.srv, "rmq-envoy-1")
		return ok && n.Group == "cluster/rabbitmq-edge"
	})
}

// deltaClient is an incremental ADS client.
type deltaClient struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node   *corev3.Node
	resps  chan *discoveryv3.DeltaDiscoveryResponse
}

func newDelta(t *testing.T, f *fixture, node *corev3.Node) *deltaClient {
	t.Helper()
	ctx, cancel := context.WithCancel(f.ctx)
	t.Cleanup(cancel)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(f.dial(t)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &deltaClient{t: t, stream: stream, node: node, resps: make(chan *discoveryv3.DeltaDiscoveryResponse, 64)}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			c.resps <- r
		}
	}()
	return c
}

func (c *deltaClient) send(req *discoveryv3.DeltaDiscoveryRequest) {
	c.t.Helper()
	req.Node = c.node
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

func (c *deltaClient) recv(typeURL string) *discoveryv3.DeltaDiscoveryResponse {
	c.t.Helper()
	timeout := time.After(answerWait)
	for {
		select {
		case r := <-c.resps:
			if r.GetTypeUrl() == typeURL {
				return r
			}
		case <-timeout:
			c.t.Fatalf("no delta %s response within %s", typeURL, answerWait)
			return nil
		}
	}
}

func (c *deltaClient) quiet(typeURL string, window time.Duration) int {
	n := 0
	t := time.NewTimer(window)
	defer t.Stop()
	for {
		select {
		case r := <-c.resps:
			if r.GetTypeUrl() == typeURL {
				n++
			}
		case <-t.C:
			return n
		}
	}
}

func deltaNames(r *discoveryv3.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.GetResources() {
		out = append(out, res.GetName())
	}
	sort.Strings(out)
	return out
}

func TestADSDelta(t *testing.T) {
	f := start(t, testRoutes(t))
	set := f.publish(t, testRoutes(t))
	eds := edsNames(set, xds.DefaultGroup)
	c := newDelta(t, f, &corev3.Node{Id: "envoy-delta", Cluster: "edge"})

	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType})
	cds := c.recv(resourcev3.ClusterType)
	if got := len(cds.GetResources()); got != 4 {
		t.Errorf("delta CDS: %d clusters, want 4", got)
	}
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: cds.GetNonce()})

	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: eds[:1]})
	e1 := c.recv(resourcev3.EndpointType)
	if got := deltaNames(e1); strings.Join(got, ",") != eds[0] {
		t.Errorf("delta EDS = %v, want [%s]", got, eds[0])
	}
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: e1.GetNonce()})
	// Adding a name with nothing published since: answered with that name.
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: eds[1:]})
	e2 := c.recv(resourcev3.EndpointType)
	if got := deltaNames(e2); strings.Join(got, ",") != eds[1] {
		t.Errorf("delta EDS after subscribing %s = %v", eds[1], got)
	}
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: e2.GetNonce()})
	waitFor(t, "the delta ACKs", func() bool {
		n, _ := nodeStatus(f.srv, "envoy-delta")
		return n.Types[resourcev3.ClusterType].Acked == set.Snapshots[xds.DefaultGroup].TypeVersion(resourcev3.ClusterType)
	})

	// A new cluster: only the difference is sent; the node rejects it.
	f.publish(t, append(testRoutes(t), xds.Route{Name: "keys", PathPrefix: "/keys", Upstream: mustURL(t, "http://127.0.0.1:9300")}))
	cds2 := c.recv(resourcev3.ClusterType)
	if got := deltaNames(cds2); strings.Join(got, ",") != "upstream_http_127.0.0.1_9300" {
		t.Errorf("delta CDS update = %v, want only the new cluster", got)
	}
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: cds2.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "delta test rejection"}})
	nacks := f.srv.metrics.nacks.WithLabelValues(resourcev3.ClusterType)
	waitFor(t, "the delta NACK to be counted", func() bool { return value(nacks) == 1 })
	if n := c.quiet(resourcev3.ClusterType, quietWindow); n != 0 {
		t.Errorf("delta: the rejected update was sent %d more times", n)
	}
	n, _ := nodeStatus(f.srv, "envoy-delta")
	ts := n.Types[resourcev3.ClusterType]
	if ts.Acked != set.Snapshots[xds.DefaultGroup].TypeVersion(resourcev3.ClusterType) || ts.Rejected == "" || ts.Error != "delta test rejection" {
		t.Errorf("delta status = %+v", ts)
	}
	if got := value(f.srv.metrics.streams.WithLabelValues("delta")); got != 1 {
		t.Errorf("streams{delta} = %v, want 1", got)
	}
}

func TestPublishChecks(t *testing.T) {
	f := start(t, nil)
	if err := f.srv.Publish(f.ctx, nil); err == nil {
		t.Error("publishing nothing succeeded")
	}
	set := f.publish(t, testRoutes(t))
	for group, snap := range set.Snapshots {
		if got := value(f.srv.metrics.snapshot.WithLabelValues(group, snap.Version())); got != 1 {
			t.Errorf("snapshot_info{%s,%s} = %v", group, snap.Version(), got)
		}
	}
	// An inconsistent snapshot is refused before anything is published.
	res := set.Snapshots[xds.DefaultGroup].Resources()
	broken := &xds.Resources{Listeners: res.Listeners, RouteConfigs: res.RouteConfigs, Clusters: res.Clusters}
	if _, err := broken.Snapshot(); err == nil {
		t.Error("a snapshot without its endpoints was accepted")
	}
}

func TestRunAndClose(t *testing.T) {
	srv, err := New(Config{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(context.Background()) }()
	cc, err := grpc.NewClient(srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), answerWait)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &corev3.Node{Id: "n"}}); err != nil {
		t.Fatal(err)
	}
	// Close ends the open stream and Run returns nil.
	srv.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after Close: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Run did not return after Close")
	}
	if _, err := stream.Recv(); err == nil {
		t.Error("the stream survived Close")
	}
	if err := srv.Run(context.Background()); err == nil {
		t.Error("a second Run succeeded")
	}
	reg := prometheus.NewRegistry()
	first, err := New(Config{Listen: "127.0.0.1:0", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if second, err := New(Config{Listen: "127.0.0.1:0", Registerer: reg}); err == nil {
		second.Close()
		t.Error("registering the metrics twice succeeded")
	}
}
