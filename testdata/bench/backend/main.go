// Command backend is the benchmark's sample backend: it answers every GET and
// POST with the same small JSON document, so that what the benchmark measures
// is the proxy in front of it. A POST body is read and discarded, as a real
// API would read it. It listens on a loopback address only.
//
//	backend -addr 127.0.0.1:9301
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/policygate/policygate/testdata/bench/internal/tuned"
)

// body is the fixed answer: about the size of a small admin API record.
var body = []byte(`{"id":"svc-bench","kind":"service_account","status":"active","owner":"team-bench","created":"2024-01-01T00:00:00Z"}` + "\n")

// maxBody bounds what a POST may send.
const maxBody = 1 << 20

func main() {
	addr := flag.String("addr", "127.0.0.1:9301", "loopback listen address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := tuned.Serve(ctx, *addr, handler()); err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		os.Exit(1)
	}
}

func handler() http.Handler {
	length := strconv.Itoa(len(body))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
		case http.MethodPost:
			if _, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, maxBody)); err != nil {
				http.Error(w, "bad body", http.StatusBadRequest)
				return
			}
		default:
			w.Header().Set("Allow", "GET, POST")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{length}
		_, _ = w.Write(body)
	})
}
