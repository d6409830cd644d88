package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/policygate/policygate/bundles"
)

// gwPolicy is a bundle rooted at "gw": /public is open while
// data.gw.public_open is true; everything else is denied.
const gwPolicy = `package gw

default decision := {"allow": false, "reason": "denied"}

decision := {"allow": true} if {
	input.request.segments[0] == "public"
	data.gw.public_open
}
`

// gwBundle builds the gw bundle at revision rev.
func gwBundle(t testing.TB, rev string, publicOpen bool, generation int) []byte {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		".manifest":    `{"roots": ["gw"]}`,
		"gw/gw.rego":   gwPolicy,
		"gw/data.json": fmt.Sprintf(`{"public_open": %t, "generation": %d}`, publicOpen, generation),
	}
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := bundles.Build(dir, bundles.BuildOptions{Revision: rev})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := bundles.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// bundleHost is an OPA bundle server on 127.0.0.1 with ETags and long
// polling.
type bundleHost struct {
	*httptest.Server
	mu      sync.Mutex
	body    []byte
	etag    string
	changed chan struct{}
	stop    chan struct{}
}

func newBundleHost(t *testing.T) *bundleHost {
	t.Helper()
	h := &bundleHost{changed: make(chan struct{}), stop: make(chan struct{})}
	h.Server = httptest.NewServer(http.HandlerFunc(h.serve))
	t.Cleanup(h.Close)
	t.Cleanup(func() { close(h.stop) })
	return h
}

func (h *bundleHost) publish(body []byte, etag string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.body, h.etag = body, etag
	close(h.changed)
	h.changed = make(chan struct{})
}

func (h *bundleHost) serve(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	body, etag, changed := h.body, h.etag, h.changed
	h.mu.Unlock()
	inm := r.Header.Get("If-None-Match")
	if inm == etag && strings.Contains(r.Header.Get("Prefer"), "wait=") {
		t := time.NewTimer(5 * time.Second)
		select {
		case <-changed:
		case <-t.C:
		case <-r.Context().Done():
		case <-h.stop:
		}
		t.Stop()
		h.mu.Lock()
		body, etag = h.body, h.etag
		h.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/vnd.openpolicyagent.bundles")
	w.Header().Set("ETag", etag)
	if inm == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	_, _ = w.Write(body)
}

func bundleGatewayConfig(bundleURL, upstream, persistDir string) string {
	return fmt.Sprintf(`server:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
bundles:
  - name: authz
    url: %s
    polling: {min_delay: 20ms, max_delay: 50ms}
    long_polling_timeout: 5s
    timeout: 2s
persistence_dir: %s
routes:
  - name: all
    path_prefix: /
    upstream: %s
    policy: gw/decision
decision_log:
  output: file
  path: LOGFILE
`, bundleURL, persistDir, upstream)
}

func okUpstream(t *testing.T) *httptest.Server {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "upstream") }))
	t.Cleanup(up.Close)
	return up
}

// gatewayStatus reads /v1/status.
func gatewayStatus(t *testing.T, g *gatewayProc) statusDoc {
	t.Helper()
	resp, err := http.Get(g.AdminURL + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc statusDoc
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatalf("/v1/status: %v", err)
	}
	return doc
}

