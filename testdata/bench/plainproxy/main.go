// Command plainproxy is the benchmark's baseline: a plain, tuned
// httputil.ReverseProxy (Rewrite, pooled buffers, keep-alive pool) with no
// authentication, policy or logging. Every other proxy is reported as a
// ratio to it. It listens on a loopback address only.
//
//	plainproxy -addr 127.0.0.1:9302 -upstream http://127.0.0.1:9301
package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/policygate/policygate/testdata/bench/internal/tuned"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9302", "loopback listen address")
	upstream := flag.String("upstream", "http://127.0.0.1:9301", "upstream URL (scheme and host)")
	idle := flag.Int("idle", 256, "idle keep-alive connections kept per upstream host; at least the client connections")
	flag.Parse()
	target, err := url.Parse(*upstream)
	if err != nil || target.Host == "" {
		fmt.Fprintf(os.Stderr, "plainproxy: -upstream %q: want scheme://host:port\n", *upstream)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := tuned.Serve(ctx, *addr, tuned.ReverseProxy(target, *idle)); err != nil {
		fmt.Fprintln(os.Stderr, "plainproxy:", err)
		os.Exit(1)
	}
}
