package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestXDSServesGatewayRoutes runs the gateway with an xds section and asks
// its xDS server, as Envoy would, for the listener and clusters built from
// the gateway's routes.
func TestXDSServesGatewayRoutes(t *testing.T) {
	cfg := fmt.Sprintf(`server:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
policy:
  dir: %s
routes:
  - name: sampleapi
    path_prefix: /v1
    upstream: http://127.0.0.1:9091
    policy: sampleapi/decision
  - name: rabbitmq
    path_prefix: /api
    upstream: http://127.0.0.1:15672
    policy: rabbitmq/decision
    allow_encoded_slash: true
xds:
  listen: 127.0.0.1:0
  ext_authz:
    address: 127.0.0.1:9191
decision_log:
  output: file
  path: LOGFILE
`, repoPath(t, "policies"))
	g := startGateway(t, cfg, nil)
	var addr string
	for _, m := range listenRE.FindAllStringSubmatch(g.Stderr.String(), -1) {
		if m[1] == "xds" {
			addr = m[2]
		}
	}
	if addr == "" {
		t.Fatalf("no xds listener logged:\n%s", g.Stderr.String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "envoy-e2e", Cluster: "edge"}
	fetch := func(typeURL string) *discoveryv3.DiscoveryResponse {
		t.Helper()
		if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typeURL}); err != nil {
			t.Fatal(err)
		}
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("%s: %v", typeURL, err)
		}
		if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typeURL, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		return r
	}
	var clusters []string
	for _, a := range fetch(resourcev3.ClusterType).GetResources() {
		c := &clusterv3.Cluster{}
		if err := a.UnmarshalTo(c); err != nil {
			t.Fatal(err)
		}
		clusters = append(clusters, c.GetName())
	}
	sort.Strings(clusters)
	if got, want := strings.Join(clusters, ","), "policygate_ext_authz,upstream_http_127.0.0.1_15672,upstream_http_127.0.0.1_9091"; got != want {
		t.Errorf("clusters = %s, want %s", got, want)
	}
	lds := fetch(resourcev3.ListenerType)
	l := &listenerv3.Listener{}
	if len(lds.GetResources()) != 1 || lds.GetResources()[0].UnmarshalTo(l) != nil || l.GetName() != "policygate_ingress" {
		t.Errorf("listeners = %v", lds.GetResources())
	}

	// The admin listener exports the xDS metrics with the others.
	resp, err := http.Get(g.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`policygate_xds_snapshot_info{group="default"`, `policygate_xds_streams{api="sotw"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