// waitRevision waits until /v1/status shows rev for the authz bundle.
func waitRevision(t *testing.T, g *gatewayProc, rev string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		doc := gatewayStatus(t, g)
		if len(doc.Bundles) == 1 && doc.Bundles[0].Revision == rev {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("revision %s not active within 10s; status %+v", rev, doc)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func getStatus(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("X-Decision-Id")
}

// TestBundleServerRevisions runs the gateway against a bundle server:
// r1 allows /public; r2 denies it and the very next request after /v1/status
// shows r2 is decided by r2 (FAULTS.md "stale after policy change"); then
// 100 reloads under continuous load produce no 5xx and no wrong decision
// (FAULTS.md "swap race").
func TestBundleServerRevisions(t *testing.T) {
	host := newBundleHost(t)
	host.publish(gwBundle(t, "r1", true, 1), `"r1"`)
	g := startGateway(t, bundleGatewayConfig(host.URL+"/bundles/authz.tar.gz", okUpstream(t).URL, t.TempDir()), nil)
	waitRevision(t, g, "r1")
	c := &http.Client{Timeout: 5 * time.Second}
	if code, _ := getStatus(t, c, g.AdminURL+"/ready"); code != http.StatusOK {
		t.Fatalf("/ready = %d after r1", code)
	}
	if code, _ := getStatus(t, c, g.URL+"/public/x"); code != http.StatusOK {
		t.Fatalf("r1: GET /public/x = %d, want 200", code)
	}

	host.publish(gwBundle(t, "r2", false, 2), `"r2"`)
	waitRevision(t, g, "r2")
	code, id := getStatus(t, c, g.URL+"/public/x")
	if code != http.StatusForbidden {
		t.Fatalf("the first request after r2 = %d, want 403", code)
	}
	if rev := at(g.WaitEvent(t, id), "bundles", "authz", "revision"); rev != "r2" {
		t.Fatalf("decision log revision %v, want r2", rev)
	}
	st := gatewayStatus(t, g).Bundles[0]
	if st.LastDownload == nil || st.LastActivation == nil || st.ETag != `"r2"` || st.Type != "url" {
		t.Fatalf("status %+v", st)
	}

	// 100 reloads under continuous load.
	host.publish(gwBundle(t, "g0", true, 0), `"g0"`)
	waitRevision(t, g, "g0")
	var total, bad atomic.Int64
	var firstBad atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				path, want := "/public/x", http.StatusOK
				if i%2 == 1 {
					path, want = "/admin/x", http.StatusForbidden
				}
				resp, err := c.Get(g.URL + path)
				total.Add(1)
				if err != nil {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, err.Error())
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, fmt.Sprintf("%s = %d", path, resp.StatusCode))
				}
			}
		}()
	}
	start := time.Now()
	for i := 1; i <= 100; i++ {
		rev := fmt.Sprintf("g%d", i)
		host.publish(gwBundle(t, rev, true, i), `"`+rev+`"`)
		waitRevision(t, g, rev)
	}
	close(stop)
	wg.Wait()
	t.Logf("100 reloads in %v under %d requests", time.Since(start), total.Load())
	if bad.Load() != 0 {
		t.Fatalf("%d of %d requests failed or were decided wrongly during reloads; first: %v", bad.Load(), total.Load(), firstBad.Load())
	}
	if total.Load() < 100 {
		t.Fatalf("only %d requests during the reloads: not under load", total.Load())
	}

	resp, err := c.Get(g.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`policygate_bundle_activations_total{bundle="authz",result="ok"} 103`,
		`policygate_bundle_downloads_total{bundle="authz",result="ok"}`,
		`policygate_bundle_last_activation_timestamp_seconds{bundle="authz"}`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestBundleStartWithoutServer: nothing persisted and nothing reachable
// means not ready and deny; once a bundle was persisted, a restart with the
// server down serves it.
func TestBundleStartWithoutServer(t *testing.T) {
	persist := t.TempDir()
	up := okUpstream(t)
	c := &http.Client{Timeout: 5 * time.Second}

	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + ln.Addr().String() + "/bundles/authz.tar.gz"
	ln.Close()
	g := startGateway(t, bundleGatewayConfig(deadURL, up.URL, persist), nil)
	deadline := time.Now().Add(10 * time.Second)
	for gatewayStatus(t, g).Bundles[0].Error == "" {
		if time.Now().After(deadline) {
			t.Fatal("no download error in status")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if code, _ := getStatus(t, c, g.AdminURL+"/ready"); code != http.StatusServiceUnavailable {
		t.Fatalf("/ready = %d with no bundle, want 503", code)
	}
	resp, err := c.Get(g.URL + "/public/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "not_ready") {
		t.Fatalf("request without a policy = %d %s, want 503 not_ready", resp.StatusCode, body)
	}
	if doc := gatewayStatus(t, g); doc.Ready {
		t.Fatalf("status %+v reports ready", doc)
	}
	g.Stop(t)

	// A server that comes and goes: the bundle persists.
	host := newBundleHost(t)
	host.publish(gwBundle(t, "p1", true, 1), `"p1"`)
	url := host.URL + "/bundles/authz.tar.gz"
	g = startGateway(t, bundleGatewayConfig(url, up.URL, persist), nil)
	waitRevision(t, g, "p1")
	g.Stop(t)
	host.Close()

	g = startGateway(t, bundleGatewayConfig(url, up.URL, persist), nil)
	waitRevision(t, g, "p1")
	if code, _ := getStatus(t, c, g.URL+"/public/x"); code != http.StatusOK {
		t.Fatalf("persisted p1: GET /public/x = %d, want 200", code)
	}
	if st := gatewayStatus(t, g).Bundles[0]; !st.Persisted {
		t.Fatalf("status %+v does not say the persisted copy serves", st)
	}
}

// TestBundleCLI builds and signs a bundle, inspects and verifies it, and
// checks a configuration serving it from a file: check verifies the
// signature offline.
func TestBundleCLI(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := filepath.Join(dir, "policy")
	for name, content := range map[string]string{
		".manifest":       `{"roots": ["gw"]}`,
		"gw/gw.rego":      gwPolicy,
		"gw/gw_test.rego": "package gw_test\n\ntest_x if true\n",
		"gw/data.json":    `{"public_open": true}`,
	} {
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	priv, pub := writeTestKeys(t, dir, "test-signing")
	_, otherPub := writeTestKeys(t, dir, "test-other")
	out := filepath.Join(dir, "authz.tar.gz")

	var stdout, stderr bytes.Buffer
	if err := run(ctx, []string{"bundle", "build", src, "-o", out, "--signing-key", priv, "--revision", "cli-1"}, &stdout, &stderr); err != nil {
		t.Fatalf("bundle build: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "revision cli-1") || !strings.Contains(stdout.String(), "signed") {
		t.Errorf("bundle build said %q", stdout.String())
	}

	stdout.Reset()
	if err := run(ctx, []string{"bundle", "inspect", "--verification-key", pub, out}, &stdout, &stderr); err != nil {
		t.Fatalf("bundle inspect: %v\n%s", err, stderr.String())
	}
	var info bundles.Info
	if err := json.Unmarshal(stdout.Bytes(), &info); err != nil {
		t.Fatalf("inspect output %q: %v", stdout.String(), err)
	}
	if info.Revision != "cli-1" || !info.Signed || !info.Verified || len(info.Modules) != 1 {
		t.Fatalf("inspect: %+v", info)
	}
	stderr.Reset()
	if err := run(ctx, []string{"bundle", "inspect", "--verification-key", otherPub, out}, io.Discard, &stderr); err == nil {
		t.Fatal("inspect verified a bundle with the wrong key")
	}
	if err := run(ctx, []string{"bundle", "inspect", out}, io.Discard, io.Discard); err != nil {
		t.Fatalf("inspect without a key: %v", err)
	}

	config := func(pubKey string) string {
		p := filepath.Join(dir, "policygate.yaml")
		cfg := fmt.Sprintf(`server:
  listen: 127.0.0.1:0
bundles:
  - name: authz
    file: %s
    signing:
      public_key_file: %s
routes:
  - name: all
    path_prefix: /
    upstream: http://127.0.0.1:1
    policy: gw/decision
`, out, pubKey)
		if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stdout.Reset()
	stderr.Reset()
	if err := run(ctx, []string{"check", "--config", config(pub)}, &stdout, &stderr); err != nil {
		t.Fatalf("check: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "ok") || !strings.Contains(stdout.String(), "cli-1") {
		t.Errorf("check said %q", stdout.String())
	}
	stderr.Reset()
	if err := run(ctx, []string{"check", "--config", config(otherPub)}, io.Discard, &stderr); err == nil {
		t.Fatal("check accepted a bundle signed by another key")
	}
	if !strings.Contains(stderr.String(), "authz") {
		t.Errorf("check error %q does not name the bundle", stderr.String())
	}

	// An unsigned build of the same directory is refused by the signed
	// configuration.
	if err := run(ctx, []string{"bundle", "build", src, "-o", out}, io.Discard, &stderr); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	if err := run(ctx, []string{"check", "--config", config(pub)}, io.Discard, &stderr); err == nil || !strings.Contains(stderr.String(), "signatures") {
		t.Fatalf("check of an unsigned bundle = %v %q", err, stderr.String())
	}
}

// writeTestKeys writes a fresh RSA key pair for tests (never a real key).
func writeTestKeys(t *testing.T, dir, name string) (priv, pub string) {
	t.Helper()
	k, err := rsaTestKey()
	if err != nil {
		t.Fatal(err)
	}
	priv, pub = filepath.Join(dir, name+".key.pem"), filepath.Join(dir, name+".pub.pem")
	if err := os.WriteFile(priv, k.priv, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pub, k.pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

type pemPair struct{ priv, pub []byte }

func rsaTestKey() (pemPair, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return pemPair{}, err
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return pemPair{}, err
	}
	return pemPair{
		priv: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}),
		pub:  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
	}, nil
}
