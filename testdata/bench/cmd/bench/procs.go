package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	// readyTimeout bounds how long a server may take to start.
	readyTimeout = 60 * time.Second
	// stopGrace is how long a server may take to exit after SIGTERM before
	// it is killed.
	stopGrace = 10 * time.Second
)

// proc is one server process the bench started. Only procs are ever
// signalled, always by their own PID.
type proc struct {
	name string
	pid  int
	log  string // its stdout and stderr
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
	err  error         // its exit status, set before done closes
}

// startProc starts a server pinned to cpus (unless pinning is off), with
// its output appended to <work>/<name>.log. It runs in its own process
// group, so a Ctrl-C in the terminal reaches only the bench, which then
// stops it; and it gets SIGTERM if the bench dies without doing so.
func (b *bench) startProc(name string, env []string, bin string, args ...string) (*proc, error) {
	logPath := b.path(name + ".log")
	out, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer out.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	if b.pin {
		cmd = exec.Command(b.taskset, append([]string{"-c", b.s.serverCPUs, bin}, args...)...)
	}
	cmd.Dir = b.work
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	// taskset sets the affinity and execs the server: the PID stays the
	// server's own, so /proc/<pid>/stat is the server's CPU time.
	p := &proc{name: name, pid: cmd.Process.Pid, log: logPath, cmd: cmd, done: make(chan struct{})}
	b.procs = append(b.procs, p)
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM to p's PID, waits up to stopGrace, then kills it.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// failure describes why p is not usable, with the end of its log.
func (p *proc) failure(what string) error {
	state := "is running"
	if p.exited() {
		state = fmt.Sprintf("exited (%v)", p.err)
	}
	return fmt.Errorf("%s: %s %s; end of %s:\n%s", p.name, what, state, p.log, tail(p.log, 20))
}

// waitReady polls ready until it reports true, p exits or readyTimeout
// passes.
func (p *proc) waitReady(ctx context.Context, ready func(context.Context) bool) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready(ctx) {
			return nil
		}
		select {
		case <-p.done:
			return p.failure("did not become ready:")
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return p.failure(fmt.Sprintf("not ready after %s:", readyTimeout))
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// httpOK is a readiness check: GET url answers 200.
func httpOK(url string) func(context.Context) bool {
	return func(ctx context.Context) bool {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false
		}
		resp, err := probeClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
}

// accepting is a readiness check: addr accepts TCP connections.
func accepting(addr string) func(context.Context) bool {
	return func(ctx context.Context) bool {
		c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
}

var probeClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// freeAddr returns a loopback address with a port that was free a moment
// ago. Another process could take it before the server binds; the server
// then fails to start and says so.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// cpuTicks returns the user+system CPU time of a process, all its threads,
// in clock ticks (utime and stime of /proc/<pid>/stat).
func cpuTicks(pid int) (uint64, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses; the fields start
	// after its last ')'. Counting from state (field 3), utime and stime
	// (fields 14 and 15) are the 12th and 13th.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return utime + stime, nil
}

// clockTick returns the length of one clock tick of /proc/<pid>/stat: the
// kernel passes sysconf(_SC_CLK_TCK) to every process as AT_CLKTCK in its
// auxiliary vector. It is 100 Hz on every common Linux build, the fallback.
func clockTick() time.Duration {
	const atClkTck = 17
	raw, err := os.ReadFile("/proc/self/auxv")
	if err == nil && len(raw)%16 == 0 {
		for i := 0; i+16 <= len(raw); i += 16 {
			tag := binary.NativeEndian.Uint64(raw[i:])
			val := binary.NativeEndian.Uint64(raw[i+8:])
			if tag == atClkTck && val > 0 && val <= 10000 {
				return time.Second / time.Duration(val)
			}
		}
	}
	return 10 * time.Millisecond
}

// tail returns the last n lines of a file, from at most its last 64 KiB.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	defer f.Close()
	const window = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > window {
		_, _ = f.Seek(st.Size()-window, io.SeekStart)
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// parseCPUList parses a taskset CPU list such as "0", "0,2" or "0-3".
func parseCPUList(s string) ([]int, error) {
	var cpus []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("CPU list %q: bad CPU %q", s, part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("CPU list %q: bad range %q", s, part)
			}
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// cpuTimes is the busy and total time of a set of CPUs, in clock ticks,
// from /proc/stat. Busy is user, nice, system and steal time: processes
// and the hypervisor. Interrupt time is left out because much of it is the
// benchmark's own loopback traffic, processed outside any server's
// account.
type cpuTimes struct{ busy, total uint64 }

func readCPUTimes(cpus []int) (cpuTimes, error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	want := make(map[string]bool, len(cpus))
	for _, c := range cpus {
		want["cpu"+strconv.Itoa(c)] = true
	}
	var t cpuTimes
	found := 0
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !want[f[0]] {
			continue
		}
		found++
		for i, v := range f[1:] {
			if i >= 8 { // guest time is already counted in user
				break
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return cpuTimes{}, fmt.Errorf("/proc/stat: %s: %w", f[0], err)
			}
			t.total += n
			switch i {
			case 0, 1, 2, 7: // user, nice, system, steal
				t.busy += n
			}
		}
	}
	if found != len(cpus) {
		return cpuTimes{}, fmt.Errorf("/proc/stat: %d of CPUs %v found", found, cpus)
	}
	return t, nil
}
