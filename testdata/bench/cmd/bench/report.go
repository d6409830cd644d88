package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Targets from the issue; the report compares with them, it never fails on
// them.
const (
	targetCached      = 0.97
	targetUncached    = 0.75
	targetRateLimited = 0.6
	targetAddedP50    = 100 * time.Microsecond
	targetAddedName   = "cached"
	// noisyOther is the share of the pinned CPUs taken by other work above
	// which a run is repeated (BENCH_RETRIES) and the report warns.
	noisyOther = 10.0
)

// report prints the tables and, last, the bench: line. It returns whether
// any variant failed (other than being unavailable).
func report(w io.Writer, b *bench, arms []*arm) (failed bool) {
	s := b.s
	pin := "unpinned (servers and wrk share the CPUs)"
	if b.pin {
		pin = fmt.Sprintf("servers on CPU %s, wrk on CPU %s", s.serverCPUs, s.clientCPUs)
	}
	warm := "no warm-up"
	if s.warmup > 0 {
		warm = fmt.Sprintf("after a %s warm-up", s.warmup)
	}
	opaLog := "off"
	if s.opaLogs {
		opaLog = "console, to a file"
	}
	fmt.Fprintf(w, "\npolicygate bench  %s %s/%s, %d CPUs (%s), opa %s, %s\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), cpuModel(), b.opaVersion, time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "load      wrk -t%d -c%d on loopback, %s; %d reps × %s %s, interleaved; medians\n",
		min(s.threads, s.conns), s.conns, pin, s.reps, s.duration, warm)
	fmt.Fprintf(w, "requests  %d distinct, all allowed: %d JWT (%s) identities with %d+ of the policy's %d roles, %d GET : 1 POST\n",
		len(b.requests), identities, jwtAlg, rolesPerIdentity, b.roles, getsPerPost)
	under := "built from ./cmd/policygate"
	if s.policygate != "" {
		under = b.policygate
	}
	fmt.Fprintf(w, "policy    %s (%s); policygate %s; decision logs: policygate to a file, OPA %s\n", policyRel, rule, under, opaLog)
	for _, a := range arms {
		fmt.Fprintf(w, "  %-11s %s\n", a.v.name, a.v.about)
	}
	fmt.Fprintln(w)

	base := find(arms, baseline)
	baseRPS := 0.0
	if base != nil && base.ok() && len(base.runs) > 0 {
		baseRPS = median(base.runs, func(s sample) float64 { return s.rps })
	}
	ratio := map[string]float64{}

	baseCPU := 0.0
	if baseRPS > 0 {
		baseCPU = median(base.runs, func(s sample) float64 { return s.cpu })
	}
	fmt.Fprintf(w, "%-11s %9s %7s %9s %9s %11s %13s %5s %6s %6s %10s\n", "variant", "req/s", "spread", "p50", "p99", "cpu µs/req", "proxy µs/req", "util", "other", "ratio", "cpu ratio")
	noisy := false
	for _, a := range arms {
		if reason, bad := notAvailable(a, len(a.runs)); reason != "" {
			failed = failed || bad
			fmt.Fprintf(w, "%-11s %9s  %s\n", a.v.name, "n/a", reason)
			continue
		}
		rps := median(a.runs, func(s sample) float64 { return s.rps })
		lo := slices.MinFunc(a.runs, func(x, y sample) int { return cmpFloat(x.rps, y.rps) }).rps
		hi := slices.MaxFunc(a.runs, func(x, y sample) int { return cmpFloat(x.rps, y.rps) }).rps
		proxyCPU := "-"
		if a.t.procs[0] != b.backend {
			proxyCPU = fmt.Sprintf("%.1f", median(a.runs, func(s sample) float64 { return s.proxyCPU }))
		}
		r := "n/a"
		if baseRPS > 0 {
			ratio[a.v.name] = rps / baseRPS
			r = fmt.Sprintf("%.2f", rps/baseRPS)
		}
		util, other := "-", "-"
		if u := median(a.runs, func(s sample) float64 { return s.util }); u >= 0 {
			util = fmt.Sprintf("%.0f%%", u)
		}
		if o := median(a.runs, func(s sample) float64 { return s.other }); o >= 0 {
			other = fmt.Sprintf("%.0f%%", o)
			noisy = noisy || o > noisyOther
		}
		cpu := median(a.runs, func(s sample) float64 { return s.cpu })
		cpuRatio := "n/a"
		if baseCPU > 0 && cpu > 0 {
			cpuRatio = fmt.Sprintf("%.2f", baseCPU/cpu)
		}
		fmt.Fprintf(w, "%-11s %9.0f %6.1f%% %9s %9s %11.1f %13s %5s %6s %6s %10s\n", a.v.name, rps, 100*(hi-lo)/rps,
			fmtDur(medianDur(a.runs, func(s sample) time.Duration { return s.p50 })),
			fmtDur(medianDur(a.runs, func(s sample) time.Duration { return s.p99 })),
			cpu, proxyCPU, util, other, r, cpuRatio)
	}
	fmt.Fprintln(w, "spread: (max-min)/median of req/s over the reps; cpu: user+system CPU time of every server")
	fmt.Fprintln(w, "process of the variant (proxy, OPA, backend) per request; proxy: the same without the backend;")
	fmt.Fprintln(w, "util: share of the server CPUs the variant used (below ~95%, the load did not saturate them);")
	fmt.Fprintln(w, "other: share of the server and client CPUs taken by other processes and hypervisor steal;")
	fmt.Fprintln(w, "cpu ratio: plain's cpu µs/req over the variant's, the ratio a saturated, otherwise idle server")
	fmt.Fprintln(w, "core would give")
	if noisy {
		fmt.Fprintf(w, "warning: other work took more than %.0f%% of the pinned CPUs in some variant: the numbers are\n", noisyOther)
		fmt.Fprintln(w, "depressed and noisy (cpu ratio much less so); run again on a quiet machine")
	}

	added := map[string]time.Duration{}
	if s.latency > 0 {
		fmt.Fprintf(w, "\none connection (wrk -t1 -c1, %d reps × %s)\n", s.reps, s.latency)
		fmt.Fprintf(w, "%-11s %9s %9s %11s %11s\n", "variant", "p50", "p99", "added p50", "cpu µs/req")
		var baseP50 time.Duration
		if base != nil && base.ok() && len(base.lat) > 0 {
			baseP50 = medianDur(base.lat, func(s sample) time.Duration { return s.p50 })
		}
		for _, a := range arms {
			if reason, _ := notAvailable(a, len(a.lat)); reason != "" {
				fmt.Fprintf(w, "%-11s %9s\n", a.v.name, "n/a")
				continue
			}
			p50 := medianDur(a.lat, func(s sample) time.Duration { return s.p50 })
			add := "n/a"
			if baseP50 > 0 {
				added[a.v.name] = p50 - baseP50
				add = fmtSigned(p50 - baseP50)
			}
			fmt.Fprintf(w, "%-11s %9s %9s %11s %11.1f\n", a.v.name, fmtDur(p50),
				fmtDur(medianDur(a.lat, func(s sample) time.Duration { return s.p99 })), add,
				median(a.lat, func(s sample) float64 { return s.cpu }))
		}
	}

	fmt.Fprintln(w, "\ntargets (for a quiet machine; reported, not asserted)")
	fmt.Fprintf(w, "  cached allow   >= %.2f x plain   %s\n", targetCached, verdictRatio(ratio, "cached", targetCached))
	fmt.Fprintf(w, "  uncached allow >= %.2f x plain   %s\n", targetUncached, verdictRatio(ratio, "uncached", targetUncached))
	fmt.Fprintf(w, "  ratelimited    >= %.2f x plain   %s\n", targetRateLimited, verdictRatio(ratio, "ratelimited", targetRateLimited))
	var lat []string
	for _, name := range []string{targetAddedName, "uncached"} {
		if d, ok := added[name]; ok {
			lat = append(lat, fmt.Sprintf("%s %s %s", name, fmtSigned(d), metOrNot(d <= targetAddedP50)))
		} else {
			lat = append(lat, name+" n/a")
		}
	}
	fmt.Fprintf(w, "  added p50 at one connection <= %s   %s\n", fmtDur(targetAddedP50), strings.Join(lat, "; "))

	var notes []string
	if n := rateLimitNote(arms); n != "" {
		notes = append(notes, n)
	}
	anomalies := false
	for _, a := range arms {
		for _, an := range a.anomaly {
			notes = append(notes, a.v.name+": "+an)
			anomalies = true
		}
	}
	if anomalies {
		notes = append(notes, "runs with errors are still in the medians")
	}
	retried := 0
	for _, a := range arms {
		retried += a.retried
	}
	if retried > 0 {
		notes = append(notes, fmt.Sprintf("%d runs were repeated because other work took more than %.0f%% of the pinned CPUs", retried, noisyOther))
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "\nnotes")
		for _, n := range notes {
			fmt.Fprintln(w, "  "+n)
		}
	}

	var line []string
	for _, v := range variants {
		if !v.ratio {
			continue
		}
		val := "n/a"
		if r, ok := ratio[v.name]; ok {
			val = fmt.Sprintf("%.2f", r)
		}
		line = append(line, v.name+"="+val)
	}
	fmt.Fprintf(w, "\nbench: %s\n", strings.Join(line, " "))
	return failed
}

