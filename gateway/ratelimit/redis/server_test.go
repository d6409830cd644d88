package redis_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	rlredis "github.com/policygate/policygate/gateway/ratelimit/redis"
)

// Bounds of the test harness's own waits.
const (
	serverStartTimeout  = 10 * time.Second
	clusterReadyTimeout = 20 * time.Second
	recoveryTimeout     = 10 * time.Second
)

func TestMain(m *testing.M) {
	// go-redis logs every failed dial; the fault tests cause many.
	rlredis.SetLogger(slog.New(slog.DiscardHandler))
	os.Exit(m.Run())
}

// requireBinary finds a Redis binary; without it the test skips, unless
// POLICYGATE_REQUIRE_REDIS=1 (CI), where it fails.
func requireBinary(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("POLICYGATE_REQUIRE_REDIS") == "1" {
			tb.Fatalf("%s not found and POLICYGATE_REQUIRE_REDIS=1: %v", name, err)
		}
		tb.Skipf("%s not found (install with .ci/install-deps; POLICYGATE_REQUIRE_REDIS=1 fails instead): %v", name, err)
	}
	return p
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// redisServer is one redis-server process on a loopback port, without
// persistence, owned by the test and stopped by PID.
type redisServer struct {
	tb    testing.TB
	bin   string
	dir   string
	port  int
	args  []string // before the common flags, e.g. a sentinel's config file
	extra []string
	ready string // the log line that says the server serves

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *tailBuffer
}

func startRedis(tb testing.TB, extra ...string) *redisServer {
	tb.Helper()
	s := &redisServer{tb: tb, bin: requireBinary(tb, "redis-server"), dir: tb.TempDir(), port: freePort(tb), extra: extra, ready: "Ready to accept connections"}
	s.start()
	tb.Cleanup(s.kill)
	return s
}

// startSentinel runs a Sentinel (redis-server --sentinel) monitoring
// master as "mymaster" with quorum 1.
func startSentinel(tb testing.TB, master *redisServer) *redisServer {
	tb.Helper()
	s := &redisServer{tb: tb, bin: requireBinary(tb, "redis-server"), dir: tb.TempDir(), port: freePort(tb), ready: "+monitor master"}
	conf := filepath.Join(s.dir, "sentinel.conf")
	body := fmt.Sprintf("sentinel monitor mymaster 127.0.0.1 %d 1\n", master.port)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		tb.Fatal(err)
	}
	s.args = []string{conf, "--sentinel"}
	s.start()
	tb.Cleanup(s.kill)
	return s
}

func (s *redisServer) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// start runs the server and waits for its "Ready to accept connections"
// log line.
func (s *redisServer) start() {
	s.tb.Helper()
	args := append(append(append([]string{}, s.args...),
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no",
		"--dir", s.dir, "--daemonize", "no", "--logfile", "",
	), s.extra...)
	cmd := exec.Command(s.bin, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		s.tb.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		s.tb.Fatalf("start redis-server: %v", err)
	}
	ready, done, log := make(chan struct{}), make(chan struct{}), &tailBuffer{}
	go func() {
		sc := bufio.NewScanner(out)
		once := false
		for sc.Scan() {
			log.add(sc.Text())
			if !once && strings.Contains(sc.Text(), s.ready) {
				once = true
				close(ready)
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done, s.log = cmd, done, log
	s.mu.Unlock()
	select {
	case <-ready:
	case <-done:
		s.tb.Fatalf("redis-server on port %d exited at start:\n%s", s.port, log)
	case <-time.After(serverStartTimeout):
		s.kill()
		s.tb.Fatalf("redis-server on port %d not ready after %s:\n%s", s.port, serverStartTimeout, log)
	}
}

// kill stops the server with SIGKILL (after SIGCONT, should it be
// stopped) and waits for it to exit.
func (s *redisServer) kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Kill()
	<-done
}

func (s *redisServer) signal(sig syscall.Signal) {
	s.tb.Helper()
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		s.tb.Fatal("redis-server not running")
	}
	if err := cmd.Process.Signal(sig); err != nil {
		s.tb.Fatalf("signal %v: %v", sig, err)
	}
}

func (s *redisServer) client() *goredis.Client {
	c := goredis.NewClient(&goredis.Options{Addr: s.addr(), DialTimeout: time.Second, ReadTimeout: 2 * time.Second, MaxRetries: -1})
	s.tb.Cleanup(func() { _ = c.Close() })
	return c
}

// tailBuffer keeps the last lines of a server's log for failure messages.
type tailBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (b *tailBuffer) add(l string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines = append(b.lines, l)
	if len(b.lines) > 40 {
		b.lines = b.lines[1:]
	}
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "\n")
}

// startCluster runs n masters with cluster-enabled yes on loopback ports,
// joins them with redis-cli --cluster create and waits until every node
// reports cluster_state:ok.
func startCluster(tb testing.TB, n int) []*redisServer {
	tb.Helper()
	cli := requireBinary(tb, "redis-cli")
	nodes := make([]*redisServer, n)
	addrs := make([]string, n)
	for i := range nodes {
		nodes[i] = startRedis(tb,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "5000",
			"--cluster-port", strconv.Itoa(freePort(tb)),
		)
		addrs[i] = nodes[i].addr()
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterReadyTimeout)
	defer cancel()
	args := append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		tb.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, node := range nodes {
		c := node.client()
		waitFor(tb, clusterReadyTimeout, fmt.Sprintf("cluster_state:ok on %s", node.addr()), func() bool {
			info, err := c.ClusterInfo(ctx).Result()
			return err == nil && strings.Contains(info, "cluster_state:ok")
		})
	}
	return nodes
}

// waitFor polls cond until it holds, failing after timeout.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// commandStats returns INFO commandstats as command → calls.
func commandStats(tb testing.TB, c *goredis.Client) map[string]int64 {
	tb.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				out[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return out
}
