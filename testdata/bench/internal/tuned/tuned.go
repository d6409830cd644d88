// Package tuned holds the HTTP building blocks shared by the benchmark's
// backend, plain proxy and sidecar proxy: a loopback-only server with
// graceful shutdown, and a reverse proxy tuned the way a production proxy
// would be (pooled copy buffers, a keep-alive pool sized for the load).
//
// It is part of the benchmark harness (testdata/bench) and must not be
// imported by the product packages.
//
// Concurrency: everything returned is safe for concurrent use.
package tuned

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"
)

// ListenLoopback listens on addr, which must name a loopback IP: the
// benchmark servers never accept traffic from another host.
func ListenLoopback(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("listen %q: only a loopback IP address is allowed", addr)
	}
	return net.Listen("tcp", addr)
}

// Serve serves h on a loopback addr until ctx ends, then shuts down
// gracefully within five seconds.
func Serve(ctx context.Context, addr string, h http.Handler) error {
	ln, err := ListenLoopback(addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		srv.Close()
		return err
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Transport returns a client transport for loopback upstreams that keeps
// up to idle connections per host alive, so that a steady load never pays
// for new TCP connections.
func Transport(idle int) *http.Transport {
	return &http.Transport{
		Proxy:                 nil, // loopback only; never an environment proxy
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          idle,
		MaxIdleConnsPerHost:   idle,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// ReverseProxy returns an httputil.ReverseProxy to target (scheme and host)
// using Rewrite, pooled 32 KiB copy buffers and Transport(idle).
func ReverseProxy(target *url.URL, idle int) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.SetXForwarded()
		},
		Transport:  Transport(idle),
		BufferPool: newBufferPool(),
	}
}

// bufferSize is the copy buffer size, httputil.ReverseProxy's own default.
const bufferSize = 32 << 10

// bufferPool recycles the copy buffers of httputil.ReverseProxy. It pools
// array pointers, so neither Get nor Put allocates.
type bufferPool struct{ p sync.Pool }

var _ httputil.BufferPool = (*bufferPool)(nil)

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { return new([bufferSize]byte) }}}
}

func (bp *bufferPool) Get() []byte { return bp.p.Get().(*[bufferSize]byte)[:] }

func (bp *bufferPool) Put(b []byte) {
	if cap(b) >= bufferSize {
		bp.p.Put((*[bufferSize]byte)(b[:bufferSize]))
	}
}
