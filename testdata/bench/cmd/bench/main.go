// Command bench is `make bench`: it measures, side by side in one run, a
// sample backend, a plain tuned httputil.ReverseProxy, policygate with the
// reference RBAC policy (testdata/bench/rbac) with its decision cache off and
// on, the sidecar pattern (a reverse proxy asking `opa run --server` over
// REST), and policygate without the cache whose route is rate-limited per
// caller through a private redis-server (ratelimited), under the same load
// from wrk on loopback.
//
// Servers share one set of CPUs (BENCH_SERVER_CPUS, default CPU 0) and wrk
// runs on another (BENCH_CLIENT_CPUS, default CPU 1). Every variant is run
// BENCH_REPS times, interleaved, each run after a warm-up; the table reports
// medians. It ends with one machine-readable line:
//
//	bench: plain=1.00 cached=<r> uncached=<r> sidecar=<r> ratelimited=<r>
//
// the req/s of each variant as a ratio to the plain proxy of the same run.
// The notes state the server CPU per request rate limiting adds
// (ratelimited minus uncached). redis-server is started without persistence
// on a free loopback port, pinned with the other servers; without it the
// ratelimited variant is reported n/a.
// It reports numbers; it asserts nothing about them.
//
// Every process it starts is stopped by PID when it ends, on error and on
// Ctrl-C. All servers listen on 127.0.0.1 only.
//
// Environment (defaults in parentheses):
//
//	BENCH_DURATION     measured seconds per run (5s)
//	BENCH_WARMUP       warm-up before each run, 0 disables (1s)
//	BENCH_REPS         runs per variant (3)
//	BENCH_RETRIES      extra attempts of a run while other work takes >10% of the pinned CPUs (2)
//	BENCH_CONNS        wrk connections for the throughput table (32)
//	BENCH_THREADS      wrk threads (1)
//	BENCH_LATENCY      measured seconds per one-connection run, 0 skips them (BENCH_DURATION)
//	BENCH_SERVER_CPUS  taskset CPU list for every server ("0")
//	BENCH_CLIENT_CPUS  taskset CPU list for wrk ("1")
//	BENCH_VARIANTS     comma-separated subset of variants to run (all)
//	BENCH_POLICYGATE   a prebuilt policygate binary to measure (built from ./cmd/policygate)
//	BENCH_KEEP         1 keeps the work directory (configs, logs) for inspection
//	BENCH_OPA_DECISION_LOGS  0 turns the OPA server's console decision log off (1)
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, errReported) {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
		os.Exit(1)
	}
}

// errReported means the failure is already in the printed report.
var errReported = errors.New("bench: some variants failed")

// run is the whole program.
func run(ctx context.Context, stdout, stderr io.Writer) error {
	s, err := loadSettings()
	if err != nil {
		return err
	}
	b, err := newBench(ctx, s, stderr)
	if err != nil {
		return err
	}
	defer b.close()

	if err := b.prepare(ctx); err != nil {
		return err
	}
	arms := b.startVariants(ctx, variants)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := b.measure(ctx, arms); err != nil {
		return err
	}
	failed := report(stdout, b, arms)
	if failed {
		return errReported
	}
	return nil
}
