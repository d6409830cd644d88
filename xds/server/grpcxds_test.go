package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"testing"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds" // the xds:/// resolver and its balancers

	"github.com/policygate/policygate/xds"
)

// TestProxylessGRPCClient has grpc-go's own xDS client resolve
// "xds:///admin.grpc" through policygate's server: listener → route
// configuration → cluster → endpoints of a real gRPC backend on loopback,
// and complete an RPC over the result.
func TestProxylessGRPCClient(t *testing.T) {
	backend := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(backend, hs)
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go backend.Serve(bln)
	t.Cleanup(backend.Stop)

	f := start(t, nil)
	const target = "admin.grpc"
	res, err := f.builder.Proxyless(target, []xds.Route{{
		Name:       "health",
		PathPrefix: "/grpc.health.v1.Health",
		Upstream:   mustURL(t, "http://"+bln.Addr().String()),
	}})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := res.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// The test's node has no nodes entry, so it is served the default group.
	if err := f.srv.Publish(f.ctx, &xds.Set{Snapshots: map[string]*xds.Snapshot{xds.DefaultGroup: snap}}); err != nil {
		t.Fatal(err)
	}

	bootstrap, err := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      f.srv.Addr().String(),
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]any{"id": "proxyless-1", "cluster": "grpc-clients"},
	})
	if err != nil {
		t.Fatal(err)
	}
	resolver, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(resolver))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	ctx, cancel := context.WithTimeout(f.ctx, answerWait*2)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("Check through xds:///%s: %v", target, err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("status = %v", resp.GetStatus())
	}

	// The route matches its prefix on a segment boundary, nothing else.
	err = cc.Invoke(ctx, "/grpc.health.v1.HealthX/Check", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("a method outside the route: %v, want Unavailable (no matching route)", err)
	}

	waitFor(t, "the client's ACKs of all four types", func() bool {
		n, ok := nodeStatus(f.srv, "proxyless-1")
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
		if got := value(f.srv.metrics.nacks.WithLabelValues(typ)); got != 0 {
			t.Errorf("grpc-go rejected %s: %v NACKs\n%s", typ, got, f.logs.String())
		}
	}
	n, _ := nodeStatus(f.srv, "proxyless-1")
	t.Logf("grpc-go resolved xds:///%s via %s and called %s; acked %s", target, f.srv.Addr(), bln.Addr(), fmt.Sprint(n.Types[resourcev3.ClusterType].Acked))
}
