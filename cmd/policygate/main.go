// Command policygate is the policy-as-code gateway for administrative APIs:
// one binary to run the gateway, check a configuration offline, and test
// policies.
//
// It composes the Config of each package from one file, wires them, runs
// the listeners and shuts down gracefully. It is the only place that may
// import every other package.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if err != errUsage && err != errFailed {
			fmt.Fprintln(os.Stderr, "policygate:", err)
		}
		os.Exit(exitCode(err))
	}
}
