package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
	decisionlog "github.com/policygate/policygate/decision/log"
)

// logKeys writes an Ed25519 key pair as PEM files.
func logKeys(t *testing.T, dir, name string) (priv, pub string) {
	t.Helper()
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p8, _ := x509.MarshalPKCS8PrivateKey(sk)
	pkix, _ := x509.MarshalPKIXPublicKey(pk)
	priv, pub = filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
	os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}), 0o600)
	os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix}), 0o600)
	return priv, pub
}

// TestLogsVerifyCLI runs `policygate logs verify` on a signed log and on
// copies with one edited, one deleted and two swapped lines.
func TestLogsVerifyCLI(t *testing.T) {
	dir := t.TempDir()
	priv, pub := logKeys(t, dir, "log")
	_, otherPub := logKeys(t, dir, "other")
	path := filepath.Join(dir, "decisions.jsonl")
	l, err := decisionlog.New(decisionlog.Config{
		Output: "file", Path: path,
		Checkpoint: &decisionlog.CheckpointConfig{SigningKeyFile: priv, Every: "1h"},
	}, decisionlog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		in := &decision.Input{Request: decision.Request{ID: fmt.Sprint("d", i), Method: "DELETE", Path: "/admin/x"}, Identity: decision.Anonymous()}
		ev := decision.NewEvent(&decision.Decision{ID: in.Request.ID, Input: in, Result: decision.Result{Outcome: decision.OutcomeDeny}}, decision.Completion{Status: 403})
		if err := l.Log(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(path)
	lines := strings.SplitAfter(string(orig), "\n")
	edit := func(f func(ls []string) []string) string {
		p := filepath.Join(t.TempDir(), "decisions.jsonl")
		ls := f(append([]string(nil), lines...))
		os.WriteFile(p, []byte(strings.Join(ls, "")), 0o600)
		return p
	}
	edited := edit(func(ls []string) []string {
		ls[4] = strings.Replace(ls[4], `"status":403`, `"status":200`, 1)
		return ls
	})
	deleted := edit(func(ls []string) []string { return append(ls[:7:7], ls[8:]...) })
	swapped := edit(func(ls []string) []string {
		ls[2], ls[3] = ls[3], ls[2]
		return ls
	})
	tests := []struct {
		name string
		args []string
		err  error
		out  string
	}{
		{name: "intact, signed", args: []string{path, "--public-key", pub}, out: "ok: 12 events (seq 1..12) in 1 files; 1 checkpoints, signed through seq 12"},
		{name: "intact, key first", args: []string{"--public-key", pub, path}, out: "ok: 12 events"},
		{name: "edited", args: []string{edited}, err: errFailed, out: "FAILED: " + edited + ":5: seq 5: edited: the line does not match its hash"},
		{name: "deleted", args: []string{deleted, "--public-key", pub}, err: errFailed, out: "FAILED: " + deleted + ":8: seq 9: deleted: seq 8 missing"},
		{name: "reordered", args: []string{swapped}, err: errFailed, out: "FAILED: " + swapped + ":3: seq 4: reordered: comes before seq 3, which is at " + swapped + ":4"},
		{name: "another key", args: []string{path, "--public-key", otherPub}, err: errFailed, out: "seq 12: forged"},
		{name: "no files", args: []string{"--public-key", pub}, err: errUsage},
		{name: "unreadable key", args: []string{path, "--public-key", filepath.Join(dir, "absent.pub")}, err: errFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), append([]string{"logs", "verify"}, tt.args...), &out, &errOut)
			if err != tt.err {
				t.Fatalf("logs verify %q = %v, want %v\nstdout:\n%s\nstderr:\n%s", tt.args, err, tt.err, out.String(), errOut.String())
			}
			if !strings.Contains(out.String(), tt.out) {
				t.Errorf("stdout %q does not contain %q", out.String(), tt.out)
			}
		})
	}
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"logs"}, &out, &errOut); err != errUsage {
		t.Errorf("logs without a subcommand = %v", err)
	}
}

