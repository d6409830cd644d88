package bundles_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/policygate/policygate/bundles"
	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/decision/rego"
)

// waitTimeout bounds every wait in these tests.
const waitTimeout = 10 * time.Second

// waitUntil waits until cond holds, checking after each event on wake (or
// every few milliseconds), and fails the test after waitTimeout.
func waitUntil(t testing.TB, what string, wake <-chan struct{}, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-wake:
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
	}
}

// testKey is an RSA key pair generated for one test; the PEM files live in
// the test's temp dir.
type testKey struct {
	Private, Public string // file paths
}

func newTestKey(t testing.TB) testKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	priv := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	pubDER, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	tk := testKey{Private: filepath.Join(dir, "test-signing-key.pem"), Public: filepath.Join(dir, "test-signing-key.pub.pem")}
	if err := os.WriteFile(tk.Private, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tk.Public, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return tk
}

// writeTree writes files (slash path → content) under dir.
func writeTree(t testing.TB, dir string, files map[string]string) string {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// authzFiles is a bundle rooted at "authz" whose decision allows the
// methods listed in its data.
func authzFiles(methods ...string) map[string]string {
	quoted := make([]string, len(methods))
	for i, m := range methods {
		quoted[i] = strconv.Quote(m)
	}
	return map[string]string{
		".manifest":              `{"roots": ["authz"]}`,
		"authz/policy.rego":      "package authz\n\nimport data.authz.lib\n\ndefault allow := false\n\nallow if lib.method_ok\n",
		"authz/lib/lib.rego":     "package authz.lib\n\nmethod_ok if input.request.method in data.authz.methods\n",
		"authz/data.json":        `{"methods": [` + strings.Join(quoted, ", ") + `]}`,
		"authz/policy_test.rego": "package authz_test\n\ntest_x if true\n",
	}
}

// buildBundle builds files into a gzipped bundle with the given revision,
// signed with key when key is non-nil.
func buildBundle(t testing.TB, files map[string]string, revision string, key *testKey) []byte {
	t.Helper()
	dir := writeTree(t, t.TempDir(), files)
	opts := bundles.BuildOptions{Revision: revision}
	if key != nil {
		opts.SigningKey = key.Private
	}
	b, err := bundles.Build(dir, opts)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	raw, err := bundles.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// tarEntry is one file in a hand-made archive.
type tarEntry struct {
	Name string
	Body []byte
}

// readTar lists the regular files of a gzipped tarball in archive order.
func readTar(t testing.TB, raw []byte) []tarEntry {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var out []tarEntry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{Name: h.Name, Body: body})
	}
}

// writeTar writes entries, in order, as a gzipped tarball.
func writeTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Name: e.Name, Mode: 0o644, Size: int64(len(e.Body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.Body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// activator is the real thing: it compiles the set with decision/rego and
// keeps the policy it would serve.
type activator struct {
	paths []string
	wake  chan struct{}

	mu       sync.Mutex
	policy   *rego.Policy
	count    int // successful activations
	failures int
	lastErr  error
	sets     []map[string]string // revisions of every successful activation
}

func newActivator(paths ...string) *activator {
	if len(paths) == 0 {
		paths = []string{"data.authz.allow"}
	}
	return &activator{paths: paths, wake: make(chan struct{}, 1)}
}

func (a *activator) Activate(ctx context.Context, set map[string]*bundle.Bundle) (map[string]string, error) {
	p, err := rego.CompileBundles(ctx, set, a.paths)
	a.mu.Lock()
	if err != nil {
		a.failures++
		a.lastErr = err
	} else {
		a.policy = p
		a.count++
		a.sets = append(a.sets, p.Bundles())
	}
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	if err != nil {
		return nil, err
	}
	return p.Bundles(), nil
}

func (a *activator) state() (count, failures int, revs map[string]string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.policy != nil {
		revs = a.policy.Bundles()
	}
	return a.count, a.failures, revs
}

// revision is the active revision of bundle name ("" when none).
func (a *activator) revision(name string) string {
	_, _, revs := a.state()
	return revs[name]
}

// allows evaluates the active policy for a request with method.
func (a *activator) allows(t testing.TB, method string) bool {
	t.Helper()
	a.mu.Lock()
	p := a.policy
	a.mu.Unlock()
	if p == nil {
		t.Fatal("no policy active")
	}
	v, defined, err := p.Eval(context.Background(), a.paths[0], &decision.Input{Request: decision.Request{Method: method}})
	if err != nil || !defined {
		t.Fatalf("Eval = %v, %v, %v", v, defined, err)
	}
	return v == true
}

// seen is one request the bundle server received.
type seen struct {
	IfNoneMatch, Prefer, Auth string
	Status                    int
	ETag                      string // sent with a 200
}

// bundleServer is an OPA bundle server on 127.0.0.1: ETag, 304, optional
// long polling, and failure modes.
type bundleServer struct {
	*httptest.Server
	stop chan struct{}

	mu       sync.Mutex
	body     []byte
	etag     string
	mode     string // "" serves the bundle; see handle for the others
	longPoll bool
	token    string // required bearer token when set
	changed  chan struct{}
	reqs     []seen
	wake     chan struct{}
}

func newBundleServer(t testing.TB) *bundleServer {
	t.Helper()
	s := &bundleServer{stop: make(chan struct{}), changed: make(chan struct{}), wake: make(chan struct{}, 1)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.handle))
	t.Cleanup(s.Close)
	t.Cleanup(func() { close(s.stop) }) // runs first: releases held requests
	return s
}

// URL of the bundle.
func (s *bundleServer) bundleURL() string { return s.Server.URL + "/bundles/authz.tar.gz" }

// publish serves body under etag from now on and wakes long polls.
func (s *bundleServer) publish(body []byte, etag string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body, s.etag, s.mode = body, etag, ""
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *bundleServer) setMode(mode string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mode = mode
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *bundleServer) requests() []seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seen(nil), s.reqs...)
}

