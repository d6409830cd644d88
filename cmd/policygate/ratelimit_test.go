package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// redisProc is a private redis-server on loopback without persistence.
type redisProc struct {
	addr string
	cmd  *exec.Cmd
	port int
	dir  string
}

func startRedis(t *testing.T, port int) *redisProc {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("POLICYGATE_REQUIRE_REDIS") == "1" {
			t.Fatal("redis-server not installed (run .ci/install-deps)")
		}
		t.Skip("redis-server not installed; run .ci/install-deps or set POLICYGATE_REQUIRE_REDIS=1 to fail")
	}
	if port == 0 {
		port = freePort(t)
	}
	r := &redisProc{port: port, addr: fmt.Sprintf("127.0.0.1:%d", port), dir: t.TempDir()}
	r.cmd = exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", r.dir, "--logfile", filepath.Join(r.dir, "redis.log"))
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", r.addr); err == nil {
			c.Close()
			return r
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("redis-server did not start")
	return nil
}

func (r *redisProc) stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	_, _ = r.cmd.Process.Wait()
	r.cmd = nil
}

func rateLimitConfig(policyDir, upstream, backend string) string {
	return fmt.Sprintf(`server:
  listen: 127.0.0.1:0
policy:
  dir: %s
authn:
  api_keys:
%s%s%sroutes:
  - name: limited
    path_prefix: /public
    upstream: %s
    policy: faults/limited
    rate_limit:
      failure_mode: fail_closed
      headers: true
      limits: [{key: "route-total", limit: 100, period: 1m}]
  - name: open
    path_prefix: /internal
    upstream: %s
    policy: faults/limited
    rate_limit:
      failure_mode: fail_open
decision_log:
  output: file
  path: LOGFILE
  flush_interval: 5ms
`, policyDir, secAdmin.yaml(), secUser.yaml(), backend, upstream, upstream)
}

// TestRateLimitThroughGateway checks policy-chosen limits end to end: the
// policy's per-caller limit (3/min) answers 429 with Retry-After and
// RateLimit headers, other callers keep their budget, and the decision log
// records which limit applied.
func TestRateLimitThroughGateway(t *testing.T) {
	up := newRecorder(t)
	g := startGateway(t, rateLimitConfig(repoPath(t, "testdata/security/policy"), up.srv.URL, "rate_limit:\n  backend: memory\n"), nil)
	e := &sampleEnv{}
	for i := 1; i <= 4; i++ {
		resp, body := e.do(t, g.URL, "GET", "/public/x", bearer(secUser), "")
		want := 200
		if i == 4 {
			want = 429
		}
		if resp.StatusCode != want {
			t.Fatalf("request %d: status %d, want %d: %s", i, resp.StatusCode, want, body)
		}
		if resp.Header.Get("RateLimit-Limit") == "" {
			t.Errorf("request %d lacks RateLimit-Limit", i)
		}
		if i == 4 {
			if resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "rate_limited") {
				t.Fatalf("429 without Retry-After or code: %v %s", resp.Header, body)
			}
			ev := g.WaitEvent(t, resp.Header.Get("X-Decision-Id"))
			if rl, ok := ev["rate_limit"].(map[string]any); !ok || rl["result"] == nil {
				t.Fatalf("event lacks the rate-limit outcome: %v", ev["rate_limit"])
			}
		}
	}
	if n := len(up.take()); n != 3 {
		t.Fatalf("upstream got %d requests, want 3", n)
	}
	if resp, _ := e.do(t, g.URL, "GET", "/public/x", bearer(secAdmin), ""); resp.StatusCode != 200 {
		t.Fatalf("another caller was limited: %d", resp.StatusCode)
	}
}

// TestRateLimitRedisDown kills Redis under a gateway: fail_closed routes
// answer 503 (never 500 or 429), fail_open routes forward, and both recover
// when Redis is back.
func TestRateLimitRedisDown(t *testing.T) {
	r := startRedis(t, 0)
	up := newRecorder(t)
	backend := fmt.Sprintf("rate_limit:\n  backend: redis\n  timeout: 100ms\n  redis: {addrs: [%q]}\n  breaker: {failures: 2, open_for: 200ms}\n", r.addr)
	g := startGateway(t, rateLimitConfig(repoPath(t, "testdata/security/policy"), up.srv.URL, backend), nil)
	e := &sampleEnv{}
	if resp, b := e.do(t, g.URL, "GET", "/public/x", bearer(secAdmin), ""); resp.StatusCode != 200 {
		t.Fatalf("with Redis up: %d %s", resp.StatusCode, b)
	}
	port := r.port
	r.stop()
	for i := 0; i < 5; i++ {
		start := time.Now()
		resp, body := e.do(t, g.URL, "GET", "/public/x", bearer(secUser), "")
		if resp.StatusCode != 503 || !strings.Contains(string(body), "rate_limit_unavailable") {
			t.Fatalf("fail_closed with Redis down: %d %s", resp.StatusCode, body)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("a check with Redis down took %v", d)
		}
		if resp, body := e.do(t, g.URL, "GET", "/internal/x", bearer(secUser), ""); resp.StatusCode != 200 {
			t.Fatalf("fail_open with Redis down: %d %s", resp.StatusCode, body)
		}
	}
	startRedis(t, port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, _ := e.do(t, g.URL, "GET", "/public/x", bearer(secAdmin), "")
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery after Redis restart: %d", resp.StatusCode)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
