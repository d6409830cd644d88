package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// blockingUpstream answers each request only once release is closed.
func blockingUpstream(t *testing.T) (srv *httptest.Server, arrived chan struct{}, release chan struct{}) {
	arrived, release = make(chan struct{}, 100), make(chan struct{})
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		fmt.Fprint(w, "done")
	}))
	t.Cleanup(srv.Close)
	return srv, arrived, release
}

func allowAllConfig(upstream string) string {
	return fmt.Sprintf(`server:
  listen: 127.0.0.1:0
  shutdown_grace: 20s
policy:
  dir: %s
routes:
  - name: all
    path_prefix: /public
    upstream: %s
    policy: faults/decision
decision_log:
  output: file
  path: LOGFILE
`, "POLICYDIR", upstream)
}

// TestGracefulShutdown stops the gateway while requests are in flight: they
// complete with the upstream's answer, and their events are in the log when
// the gateway returns.
func TestGracefulShutdown(t *testing.T) {
	up, arrived, release := blockingUpstream(t)
	cfg := strings.ReplaceAll(allowAllConfig(up.URL), "POLICYDIR", repoPath(t, "testdata/security/policy"))
	g := startGateway(t, cfg, nil)

	const inflight = 5
	type result struct {
		status int
		id     string
		err    error
	}
	results := make(chan result, inflight)
	for i := 0; i < inflight; i++ {
		go func() {
			resp, err := http.Get(g.URL + "/public/slow")
			if err != nil {
				results <- result{err: err}
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			results <- result{status: resp.StatusCode, id: resp.Header.Get("X-Decision-Id")}
		}()
	}
	for i := 0; i < inflight; i++ {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("requests did not reach the upstream")
		}
	}
	stopped := make(chan struct{})
	go func() { g.Stop(t); close(stopped) }()
	// Shutdown waits for in-flight requests: Stop must not return yet.
	select {
	case <-stopped:
		t.Fatal("gateway stopped with requests in flight")
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	var ids []string
	for i := 0; i < inflight; i++ {
		r := <-results
		if r.err != nil || r.status != 200 {
			t.Fatalf("in-flight request: status %d err %v", r.status, r.err)
		}
		ids = append(ids, r.id)
	}
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatal("gateway did not stop after in-flight requests finished")
	}
	logged := map[string]bool{}
	for _, ev := range g.Events(t) {
		logged[ev["decision_id"].(string)] = true
	}
	for _, id := range ids {
		if !logged[id] {
			t.Errorf("in-flight decision %s missing from the log after shutdown", id)
		}
	}
}

// TestSIGTERMUnderLoad runs the real binary, sends it SIGTERM while a client
// keeps requests going, and checks that every response the client got has
// its event in the log (nothing acknowledged is lost) and the process exits 0.
func TestSIGTERMUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "policygate")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	up := newRecorder(t)
	logPath := filepath.Join(dir, "decisions.jsonl")
	cfg := strings.ReplaceAll(allowAllConfig(up.srv.URL), "POLICYDIR", repoPath(t, "testdata/security/policy"))
	cfg = strings.ReplaceAll(cfg, "LOGFILE", logPath)
	cfgPath := filepath.Join(dir, "policygate.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addrRE := regexp.MustCompile(`listener=http addr=(\S+)`)
	var addr string
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if m := addrRE.FindStringSubmatch(sc.Text()); m != nil {
			addr = m[1]
			break
		}
	}
	if addr == "" {
		t.Fatal("no listen address printed")
	}
	go io.Copy(io.Discard, stderr)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var acked atomic.Int64
	ackedIDs := make(chan string, 100000)
	done := make(chan struct{})
	client := &http.Client{Timeout: 5 * time.Second}
	for w := 0; w < 4; w++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for ctx.Err() == nil {
				resp, err := client.Get("http://" + addr + "/public/x")
				if err != nil {
					return // the listener closed: shutdown has begun
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					acked.Add(1)
					ackedIDs <- resp.Header.Get("X-Decision-Id")
				}
			}
		}()
	}
	for acked.Load() < 200 && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for w := 0; w < 4; w++ {
		<-done
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	close(ackedIDs)
	raw, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	log := string(raw)
	missing := 0
	for id := range ackedIDs {
		if !strings.Contains(log, `"decision_id":"`+id+`"`) {
			missing++
		}
	}
	t.Logf("%d responses acknowledged before and during SIGTERM; %d lines logged", acked.Load(), strings.Count(log, "\n"))
	if missing > 0 {
		t.Fatalf("%d acknowledged decisions missing from the log", missing)
	}
}
