package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// settings are the knobs read from the environment (see the package doc).
type settings struct {
	duration   time.Duration // measured part of a throughput run
	warmup     time.Duration // before every run; 0 none
	latency    time.Duration // measured part of a one-connection run; 0 skips
	reps       int
	retries    int // extra attempts of a run disturbed by other work
	conns      int
	threads    int
	serverCPUs string
	clientCPUs string
	only       map[string]bool // nil: every variant
	keep       bool
	policygate string // prebuilt binary to measure; "" builds ./cmd/policygate
	opaLogs    bool
}

// Bounds keep a mistyped setting from turning into an hours-long run or a
// connection storm.
const (
	maxDuration = 10 * time.Minute
	maxReps     = 50
	maxRetries  = 5
	maxConns    = 4096
	maxThreads  = 64
)

func loadSettings() (settings, error) {
	var errs []error
	s := settings{
		serverCPUs: envString("BENCH_SERVER_CPUS", "0"),
		clientCPUs: envString("BENCH_CLIENT_CPUS", "1"),
		keep:       envString("BENCH_KEEP", "0") == "1",
		policygate: envString("BENCH_POLICYGATE", ""),
		opaLogs:    envString("BENCH_OPA_DECISION_LOGS", "1") != "0",
	}
	s.duration = envSeconds("BENCH_DURATION", 5*time.Second, time.Second, &errs)
	s.warmup = envSeconds("BENCH_WARMUP", time.Second, 0, &errs)
	s.latency = envSeconds("BENCH_LATENCY", s.duration, 0, &errs)
	s.reps = envInt("BENCH_REPS", 3, 1, maxReps, &errs)
	s.retries = envInt("BENCH_RETRIES", 2, 0, maxRetries, &errs)
	s.conns = envInt("BENCH_CONNS", 32, 1, maxConns, &errs)
	s.threads = envInt("BENCH_THREADS", 1, 1, maxThreads, &errs)
	if s.threads > s.conns {
		errs = append(errs, fmt.Errorf("BENCH_THREADS=%d: more threads than BENCH_CONNS=%d", s.threads, s.conns))
	}
	if v := os.Getenv("BENCH_VARIANTS"); v != "" {
		s.only = map[string]bool{}
		known := map[string]bool{}
		for _, v := range variants {
			known[v.name] = true
		}
		for _, name := range strings.Split(v, ",") {
			name = strings.TrimSpace(name)
			if !known[name] {
				errs = append(errs, fmt.Errorf("BENCH_VARIANTS: unknown variant %q", name))
			}
			s.only[name] = true
		}
		// Ratios need the baseline.
		s.only[baseline] = true
	}
	return s, errors.Join(errs...)
}

func envString(name, def string) string {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	return def
}

// envSeconds reads a Go duration ("5s") or a bare number of seconds and
// rounds it to whole seconds, the resolution of wrk's -d.
func envSeconds(name string, def, min time.Duration, errs *[]error) time.Duration {
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.Atoi(v)
		if nerr != nil {
			*errs = append(*errs, fmt.Errorf("%s=%q: want a duration such as 5s", name, v))
			return def
		}
		d = time.Duration(n) * time.Second
	}
	d = d.Round(time.Second)
	if d < min || d > maxDuration {
		*errs = append(*errs, fmt.Errorf("%s=%q: want whole seconds between %s and %s", name, v, min, maxDuration))
		return def
	}
	return d
}

func envInt(name string, def, min, max int, errs *[]error) int {
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < min || n > max {
		*errs = append(*errs, fmt.Errorf("%s=%q: want an integer between %d and %d", name, v, min, max))
		return def
	}
	return n
}