func (s *bundleServer) record(r seen) {
	s.mu.Lock()
	s.reqs = append(s.reqs, r)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *bundleServer) handle(w http.ResponseWriter, r *http.Request) {
	req := seen{IfNoneMatch: r.Header.Get("If-None-Match"), Prefer: r.Header.Get("Prefer"), Auth: r.Header.Get("Authorization")}
	s.mu.Lock()
	body, etag, mode, longPoll, token, changed := s.body, s.etag, s.mode, s.longPoll, s.token, s.changed
	s.mu.Unlock()
	if token != "" && req.Auth != "Bearer "+token {
		req.Status = http.StatusUnauthorized
		s.record(req)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	switch mode {
	case "500":
		req.Status = 500
		s.record(req)
		http.Error(w, "boom", http.StatusInternalServerError)
		return
	case "garbage":
		req.Status, req.ETag = 200, `"garbage"`
		s.record(req)
		w.Header().Set("ETag", req.ETag)
		_, _ = w.Write([]byte("this is not a tarball at all, just words\n"))
		return
	case "truncated":
		req.Status, req.ETag = 200, `"truncated"`
		s.record(req)
		w.Header().Set("ETag", req.ETag)
		_, _ = w.Write(body[:len(body)/2])
		return
	case "oversized", "oversized-chunked":
		req.Status, req.ETag = 200, `"oversized"`
		s.record(req)
		w.Header().Set("ETag", req.ETag)
		big := bytes.Repeat([]byte("x"), 4096)
		if mode == "oversized" {
			w.Header().Set("Content-Length", strconv.Itoa(len(big)*64))
		}
		for i := 0; i < 64; i++ {
			if _, err := w.Write(big); err != nil {
				return
			}
			if f, ok := w.(http.Flusher); ok && mode == "oversized-chunked" {
				f.Flush()
			}
		}
		return
	case "hang":
		req.Status = 0
		s.record(req)
		select {
		case <-r.Context().Done():
		case <-s.stop:
		}
		return
	}
	if mode == "ignore-if-none-match" {
		req.IfNoneMatch = ""
	}
	if req.IfNoneMatch != "" && req.IfNoneMatch == etag && longPoll {
		if wait, ok := preferWait(req.Prefer); ok {
			timer := time.NewTimer(wait)
			select {
			case <-changed:
			case <-timer.C:
			case <-r.Context().Done():
			case <-s.stop:
			}
			timer.Stop()
			s.mu.Lock()
			body, etag = s.body, s.etag
			s.mu.Unlock()
		}
	}
	if longPoll {
		w.Header().Set("Content-Type", "application/vnd.openpolicyagent.bundles")
	} else {
		w.Header().Set("Content-Type", "application/gzip")
	}
	if req.IfNoneMatch != "" && req.IfNoneMatch == etag {
		req.Status = http.StatusNotModified
		s.record(req)
		w.Header().Set("ETag", etag)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	if body == nil {
		req.Status = http.StatusNotFound
		s.record(req)
		http.NotFound(w, r)
		return
	}
	req.Status, req.ETag = 200, etag
	s.record(req)
	w.Header().Set("ETag", etag)
	_, _ = w.Write(body)
}

func preferWait(prefer string) (time.Duration, bool) {
	for _, p := range strings.Split(prefer, ";") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(p), "wait="); ok {
			n, err := strconv.Atoi(v)
			return time.Duration(n) * time.Second, err == nil
		}
	}
	return 0, false
}

// startManager runs a Manager until the test ends.
func startManager(t testing.TB, cfg bundles.Config, act bundles.Activator, reg prometheus.Registerer) *bundles.Manager {
	t.Helper()
	m, err := bundles.New(cfg, act, bundles.Options{Registerer: reg})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(context.Background()) }()
	t.Cleanup(func() {
		m.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("Run did not return after Close")
		}
	})
	return m
}

// fastHTTP is an HTTP source that polls every few milliseconds.
func fastHTTP(name, url string) bundles.SourceConfig {
	return bundles.SourceConfig{
		Name:    name,
		URL:     url,
		Polling: bundles.PollingConfig{MinDelay: "5ms", MaxDelay: "15ms"},
		Timeout: "2s",
	}
}

func statusOf(m *bundles.Manager, name string) bundles.Status {
	for _, s := range m.Status() {
		if s.Name == name {
			return s
		}
	}
	return bundles.Status{}
}

// counter reads a counter or gauge from reg by name and labels.
func counter(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			if !maps.Equal(got, labels) {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
		}
	}
	return 0
}

func etagOf(i int) string { return fmt.Sprintf(`"e%d"`, i) }
