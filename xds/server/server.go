// Package server serves the snapshots of package xds to Envoy fleets and
// proxyless gRPC clients over the Aggregated Discovery Service, both
// state-of-the-world (StreamAggregatedResources) and incremental
// (DeltaAggregatedResources), with go-control-plane's snapshot cache on a
// grpc.Server of its own listener.
//
// Beyond go-control-plane it detects NACKs (a request whose error_detail is
// set), logs and counts them, and holds a node's watch at the version it
// rejected, so the rejected version is not sent again in a loop: the node
// keeps its last acknowledged configuration until a different snapshot is
// published. Status reports, per node and resource type, what was sent,
// acknowledged and rejected.
//
// It must not import decision, bundles or gateway packages; it is the only
// home, with package xds, of go-control-plane's cache and server.
//
// Concurrency: New binds the listener; Run serves until its context ends
// and Close stops at once; both may be called from any goroutine, as may
// Publish and Status, concurrently with serving.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/policygate/policygate/xds"
)

// Config configures a Server.
type Config struct {
	// Listen is the TCP address to serve on, e.g. "127.0.0.1:18000"; port 0
	// picks a free port (see Addr). Required.
	Listen string
	// NodeKey maps a node to the snapshot group it is served from
	// (xds.Builder.NodeKey). It must not change for the server's life. Nil
	// serves every node from xds.DefaultGroup.
	NodeKey func(*corev3.Node) string
	// ShutdownGrace bounds how long Run waits for streams to end once its
	// context is done. Zero means 5s.
	ShutdownGrace time.Duration
	// Log receives NACKs (warn), publications and stream events. Nil
	// discards.
	Log *slog.Logger
	// Registerer receives the server's metrics. Nil keeps them private.
	Registerer prometheus.Registerer
	// Now is the clock for status timestamps. Nil means time.Now.
	Now func() time.Time
}

// Server is policygate's xDS server.
type Server struct {
	ln          net.Listener
	grpc        *grpc.Server
	cache       cachev3.SnapshotCache
	tracker     *tracker
	metrics     *metrics
	log         *slog.Logger
	grace       time.Duration
	stopStreams context.CancelFunc

	publishMu sync.Mutex        // serializes Publish
	published map[string]string // group → version; guarded by publishMu

	closeOnce sync.Once
	started   atomic.Bool // Run was called
}

// nodeHash adapts Config.NodeKey to go-control-plane.
type nodeHash func(*corev3.Node) string

func (f nodeHash) ID(n *corev3.Node) string { return f(n) }

// New binds cfg.Listen and prepares the server; Run serves it. Call Close
// if Run is never called.
func New(cfg Config) (*Server, error) {
	if cfg.Listen == "" {
		return nil, errors.New("xds/server: listen address is required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	key := cfg.NodeKey
	if key == nil {
		key = func(*corev3.Node) string { return xds.DefaultGroup }
	}
	grace := cfg.ShutdownGrace
	if grace == 0 {
		grace = 5 * time.Second
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("xds/server: metrics: %w", err)
	}
	// ads=false: the ADS flag makes the cache withhold answers until a
	// request names every resource of the snapshot, so a client that
	// subscribes to part of it (a proxyless gRPC client, or one adding a
	// name at an unchanged version) would never be answered.
	cache := cachev3.NewSnapshotCache(false, nodeHash(key), cacheLogger{log})
	tr := newTracker(key, m, log, now)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("xds/server: listen %s: %w", cfg.Listen, err)
	}
	gs := grpc.NewServer(
		// Envoy keeps ADS streams open for hours and pings to keep NATs
		// and load balancers from dropping them.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	streamsCtx, stopStreams := context.WithCancel(context.Background())
	xs := serverv3.NewServer(streamsCtx, nackHold{SnapshotCache: cache, key: key}, tr)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, xs)
	return &Server{
		ln:          ln,
		grpc:        gs,
		cache:       cache,
		tracker:     tr,
		metrics:     m,
		log:         log,
		grace:       grace,
		stopStreams: stopStreams,
		published:   map[string]string{},
	}, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx ends, then ends every stream and stops within
// ShutdownGrace. It returns nil after a shutdown or Close, and the serving
// error otherwise.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("xds/server: Run called twice")
	}
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.ln) }()
	select {
	case err := <-errc:
		s.stopStreams()
		if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("xds/server: serve: %w", err)
		}
		return nil
	case <-ctx.Done():
	}
	// xDS streams never end on their own: end them first, so that
	// GracefulStop only waits for handlers to return.
	s.stopStreams()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(s.grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Warn("xds shutdown grace expired; closing streams")
		s.grpc.Stop()
		<-done
	}
	<-errc
	return nil
}

// Close stops the server at once: streams end and the listener closes.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.stopStreams()
		s.grpc.Stop()
		s.ln.Close()
	})
	return nil
}

// Publish makes set the configuration of every group it holds. Each
// snapshot is checked Consistent before it is set; a group whose version is
// unchanged is left alone, so publishing the same routes again sends
// nothing. Groups absent from set keep their snapshot.
func (s *Server) Publish(ctx context.Context, set *xds.Set) error {
	if set == nil || len(set.Snapshots) == 0 {
		return errors.New("xds/server: publish: empty set")
	}
	for key, snap := range set.Snapshots {
		if err := snap.Consistent(); err != nil {
			return fmt.Errorf("xds/server: publish group %s version %s: %w", key, snap.Version(), err)
		}
	}
	s.publishMu.Lock()
	defer s.publishMu.Unlock()
	for key, snap := range set.Snapshots {
		v := snap.Version()
		prev := s.published[key]
		if prev == v {
			continue
		}
		if err := s.cache.SetSnapshot(ctx, key, snap.Cache()); err != nil {
			return fmt.Errorf("xds/server: publish group %s version %s: %w", key, v, err)
		}
		s.published[key] = v
		s.metrics.published(key, prev, v)
		r := snap.Resources()
		s.log.Info("xds snapshot published", "group", key, "version", v, "previous", prev,
			"listeners", len(r.Listeners), "route_configs", len(r.RouteConfigs),
			"clusters", len(r.Clusters), "endpoints", len(r.Endpoints))
	}
	return nil
}

// Status reports every connected node, ordered by id.
func (s *Server) Status() []NodeStatus { return s.tracker.status() }

// cacheLogger routes go-control-plane's logging to slog; its chatter is
// debug, its warnings and errors stay what they are.
type cacheLogger struct{ log *slog.Logger }

func (l cacheLogger) Debugf(f string, a ...any) { l.logf(slog.LevelDebug, f, a) }
func (l cacheLogger) Infof(f string, a ...any)  { l.logf(slog.LevelDebug, f, a) }
func (l cacheLogger) Warnf(f string, a ...any)  { l.logf(slog.LevelWarn, f, a) }
func (l cacheLogger) Errorf(f string, a ...any) { l.logf(slog.LevelError, f, a) }

func (l cacheLogger) logf(level slog.Level, f string, a []any) {
	ctx := context.Background()
	if l.log.Enabled(ctx, level) {
		l.log.Log(ctx, level, "go-control-plane: "+fmt.Sprintf(f, a...))
	}
}
