package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// settle is the pause before and after each measured run: longer than the
// decision log's flush interval, so a run's CPU includes writing its own
// events and not the previous run's.
const settle = 300 * time.Millisecond

// sample is one measured run of one variant.
type sample struct {
	requests int64
	rps      float64
	p50, p99 time.Duration
	cpu      float64   // CPU µs per request, every server process of the variant
	proxyCPU float64   // the same without the backend
	procCPU  []float64 // CPU µs per request of each process, in target.procs order
	errors   int64     // connect, read, write and timeout errors
	non2xx   int64
	// util is the share of the server CPUs' time the variant's servers
	// used: near 100% when the load saturates them. other is the share of
	// the server and client CPUs' time taken by anything but the servers
	// and wrk (other processes, hypervisor steal). Both are -1 when the
	// processes are not pinned.
	util, other float64
}

// wrkResult is what the Lua script's done() prints.
type wrkResult struct {
	requests                                        int64
	duration                                        time.Duration
	cpu                                             time.Duration // wrk's own user+system time
	connect, read, write, status, timeout, p50, p99 int64
}

// measure runs every started variant BENCH_REPS times, interleaved, at
// BENCH_CONNS connections, then (unless BENCH_LATENCY=0) at one connection.
func (b *bench) measure(ctx context.Context, arms []*arm) error {
	var live []*arm
	for _, a := range arms {
		if a.ok() {
			live = append(live, a)
		}
	}
	perRun := b.s.warmup + b.s.duration + 2*settle
	total := time.Duration(b.s.reps*len(live)) * perRun
	if b.s.latency > 0 {
		total += time.Duration(b.s.reps*len(live)) * (b.s.warmup + b.s.latency + 2*settle)
	}
	fmt.Fprintf(b.log, "measuring %d variants × %d reps, about %s (more if disturbed runs are repeated) ...\n", len(live), b.s.reps, total.Round(time.Second))
	phases := []struct {
		conns int
		d     time.Duration
		into  func(*arm) *[]sample
	}{
		{b.s.conns, b.s.duration, func(a *arm) *[]sample { return &a.runs }},
		{1, b.s.latency, func(a *arm) *[]sample { return &a.lat }},
	}
	for _, ph := range phases {
		if ph.d == 0 {
			continue
		}
		for rep := range b.s.reps {
			for _, a := range live {
				if !a.ok() {
					continue
				}
				smp, err := b.runClean(ctx, a, ph.conns, ph.d)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					a.err = err
					fmt.Fprintf(b.log, "%s: %v\n", a.v.name, err)
					continue
				}
				if smp.errors > 0 || smp.non2xx > 0 {
					a.anomaly = append(a.anomaly, fmt.Sprintf("c=%d rep %d: %d socket errors, %d non-2xx of %d requests", ph.conns, rep+1, smp.errors, smp.non2xx, smp.requests))
				}
				*ph.into(a) = append(*ph.into(a), smp)
				fmt.Fprintf(b.log, "  c=%-4d rep %d/%d %-11s %9.0f req/s  p50 %s  p99 %s  cpu %.1f µs/req  util %.0f%%  other %.0f%%\n",
					ph.conns, rep+1, b.s.reps, a.v.name, smp.rps, fmtDur(smp.p50), fmtDur(smp.p99), smp.cpu, smp.util, smp.other)
			}
		}
	}
	return nil
}

// runClean runs once and, while other work took more than noisyOther of
// the pinned CPUs, up to BENCH_RETRIES more times; it keeps the cleanest
// run.
func (b *bench) runClean(ctx context.Context, a *arm, conns int, d time.Duration) (sample, error) {
	var best sample
	for attempt := 0; ; attempt++ {
		smp, err := b.runOnce(ctx, a.t, conns, d)
		if err != nil {
			return sample{}, err
		}
		if attempt == 0 || smp.other < best.other {
			best = smp
		}
		if best.other <= noisyOther || attempt == b.s.retries {
			return best, nil
		}
		a.retried++
		fmt.Fprintf(b.log, "  c=%-4d %-11s other work took %.0f%% of the pinned CPUs; running again\n", conns, a.v.name, smp.other)
	}
}

