package main

import (
	"fmt"
	"strings"
	"testing"
)

// TestLogFailClosedRoute makes the decision log a precondition of the
// call: while the durable spool can store events, allowed calls go
// through; once it cannot (its upload sink is down and the spool is full),
// calls on a log_fail_closed route are refused with 503 log_unavailable and
// never reach the upstream, while a normal route keeps serving.
func TestLogFailClosedRoute(t *testing.T) {
	up := newRecorder(t)
	dead := fmt.Sprintf("http://127.0.0.1:%d/logs", freePort(t)) // nothing listens there
	cfg := fmt.Sprintf(`server:
  listen: 127.0.0.1:0
policy:
  dir: %s
routes:
  - name: privileged
    path_prefix: /admin
    upstream: %s
    policy: faults/echo
    log_fail_closed: true
  - name: public
    path_prefix: /public
    upstream: %s
    policy: faults/decision
decision_log:
  output: none
  delivery: durable
  spool_dir: SPOOLDIR
  spool_max_size: "16384"
  shutdown_grace: 200ms
  upload:
    url: %s
    max_delay: 10ms
`, repoPath(t, "testdata/security/policy"), up.srv.URL, up.srv.URL, dead)
	cfg = strings.ReplaceAll(cfg, "SPOOLDIR", t.TempDir())
	g := startGateway(t, cfg, nil)
	e := &sampleEnv{}
	var refused, forwarded int
	for i := 0; i < 200 && refused == 0; i++ {
		up.take()
		resp, body := e.do(t, g.URL, "POST", "/admin/rotate", nil, "")
		switch resp.StatusCode {
		case 200:
			forwarded++
		case 503:
			if string(body) == "" || !strings.Contains(string(body), "log_unavailable") {
				t.Fatalf("503 without log_unavailable: %s", body)
			}
			refused++
			if n := len(up.take()); n != 0 {
				t.Fatalf("a refused call reached the upstream")
			}
		default:
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
	}
	if forwarded == 0 || refused == 0 {
		t.Fatalf("forwarded %d, refused %d: the spool never filled or never accepted", forwarded, refused)
	}
	if resp, _ := e.do(t, g.URL, "GET", "/public/a", nil, ""); resp.StatusCode != 200 {
		t.Fatalf("a route without log_fail_closed was refused: %d", resp.StatusCode)
	}
	t.Logf("%d calls forwarded before the spool filled", forwarded)
	// Stopping cannot deliver what the dead sink never took: the gateway
	// says so instead of claiming a clean flush.
	if err := g.StopErr(); err == nil {
		t.Error("gateway reported a clean stop with undeliverable events")
	}
}
