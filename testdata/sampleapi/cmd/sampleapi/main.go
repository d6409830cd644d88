// Command sampleapi serves the sample NHI admin API (package sampleapi) with a
// few demo accounts, as a backend to put behind policygate:
//
//	sampleapi -addr 127.0.0.1:9091 -require-auth 'Bearer backend-token'
//
// When -require-auth is empty, SAMPLEAPI_REQUIRE_AUTH is used; when both are
// empty, requests need no credential.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/policygate/policygate/testdata/sampleapi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "sampleapi:", err)
		os.Exit(1)
	}
}

// demoAccounts and demoBindings give demos something to show.
var (
	demoAccounts = []sampleapi.NewAccount{
		{ID: "payments.deployer", Team: "payments", Owner: "alice@example.com", Description: "deploys the payments services"},
		{ID: "payments.ci-runner", Team: "payments", Owner: "ci@example.com", Description: "runs the payments pipelines"},
		{ID: "billing.exporter", Team: "billing", Owner: "bob@example.com", Description: "exports invoices to the ledger"},
	}
	demoBindings = []sampleapi.NewBinding{
		{Account: "payments.deployer", Role: "deployer", Resource: "k8s:namespace/payments"},
		{Account: "billing.exporter", Role: "reader", Resource: "bucket:invoices"},
	}
)

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sampleapi", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:9091", "listen address")
	requireAuth := fs.String("require-auth", "", "exact Authorization value every request must carry (default $SAMPLEAPI_REQUIRE_AUTH)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *requireAuth == "" {
		*requireAuth = os.Getenv("SAMPLEAPI_REQUIRE_AUTH")
	}

	log := slog.New(slog.NewTextHandler(stderr, nil))
	api := sampleapi.New(sampleapi.Options{Log: log, RequireAuth: *requireAuth})
	for _, a := range demoAccounts {
		if _, err := api.CreateAccount(a); err != nil {
			return fmt.Errorf("seed %s: %w", a.ID, err)
		}
	}
	for _, b := range demoBindings {
		if _, err := api.CreateBinding(b); err != nil {
			return fmt.Errorf("seed binding for %s: %w", b.Account, err)
		}
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 10 * time.Second,
		// Request contexts end with ctx, so event followers stop on shutdown.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	fmt.Fprintf(stdout, "sampleapi listening on http://%s (auth required: %t)\n", ln.Addr(), *requireAuth != "")

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
