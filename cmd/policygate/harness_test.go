package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/policygate/policygate/gateway/authn"
)

// syncBuffer is an io.Writer the gateway writes to while a test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// gatewayProc is a gateway started in-process through run(), the same
// entry point main uses.
type gatewayProc struct {
	URL      string // http://127.0.0.1:port of the proxy listener
	AdminURL string
	// ForwardAuthURL and ExtAuthzAddr are set when those front doors are
	// configured.
	ForwardAuthURL string
	ExtAuthzAddr   string
	TLSURL         string
	LogPath        string // decision log file
	Stderr         *syncBuffer
	Stdout         *syncBuffer
	cancel         context.CancelFunc
	done           chan error
}

var listenRE = regexp.MustCompile(`msg=listening listener=(\w+) addr=(\S+)`)

const startTimeout = 30 * time.Second

// startGateway writes cfg (YAML; "LOGFILE" is replaced by a temp path) to a
// temp dir next to any extra files, runs the gateway and waits until every
// listener is up. The gateway is stopped (gracefully) at cleanup.
func startGateway(t testing.TB, cfg string, files map[string]string) *gatewayProc {
	t.Helper()
	dir := t.TempDir()
	g := &gatewayProc{LogPath: filepath.Join(dir, "decisions.jsonl"), Stderr: &syncBuffer{}, Stdout: &syncBuffer{}, done: make(chan error, 1)}
	cfg = strings.ReplaceAll(cfg, "LOGFILE", g.LogPath)
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "policygate.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go func() { g.done <- run(ctx, []string{"run", "--config", path}, g.Stdout, g.Stderr) }()
	t.Cleanup(func() { g.Stop(t) })
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-g.done:
			g.done <- err
			t.Fatalf("gateway exited during start: %v\n%s", err, g.Stderr.String())
		default:
		}
		out := g.Stderr.String()
		if strings.Contains(out, "policygate started") {
			for _, m := range listenRE.FindAllStringSubmatch(out, -1) {
				switch m[1] {
				case "http":
					g.URL = "http://" + m[2]
				case "admin":
					g.AdminURL = "http://" + m[2]
				case "https":
					g.TLSURL = "https://" + m[2]
				case "forward_auth":
					g.ForwardAuthURL = "http://" + m[2]
				case "ext_authz":
					g.ExtAuthzAddr = m[2]
				}
			}
			return g
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("gateway did not start within %v:\n%s", startTimeout, g.Stderr.String())
	return nil
}

// Stop shuts the gateway down as SIGTERM would and waits for it.
func (g *gatewayProc) Stop(t testing.TB) {
	t.Helper()
	if g.cancel == nil {
		return
	}
	g.cancel()
	g.cancel = nil
	select {
	case err := <-g.done:
		if err != nil {
			t.Errorf("gateway exited with %v", err)
		}
	case <-time.After(startTimeout):
		t.Errorf("gateway did not stop within %v", startTimeout)
	}
}

// StopErr stops the gateway and returns its exit error, for tests that
// expect one.
func (g *gatewayProc) StopErr() error {
	if g.cancel == nil {
		return nil
	}
	g.cancel()
	g.cancel = nil
	select {
	case err := <-g.done:
		return err
	case <-time.After(startTimeout):
		return fmt.Errorf("gateway did not stop within %v", startTimeout)
	}
}

// Events reads the decision log file.
func (g *gatewayProc) Events(t *testing.T) []map[string]any {
	t.Helper()
	f, err := os.Open(g.LogPath)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		t.Fatal(err)
	}
	defer f.Close()
	var evs []map[string]any
	rd := bufio.NewReaderSize(f, 1<<20)
	for {
		line, err := rd.ReadBytes('\n')
		if err != nil {
			// A last line without its newline is still being written:
			// the next read sees it whole.
			break
		}
		var ev map[string]any
		if err := json.Unmarshal(line, &ev); err != nil {
			t.Fatalf("decision log line is not JSON: %v: %q", err, line)
		}
		evs = append(evs, ev)
	}
	return evs
}

// WaitEvent waits until the decision log holds the event for id (the log
// flushes on a short interval) and returns it.
func (g *gatewayProc) WaitEvent(t *testing.T, id string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, ev := range g.Events(t) {
			if ev["decision_id"] == id {
				return ev
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("no decision event %s in %s", id, g.LogPath)
	return nil
}

// demoKey is an API key for tests: the secret and its config entry.
type demoKey struct{ ID, Secret, Groups string }

func (k demoKey) yaml() string {
	return fmt.Sprintf("    - id: %s\n      sha256: %s\n      groups: [%s]\n", k.ID, authn.HashKey(k.Secret), k.Groups)
}

// at walks a decoded JSON document by keys.
func at(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// repoPath returns a path relative to the repository root.
func repoPath(t testing.TB, rel string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func basicAuth(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}