// runOnce warms t up, then measures one run: wrk's throughput and latency,
// and the CPU time every server process of t spent meanwhile.
func (b *bench) runOnce(ctx context.Context, t *target, conns int, d time.Duration) (sample, error) {
	if b.s.warmup > 0 {
		if _, err := b.wrk(ctx, t.url, conns, b.s.warmup); err != nil {
			return sample{}, err
		}
	}
	if err := sleep(ctx, settle); err != nil {
		return sample{}, err
	}
	for _, path := range t.logs {
		// Only the last run's events are kept, so a long bench does not fill
		// the disk. The writers append, so truncating does not disturb them.
		if err := os.Truncate(path, 0); err != nil {
			return sample{}, err
		}
	}
	before, err := b.cpu(t.procs)
	if err != nil {
		return sample{}, err
	}
	srvBefore, allBefore, err := b.cpuTimes()
	if err != nil {
		return sample{}, err
	}
	res, err := b.wrk(ctx, t.url, conns, d)
	if err != nil {
		return sample{}, err
	}
	if err := sleep(ctx, settle); err != nil {
		return sample{}, err
	}
	after, err := b.cpu(t.procs)
	if err != nil {
		return sample{}, err
	}
	srvAfter, allAfter, err := b.cpuTimes()
	if err != nil {
		return sample{}, err
	}
	if res.requests == 0 || res.duration <= 0 {
		return sample{}, fmt.Errorf("wrk completed no requests against %s", t.url)
	}
	s := sample{
		requests: res.requests,
		rps:      float64(res.requests) / res.duration.Seconds(),
		p50:      time.Duration(res.p50) * time.Microsecond,
		p99:      time.Duration(res.p99) * time.Microsecond,
		errors:   res.connect + res.read + res.write + res.timeout,
		non2xx:   res.status,
	}
	perReq := func(ticks uint64) float64 {
		return float64(ticks) * float64(b.tick) / float64(time.Microsecond) / float64(res.requests)
	}
	var all, backend uint64
	s.procCPU = make([]float64, len(t.procs))
	for i, p := range t.procs {
		delta := after[i] - before[i]
		all += delta
		s.procCPU[i] = perReq(delta)
		if p == b.backend {
			backend += delta
		}
	}
	s.cpu, s.proxyCPU = perReq(all), perReq(all-backend)
	s.util, s.other = -1, -1
	srvTotal, allTotal := srvAfter.total-srvBefore.total, allAfter.total-allBefore.total
	if b.pin && srvTotal > 0 && allTotal > 0 {
		s.util = min(100, 100*float64(all)/float64(srvTotal))
		ours := float64(all) + float64(res.cpu)/float64(b.tick)
		s.other = max(0, 100*(float64(allAfter.busy-allBefore.busy)-ours)/float64(allTotal))
	}
	return s, nil
}

// cpuTimes reads the time of the server CPUs and of the server and client
// CPUs together; zero when nothing is pinned.
func (b *bench) cpuTimes() (srv, all cpuTimes, err error) {
	if !b.pin {
		return cpuTimes{}, cpuTimes{}, nil
	}
	if srv, err = readCPUTimes(b.serverCPUList); err != nil {
		return cpuTimes{}, cpuTimes{}, err
	}
	all, err = readCPUTimes(b.pinnedCPUList)
	return srv, all, err
}

// cpu reads the CPU ticks of every process; a process that has died fails
// the run.
func (b *bench) cpu(procs []*proc) ([]uint64, error) {
	out := make([]uint64, len(procs))
	for i, p := range procs {
		if p.exited() {
			return nil, p.failure("server")
		}
		t, err := cpuTicks(p.pid)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		out[i] = t
	}
	return out, nil
}

// wrk runs the load generator, pinned to the client CPUs, for d.
func (b *bench) wrk(ctx context.Context, url string, conns int, d time.Duration) (wrkResult, error) {
	threads := min(b.s.threads, conns)
	args := []string{"wrk", "-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns),
		"-d", strconv.Itoa(int(d/time.Second)) + "s", "--timeout", "5s", "-s", b.script, url}
	if b.pin {
		args = append([]string{b.taskset, "-c", b.s.clientCPUs}, args...)
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return wrkResult{}, ctx.Err()
		}
		return wrkResult{}, fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "BENCHRESULT ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 9 {
			break
		}
		var v [9]int64
		for i, s := range f {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return wrkResult{}, fmt.Errorf("wrk result %q: %w", rest, err)
			}
			v[i] = n
		}
		return wrkResult{
			requests: v[0], duration: time.Duration(v[1]) * time.Microsecond,
			cpu:     cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(),
			connect: v[2], read: v[3], write: v[4], status: v[5], timeout: v[6], p50: v[7], p99: v[8],
		}, nil
	}
	return wrkResult{}, fmt.Errorf("%s: no result line in its output:\n%s", strings.Join(args, " "), out.String())
}
