package log_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
	decisionlog "github.com/policygate/policygate/decision/log"
)

// bound is how long a test waits for something that should happen at once.
const bound = 10 * time.Second

// reqEvent is a decision event for a call of method path by subject.
func reqEvent(id, subject, method, path string, allow bool) *decision.Event {
	segs := strings.FieldsFunc(path, func(r rune) bool { return r == '/' })
	ident := decision.Anonymous()
	if subject != "" {
		ident = decision.Identity{Authenticated: true, Method: decision.MethodAPIKey, Subject: subject, Groups: []string{}, Claims: map[string]any{}}
	}
	in := &decision.Input{
		Request:  decision.Request{ID: id, Method: method, Path: path, RawPath: path, Segments: segs, Headers: map[string]string{"user-agent": "test"}, Query: map[string][]string{}},
		Identity: ident,
		Route:    decision.Route{Name: "admin"},
	}
	outcome := decision.OutcomeDeny
	if allow {
		outcome = decision.OutcomeAllow
	}
	d := &decision.Decision{
		ID: id, Path: "data.gate.decision", Input: in, Timestamp: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Result:  decision.Result{Allow: allow, Outcome: outcome},
		Bundles: map[string]string{"policies": "r1"},
	}
	status := 403
	if allow {
		status = 200
	}
	return decision.NewEvent(d, decision.Completion{Status: status})
}

func simpleEvent(id string) *decision.Event { return reqEvent(id, "ci", "POST", "/admin/users", false) }

// mustNew starts a logger and closes it at cleanup (a second Close is a
// no-op).
func mustNew(t testing.TB, cfg decisionlog.Config, opts decisionlog.Options) *decisionlog.Logger {
	t.Helper()
	l, err := decisionlog.New(cfg, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func logAll(t testing.TB, l *decisionlog.Logger, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := l.Log(context.Background(), simpleEvent(id)); err != nil {
			t.Fatalf("Log(%s): %v", id, err)
		}
	}
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = prefix + strings.Repeat("0", 5-len(itoa(i))) + itoa(i)
	}
	return out
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}

// fileLines reads a file's lines (without newlines).
func fileLines(t testing.TB, path string) [][]byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return splitLines(raw)
}

func splitLines(raw []byte) [][]byte {
	var out [][]byte
	for _, l := range bytes.Split(raw, []byte("\n")) {
		if len(l) > 0 {
			out = append(out, l)
		}
	}
	return out
}

func writeLines(t testing.TB, path string, lines [][]byte) {
	t.Helper()
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// eventIDs returns the decision ids of the event lines in raw, in order,
// skipping checkpoints.
func eventIDs(t testing.TB, raw []byte) []string {
	t.Helper()
	var out []string
	for _, l := range splitLines(raw) {
		var ev struct {
			DecisionID string          `json:"decision_id"`
			Checkpoint json.RawMessage `json:"checkpoint"`
		}
		if err := json.Unmarshal(l, &ev); err != nil {
			t.Fatalf("line is not JSON: %v: %q", err, l)
		}
		if ev.Checkpoint == nil {
			out = append(out, ev.DecisionID)
		}
	}
	return out
}

// logFiles lists the rotated files and the live file of path.
func logFiles(t testing.TB, path string) []string {
	t.Helper()
	ext := filepath.Ext(path)
	rotated, err := filepath.Glob(strings.TrimSuffix(path, ext) + "-*" + ext)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(rotated)
	return append(rotated, path)
}

// keyPair writes an Ed25519 key pair as PEM files in dir.
func keyPair(t testing.TB, dir, name string) (privPath, pubPath string, pub ed25519.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	privPath, pubPath = filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
	if err := os.WriteFile(privPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pk}), 0o600); err != nil {
		t.Fatal(err)
	}
	return privPath, pubPath, pub
}

// safeBuffer is a concurrency-safe io.Writer.
type safeBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *safeBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// collector is a decision-log collector speaking OPA's upload API on
// 127.0.0.1. It can be taken down (connections refused) and brought back
// on the same address.
type collector struct {
	t    testing.TB
	addr string
	// status, when set, answers every upload with this status.
	status func(events int) int

	mu       sync.Mutex
	srv      *http.Server
	seen     map[string]int // decision id → times received
	bodies   [][]byte       // decompressed bodies
	requests int
	bad      []string // protocol violations
	got      chan struct{}
}

func newCollector(t testing.TB) *collector {
	c := &collector{t: t, seen: map[string]int{}, got: make(chan struct{}, 1)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	c.serve(ln)
	t.Cleanup(c.down)
	return c
}

func (c *collector) URL() string { return "http://" + c.addr + "/logs" }

func (c *collector) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(c.handle), ReadHeaderTimeout: 5 * time.Second}
	c.mu.Lock()
	c.srv = srv
	c.mu.Unlock()
	go srv.Serve(ln)
}

// down stops listening, as a collector being restarted does: uploads in
// flight are answered, new ones are refused.
func (c *collector) down() {
	c.mu.Lock()
	srv := c.srv
	c.srv = nil
	c.mu.Unlock()
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
	}
}

// up listens on the same address again.
func (c *collector) up() {
	deadline := time.Now().Add(bound)
	for {
		ln, err := net.Listen("tcp", c.addr)
		if err == nil {
			c.serve(ln)
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("collector cannot listen on %s again: %v", c.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *collector) handle(w http.ResponseWriter, r *http.Request) {
	var problems []string
	if r.Method != http.MethodPost || r.URL.Path != "/logs" {
		problems = append(problems, "request "+r.Method+" "+r.URL.Path)
	}
	if r.Header.Get("Content-Encoding") != "gzip" || r.Header.Get("Content-Type") != "application/json" {
		problems = append(problems, "headers "+r.Header.Get("Content-Encoding")+" "+r.Header.Get("Content-Type"))
	}
	var body []byte
	zr, err := gzip.NewReader(r.Body)
	if err == nil {
		body, err = io.ReadAll(zr)
	}
	var events []map[string]any
	if err == nil {
		err = json.Unmarshal(body, &events)
	}
	if err != nil {
		problems = append(problems, "body: "+err.Error())
	}
	status := http.StatusOK
	if c.status != nil {
		status = c.status(len(events))
	}
	c.mu.Lock()
	c.requests++
	c.bad = append(c.bad, problems...)
	if status == http.StatusOK && len(problems) == 0 {
		c.bodies = append(c.bodies, body)
		for _, ev := range events {
			id, _ := ev["decision_id"].(string)
			if id == "" {
				c.bad = append(c.bad, "event without decision_id")
			}
			c.seen[id]++
		}
	}
	c.mu.Unlock()
	select {
	case c.got <- struct{}{}:
	default:
	}
	w.WriteHeader(status)
}

// waitFor waits until every id in want was received, or fails after d.
func (c *collector) waitFor(want []string, d time.Duration) {
	c.t.Helper()
	deadline := time.After(d)
	for {
		if c.missing(want) == 0 {
			return
		}
		select {
		case <-c.got:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			c.t.Fatalf("collector still misses %d of %d events after %v", c.missing(want), len(want), d)
		}
	}
}

func (c *collector) missing(want []string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, id := range want {
		if c.seen[id] == 0 {
			n++
		}
	}
	return n
}

func (c *collector) duplicates() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.seen {
		if k > 1 {
			n += k - 1
		}
	}
	return n
}

func (c *collector) problems() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.bad...)
}

func (c *collector) allBodies() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Join(c.bodies, []byte("\n"))
}

// waitUntil polls cond (cheap, in-memory) until it holds or d passes.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