// TestReportThroughGateway drives the sample admin API through the real
// server, then builds the access review from its decision log: the shipped
// policy labels each call with its action.
func TestReportThroughGateway(t *testing.T) {
	e := startSampleEnv(t)
	calls := []struct {
		key          demoKey
		method, path string
		body         string
		status       int
	}{
		{saCI, "POST", "/v1/service-accounts/payments.deployer/keys", `{"ttl_seconds": 3600}`, 201},
		{saCI, "POST", "/v1/service-accounts/payments.deployer/keys", `{"ttl_seconds": 604800}`, 403},
		{saCI, "DELETE", "/v1/service-accounts/payments.deployer", "", 403},
		{saAuditor, "GET", "/v1/service-accounts/payments.deployer", "", 200},
		{saAdmin, "POST", "/v1/service-accounts/billing.exporter/suspend", "", 200},
	}
	for _, c := range calls {
		resp, body := e.do(t, e.gw.URL, c.method, c.path, bearer(c.key), c.body)
		if resp.StatusCode != c.status {
			t.Fatalf("%s %s as %s: %d, want %d: %s", c.method, c.path, c.key.ID, resp.StatusCode, c.status, body)
		}
	}
	e.gw.Stop(t)

	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"logs", "verify", e.gw.LogPath}, &out, &errOut); err != nil {
		t.Fatalf("logs verify of the gateway's log: %v\n%s%s", err, out.String(), errOut.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"report", "--logs", e.gw.LogPath, "--format", "json", "--since", "24h"}, &out, &errOut); err != nil {
		t.Fatalf("report: %v\n%s", err, errOut.String())
	}
	var rep decisionlog.AccessReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, out.String())
	}
	got := map[string]string{}
	for _, id := range rep.Identities {
		for _, c := range id.Calls {
			if len(c.Revisions) != 1 || !strings.HasPrefix(c.Revisions[0], "policies@") {
				t.Errorf("%s %s: revisions %q", id.Subject, c.Action, c.Revisions)
			}
			got[id.Subject+" "+c.Route+" "+c.Action] = fmt.Sprintf("%d/%d", c.Allowed, c.Denied)
		}
	}
	want := map[string]string{
		"payments-ci sampleapi key.create":     "1/1",
		"payments-ci sampleapi account.delete": "0/1",
		"auditor sampleapi account.read":       "1/0",
		"alice sampleapi account.suspend":      "1/0",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("report row %q = %q, want %q (all rows: %v)", k, got[k], v, got)
		}
	}

	out.Reset()
	if err := run(context.Background(), []string{"report", "--writes-only", "--logs", e.gw.LogPath}, &out, &errOut); err != nil {
		t.Fatalf("report csv: %v\n%s", err, errOut.String())
	}
	csv := out.String()
	if !strings.HasPrefix(csv, "subject,identity_method,route,action,allowed,denied,revisions,first_seen,last_seen\n") ||
		!strings.Contains(csv, "payments-ci,api_key,sampleapi,key.create,1,1,policies@") || strings.Contains(csv, "account.read") {
		t.Errorf("csv report:\n%s", csv)
	}
	for _, args := range [][]string{{"report"}, {"report", "--logs", e.gw.LogPath, "--format", "xml"}, {"report", "--logs", e.gw.LogPath, "--since", "yesterday"}} {
		if err := run(context.Background(), args, &out, &errOut); err != errUsage {
			t.Errorf("%q = %v, want the usage error", args, err)
		}
	}
}

// TestDurableLogSIGKILL runs the real binary with durable delivery, kills
// it with SIGKILL under load, restarts it, and checks that every request
// the client got an answer for is in the decision log once the restarted
// gateway has replayed its spool — and that the chain verifies across the
// crash.
func TestDurableLogSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "policygate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	up := newRecorder(t)
	logPath := filepath.Join(dir, "decisions.jsonl")
	cfg := fmt.Sprintf(`server:
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
  path: %s
  delivery: durable
  spool_dir: %s
  fsync: interval
`, repoPath(t, "testdata/security/policy"), up.srv.URL, logPath, filepath.Join(dir, "spool"))
	cfgPath := filepath.Join(dir, "policygate.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addrRE := regexp.MustCompile(`listener=http addr=(\S+)`)
	start := func() (*exec.Cmd, string) {
		t.Helper()
		cmd := exec.Command(bin, "run", "--config", cfgPath)
		stderr, _ := cmd.StderrPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		found := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				if m := addrRE.FindStringSubmatch(sc.Text()); m != nil {
					found <- m[1]
					break
				}
			}
			io.Copy(io.Discard, stderr)
		}()
		select {
		case addr := <-found:
			return cmd, addr
		case <-time.After(startTimeout):
			t.Fatal("no listen address printed")
		}
		return nil, ""
	}

	cmd, addr := start()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var (
		mu    sync.Mutex
		acked []string
	)
	enough := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 5 * time.Second}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, err := client.Get("http://" + addr + "/public/x")
				if err != nil {
					return // the process is gone
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					continue
				}
				mu.Lock()
				acked = append(acked, resp.Header.Get("X-Decision-Id"))
				if len(acked) >= 500 {
					once.Do(func() { close(enough) })
				}
				mu.Unlock()
			}
		}()
	}
	select {
	case <-enough:
	case <-ctx.Done():
		t.Fatal("load did not reach 500 answered requests")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	wg.Wait()

	// The restart replays what the spool holds and the file lacks; a
	// graceful stop then drains it.
	cmd, _ = start()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	raw, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	logged := map[string]int{}
	for _, line := range bytes.Split(raw, []byte("\n")) {
		var ev struct {
			DecisionID string `json:"decision_id"`
		}
		if len(line) > 0 && json.Unmarshal(line, &ev) == nil && ev.DecisionID != "" {
			logged[ev.DecisionID]++
		}
	}
	missing, twice := 0, 0
	for _, id := range acked {
		if logged[id] == 0 {
			missing++
		}
	}
	for _, n := range logged {
		if n > 1 {
			twice++
		}
	}
	t.Logf("%d requests answered before SIGKILL; %d events in the log after the restart", len(acked), len(logged))
	if missing > 0 {
		t.Fatalf("%d answered requests have no event after the restart", missing)
	}
	if twice > 0 {
		t.Errorf("%d events written twice to the file", twice)
	}
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"logs", "verify", logPath}, &out, &errOut); err != nil {
		t.Fatalf("the chain does not verify across the crash: %v\n%s%s", err, out.String(), errOut.String())
	}
}