// rateLimitNote states the server CPU rate limiting adds to a request:
// the ratelimited variant's cpu µs/req minus uncached's (the same gateway
// and policy without the limit), and how much of it Redis spent. "" when
// either variant has no throughput runs.
func rateLimitNote(arms []*arm) string {
	rl, un := find(arms, "ratelimited"), find(arms, "uncached")
	if rl == nil || un == nil || !rl.ok() || !un.ok() || len(rl.runs) == 0 || len(un.runs) == 0 {
		return ""
	}
	cpu := func(s sample) float64 { return s.cpu }
	added := median(rl.runs, cpu) - median(un.runs, cpu)
	redis := -1.0
	for i, p := range rl.t.procs {
		if p.name == "redis" {
			redis = median(rl.runs, func(s sample) float64 { return s.procCPU[i] })
		}
	}
	note := fmt.Sprintf("rate limiting adds %+.1f µs of server CPU per request (ratelimited - uncached cpu µs/req)", added)
	if redis >= 0 {
		note += fmt.Sprintf(", of which redis-server %.1f and the gateway %+.1f", redis, added-redis)
	}
	return note
}

// notAvailable says why a has no row: unavailable (bad false) or failed
// (bad true); "" when it has n samples to report.
func notAvailable(a *arm, n int) (reason string, bad bool) {
	var u *unavailable
	switch {
	case a.err != nil && errors.As(a.err, &u):
		return u.reason, false
	case a.err != nil:
		return "failed: " + firstLine(a.err.Error()), true
	case a.t == nil || n == 0:
		return "not measured", false
	}
	return "", false
}

func find(arms []*arm, name string) *arm {
	for _, a := range arms {
		if a.v.name == name {
			return a
		}
	}
	return nil
}

func verdictRatio(ratio map[string]float64, name string, target float64) string {
	r, ok := ratio[name]
	if !ok {
		return "n/a"
	}
	return fmt.Sprintf("%.2f %s", r, metOrNot(r >= target))
}

func metOrNot(ok bool) string {
	if ok {
		return "(met)"
	}
	return "(not met)"
}

func median(ss []sample, f func(sample) float64) float64 {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func medianDur(ss []sample, f func(sample) time.Duration) time.Duration {
	return time.Duration(median(ss, func(s sample) float64 { return float64(f(s)) }))
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// fmtDur prints a latency in milliseconds with microsecond precision.
func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.3fms", float64(d)/float64(time.Millisecond))
}

func fmtSigned(d time.Duration) string {
	if d >= 0 {
		return "+" + fmtDur(d)
	}
	return fmtDur(d)
}

func cpuModel() string {
	raw, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
