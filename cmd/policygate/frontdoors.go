package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/policygate/policygate/gateway/extauthz"
)

// forwardAuthConfig is the forward-auth front door (nginx auth_request,
// Caddy forward_auth, Traefik ForwardAuth).
type forwardAuthConfig struct {
	// Listen is its own HTTP address; every path answers forward-auth.
	// Required when the section is present.
	Listen string `yaml:"listen"`
}

// extAuthzConfig is the Envoy ext_authz gRPC front door.
type extAuthzConfig struct {
	// Listen is the gRPC address. Required when the section is present.
	Listen string `yaml:"listen"`
	// MaxMessageBytes bounds one Check request; larger ones are refused
	// with RESOURCE_EXHAUSTED. Zero means 1 MiB.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// CertFile and KeyFile enable TLS. Both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

func (c *config) validateFrontDoors(add func(string, error)) {
	if fa := c.file.ForwardAuth; fa != nil {
		add("forward_auth.listen", checkAddr(fa.Listen))
	}
	if ea := c.file.ExtAuthz; ea != nil {
		add("ext_authz.listen", checkAddr(ea.Listen))
		if ea.MaxMessageBytes < 0 || (ea.MaxMessageBytes > 0 && ea.MaxMessageBytes < 4096) {
			add("ext_authz.max_message_bytes", fmt.Errorf("%d must be 0 (1 MiB) or at least 4096", ea.MaxMessageBytes))
		}
		switch {
		case (ea.CertFile == "") != (ea.KeyFile == ""):
			add("ext_authz.cert_file", errors.New("cert_file and key_file go together"))
		case ea.CertFile != "":
			cert, err := tls.LoadX509KeyPair(c.resolve(ea.CertFile), c.resolve(ea.KeyFile))
			add("ext_authz.cert_file", err)
			c.extAuthzTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
	}
}

// startExtAuthz serves ext_authz on its own listener until stop is called.
func startExtAuthz(g *gateway, log *slog.Logger) (addr string, stop func(context.Context), err error) {
	ea := g.cfg.file.ExtAuthz
	ln, err := net.Listen("tcp", ea.Listen)
	if err != nil {
		return "", nil, fmt.Errorf("ext_authz: listen %s: %w", ea.Listen, err)
	}
	max := ea.MaxMessageBytes
	if max == 0 {
		max = 1 << 20
	}
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(max)}
	if g.cfg.extAuthzTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(g.cfg.extAuthzTLS)))
	}
	srv := grpc.NewServer(opts...)
	authv3.RegisterAuthorizationServer(srv, extauthz.New(g.guard))
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Error("ext_authz server failed", "err", err)
		}
	}()
	stop = func(ctx context.Context) {
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			srv.Stop()
		}
	}
	return ln.Addr().String(), stop, nil
}
