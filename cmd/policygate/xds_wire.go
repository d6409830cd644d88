package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/policygate/policygate/gateway/route"
	"github.com/policygate/policygate/xds"
	xdsserver "github.com/policygate/policygate/xds/server"
)

// xdsSetup is the validated xds section: the builder and the snapshots of
// the gateway's routes, built once so that check fails exactly when run
// would.
type xdsSetup struct {
	listen  string
	builder *xds.Builder
	set     *xds.Set
}

// validateXDS validates the optional xds section against the parsed routes.
// Errors name the key ("xds.ext_authz.address: ...").
func (c *config) validateXDS() error {
	xc := c.file.XDS
	if xc == nil {
		return nil
	}
	b, err := xds.New(*xc)
	if err != nil {
		return prefixed("xds", err)
	}
	if c.routes == nil {
		return nil // route errors are reported already
	}
	set, err := b.Build(xdsRoutes(c.routes))
	if err != nil {
		return prefixed("xds", err)
	}
	c.xds = &xdsSetup{listen: xc.Listen, builder: b, set: set}
	return nil
}

// xdsRoutes hands the gateway's routes to the builder, which does not
// import the gateway.
func xdsRoutes(t *route.Table) []xds.Route {
	rs := t.Routes()
	out := make([]xds.Route, 0, len(rs))
	for _, r := range rs {
		out = append(out, xds.Route{
			Name:              r.Name,
			Host:              r.Host,
			PathPrefix:        r.PathPrefix,
			Upstream:          r.Upstream,
			Timeout:           r.Timeout,
			AllowEncodedSlash: r.AllowEncodedSlash,
		})
	}
	return out
}

// startXDS serves the xds section, when configured, on its own listener
// with the snapshots of the gateway's routes published, and logs the
// listener like the others. stop ends it within ctx; without an xds
// section both are no-ops.
func startXDS(g *gateway, log *slog.Logger) (stop func(context.Context), err error) {
	x := g.cfg.xds
	if x == nil {
		return func(context.Context) {}, nil
	}
	srv, err := xdsserver.New(xdsserver.Config{
		Listen:     x.listen,
		NodeKey:    x.builder.NodeKey,
		Log:        log.With("component", "xds"),
		Registerer: g.metrics,
	})
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	if err := srv.Publish(context.Background(), x.set); err != nil {
		srv.Close()
		return nil, fmt.Errorf("xds: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Run(runCtx); err != nil {
			log.Error("xds server failed", "err", err)
		}
	}()
	log.Info("listening", "listener", "xds", "addr", srv.Addr().String())
	return func(ctx context.Context) {
		cancel()
		select {
		case <-done:
		case <-ctx.Done():
			srv.Close()
			<-done
		}
	}, nil
}
