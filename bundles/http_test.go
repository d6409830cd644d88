package bundles_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/policygate/policygate/bundles"
)

// TestHTTPETagAndNotModified: the first download activates; later polls
// send the ETag, a 304 downloads and activates nothing; a new ETag
// activates the new revision.
func TestHTTPETagAndNotModified(t *testing.T) {
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, authzFiles("GET"), "r1", nil), etagOf(1))
	act := newActivator()
	reg := prometheus.NewRegistry()
	m := startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{fastHTTP("authz", srv.bundleURL())}}, act, reg)

	waitUntil(t, "r1 active", act.wake, func() bool { return act.revision("authz") == "r1" })
	// Several conditional polls, each answered 304.
	waitUntil(t, "three 304s", srv.wake, func() bool {
		n := 0
		for _, r := range srv.requests() {
			if r.Status == http.StatusNotModified {
				n++
			}
		}
		return n >= 3
	})
	reqs := srv.requests()
	if reqs[0].IfNoneMatch != "" {
		t.Errorf("first request sent If-None-Match %q", reqs[0].IfNoneMatch)
	}
	for _, r := range reqs[1:] {
		if r.IfNoneMatch != etagOf(1) {
			t.Fatalf("poll sent If-None-Match %q, want %s", r.IfNoneMatch, etagOf(1))
		}
		if !strings.Contains(r.Prefer, "modes=snapshot") || strings.Contains(r.Prefer, "wait=") {
			t.Errorf("Prefer %q: want modes=snapshot without wait (long polling is off)", r.Prefer)
		}
	}
	if n, _, _ := act.state(); n != 1 {
		t.Fatalf("%d activations after 304s, want 1", n)
	}
	if !act.allows(t, "GET") || act.allows(t, "DELETE") {
		t.Fatal("r1 decides wrongly")
	}
	st := statusOf(m, "authz")
	if st.Revision != "r1" || st.ETag != etagOf(1) || st.LastDownload == nil || st.LastActivation == nil || st.Error != "" || !m.Ready() {
		t.Fatalf("status %+v, ready %v", st, m.Ready())
	}

	srv.publish(buildBundle(t, authzFiles("GET", "DELETE"), "r2", nil), etagOf(2))
	waitUntil(t, "r2 active", act.wake, func() bool { return act.revision("authz") == "r2" })
	if !act.allows(t, "DELETE") {
		t.Fatal("r2 does not allow DELETE")
	}
	waitUntil(t, "status shows r2", nil, func() bool { return statusOf(m, "authz").ETag == etagOf(2) })
	if got := counter(t, reg, "policygate_bundle_activations_total", map[string]string{"bundle": "authz", "result": "ok"}); got != 2 {
		t.Errorf("activations_total{ok} = %v, want 2", got)
	}
	if got := counter(t, reg, "policygate_bundle_downloads_total", map[string]string{"bundle": "authz", "result": "not_modified"}); got < 3 {
		t.Errorf("downloads_total{not_modified} = %v, want ≥ 3", got)
	}
	if got := counter(t, reg, "policygate_bundle_last_activation_timestamp_seconds", map[string]string{"bundle": "authz"}); got <= 0 {
		t.Errorf("last_activation_timestamp_seconds = %v", got)
	}
}

// TestHTTPServerIgnoresETag: a server that answers every poll with the
// whole bundle does not make the same content activate again (which would
// also drop every cached decision).
func TestHTTPServerIgnoresETag(t *testing.T) {
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, authzFiles("GET"), "r1", nil), etagOf(1))
	srv.setMode("ignore-if-none-match")
	act := newActivator()
	reg := prometheus.NewRegistry()
	startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{fastHTTP("authz", srv.bundleURL())}}, act, reg)
	waitUntil(t, "r1 active", act.wake, func() bool { return act.revision("authz") == "r1" })
	waitUntil(t, "three more full downloads", nil, func() bool {
		return counter(t, reg, "policygate_bundle_downloads_total", map[string]string{"bundle": "authz", "result": "ok"}) >= 4
	})
	if n, _, _ := act.state(); n != 1 {
		t.Fatalf("%d activations of the same content, want 1", n)
	}
}

// TestHTTPFailuresKeepLastGood: whatever goes wrong with a download, the
// last good revision keeps serving and the status says why.
func TestHTTPFailuresKeepLastGood(t *testing.T) {
	tests := []struct {
		mode string
		want string // in the status error
	}{
		{mode: "500", want: "500"},
		{mode: "garbage", want: "gzip"},
		{mode: "truncated", want: "truncated"},
		{mode: "oversized", want: "max_size"},
		{mode: "oversized-chunked", want: "max_size"},
		{mode: "hang", want: "no answer within"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			t.Parallel()
			srv := newBundleServer(t)
			srv.publish(buildBundle(t, authzFiles("GET"), "r1", nil), etagOf(1))
			act := newActivator()
			reg := prometheus.NewRegistry()
			src := fastHTTP("authz", srv.bundleURL())
			src.MaxSize = "128KiB"
			src.Timeout = "300ms"
			m := startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{src}}, act, reg)
			waitUntil(t, "r1 active", act.wake, func() bool { return act.revision("authz") == "r1" })

			srv.setMode(tt.mode)
			waitUntil(t, "the failure in status", nil, func() bool {
				return strings.Contains(statusOf(m, "authz").Error, tt.want)
			})
			// Fail at least twice more: nothing changes in between.
			base := counter(t, reg, "policygate_bundle_failures_total", map[string]string{"bundle": "authz", "stage": stageOf(tt.mode)})
			waitUntil(t, "two more failures", nil, func() bool {
				return counter(t, reg, "policygate_bundle_failures_total", map[string]string{"bundle": "authz", "stage": stageOf(tt.mode)}) >= base+2
			})
			n, failures, revs := act.state()
			if n != 1 || failures != 0 || revs["authz"] != "r1" || !act.allows(t, "GET") {
				t.Fatalf("after %s: %d activations, %d failed, revisions %v; want r1 still serving, nothing activated", tt.mode, n, failures, revs)
			}
			st := statusOf(m, "authz")
			if st.Revision != "r1" || st.ETag != etagOf(1) || st.LastError == "" || st.LastErrorAt == nil {
				t.Fatalf("status %+v", st)
			}

			// Recovery: the next good bundle activates.
			srv.publish(buildBundle(t, authzFiles("GET", "PUT"), "r2", nil), etagOf(2))
			waitUntil(t, "r2 active", act.wake, func() bool { return act.revision("authz") == "r2" })
			waitUntil(t, "status error cleared", nil, func() bool { return statusOf(m, "authz").Error == "" })
		})
	}
}

func stageOf(mode string) string {
	switch mode {
	case "garbage", "truncated":
		return "read"
	default:
		return "download"
	}
}

// TestHTTPETagAfterFailedActivation (FAULTS.md): v2 fails to compile; the
// next poll carries v1's ETag, and the server's 304 activates nothing.
func TestHTTPETagAfterFailedActivation(t *testing.T) {
	srv := newBundleServer(t)
	v1 := buildBundle(t, authzFiles("GET"), "v1", nil)
	srv.publish(v1, etagOf(1))
	act := newActivator()
	m := startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{fastHTTP("authz", srv.bundleURL())}}, act, nil)
	waitUntil(t, "v1 active", act.wake, func() bool { return act.revision("authz") == "v1" })

	broken := authzFiles("GET")
	broken["authz/policy.rego"] = "package authz\n\nallow if undefined_function(input)\n"
	srv.publish(buildBundle(t, broken, "v2", nil), etagOf(2))
	waitUntil(t, "v2 rejected", act.wake, func() bool { _, f, _ := act.state(); return f >= 1 })
	// The server rolls back: v1 is current again.
	srv.publish(v1, etagOf(1))
	mark := len(srv.requests())
	waitUntil(t, "two polls after the rollback", srv.wake, func() bool { return len(srv.requests()) >= mark+2 })

	var sawV2 bool
	for i, r := range srv.requests() {
		if r.ETag == etagOf(2) {
			sawV2 = true
			continue
		}
		if sawV2 && i > 0 && r.IfNoneMatch != etagOf(1) {
			t.Fatalf("request %d after the failed activation sent If-None-Match %q, want v1's %s", i, r.IfNoneMatch, etagOf(1))
		}
	}
	if !sawV2 {
		t.Fatal("v2 was never downloaded")
	}
	last := srv.requests()[len(srv.requests())-1]
	if last.Status != http.StatusNotModified {
		t.Fatalf("last poll answered %d, want 304", last.Status)
	}
	n, _, revs := act.state()
	if n != 1 || revs["authz"] != "v1" {
		t.Fatalf("%d activations, revisions %v: the 304 must not activate and v1 must serve", n, revs)
	}
	st := statusOf(m, "authz")
	if st.Revision != "v1" || st.ETag != etagOf(1) || !strings.Contains(st.LastError, "activate") {
		t.Fatalf("status %+v", st)
	}
}

// TestHTTPLongPolling: once the server advertises long polling, requests
// carry Prefer: wait=N and a new revision arrives without waiting for the
// (here: hour-long) polling delay.
func TestHTTPLongPolling(t *testing.T) {
	srv := newBundleServer(t)
	srv.longPoll = true
	srv.publish(buildBundle(t, authzFiles("GET"), "r1", nil), etagOf(1))
	act := newActivator()
	src := bundles.SourceConfig{
		Name:               "authz",
		URL:                srv.bundleURL(),
		Polling:            bundles.PollingConfig{MinDelay: "1h", MaxDelay: "1h"},
		LongPollingTimeout: "5s",
		Timeout:            "2s",
	}
	startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{src}}, act, nil)
	waitUntil(t, "r1 active", act.wake, func() bool { return act.revision("authz") == "r1" })
	waitUntil(t, "a held long poll", srv.wake, func() bool { return len(srv.requests()) >= 1 })

	// The second request is held by the server until publish.
	start := time.Now()
	srv.publish(buildBundle(t, authzFiles("POST"), "r2", nil), etagOf(2))
	waitUntil(t, "r2 active", act.wake, func() bool { return act.revision("authz") == "r2" })
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("r2 took %v to arrive by long poll", took)
	}
	reqs := srv.requests()
	if len(reqs) < 2 {
		t.Fatalf("requests %+v", reqs)
	}
	if got := reqs[1].Prefer; got != "modes=snapshot;wait=5" {
		t.Fatalf("long poll sent Prefer %q, want modes=snapshot;wait=5", got)
	}
	if reqs[1].IfNoneMatch != etagOf(1) {
		t.Fatalf("long poll sent If-None-Match %q", reqs[1].IfNoneMatch)
	}
}

// TestHTTPBearerToken: the token file is sent, and re-read for each
// download.
func TestHTTPBearerToken(t *testing.T) {
	srv := newBundleServer(t)
	srv.token = "tok-1"
	srv.publish(buildBundle(t, authzFiles("GET"), "r1", nil), etagOf(1))
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte("tok-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	act := newActivator()
	src := fastHTTP("authz", srv.bundleURL())
	src.Credentials.BearerTokenFile = tokFile
	m := startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{src}}, act, nil)
	waitUntil(t, "r1 active", act.wake, func() bool { return act.revision("authz") == "r1" })
	if got := srv.requests()[0].Auth; got != "Bearer tok-1" {
		t.Fatalf("Authorization %q", got)
	}
	// Rotate: the server now wants tok-2; the file follows.
	srv.mu.Lock()
	srv.token = "tok-2"
	srv.mu.Unlock()
	waitUntil(t, "a 401", nil, func() bool { return strings.Contains(statusOf(m, "authz").Error, "401") })
	if err := os.WriteFile(tokFile, []byte("tok-2"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv.publish(buildBundle(t, authzFiles("PUT"), "r2", nil), etagOf(2))
	waitUntil(t, "r2 active", act.wake, func() bool { return act.revision("authz") == "r2" })
}

// TestHTTPMutualTLS: the bundle server requires a client certificate
// signed by its CA; the source presents one and verifies the server with
// the configured CA.
func TestHTTPMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t)
	serverCert := ca.issue(t, "127.0.0.1", false)
	client := ca.issue(t, "policygate", true)
	writePEM := func(name string, blocks ...*pem.Block) string {
		p := filepath.Join(dir, name)
		var out []byte
		for _, b := range blocks {
			out = append(out, pem.EncodeToMemory(b)...)
		}
		if err := os.WriteFile(p, out, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := writePEM("ca.pem", &pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	certFile := writePEM("client.pem", &pem.Block{Type: "CERTIFICATE", Bytes: client.Certificate[0]})
	keyDER, err := x509.MarshalPKCS8PrivateKey(client.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := writePEM("client.key", &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})

	body := buildBundle(t, authzFiles("GET"), "r1", nil)
	peers := make(chan string, 100)
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) > 0 {
			select {
			case peers <- r.TLS.PeerCertificates[0].Subject.CommonName:
			default:
			}
		}
		w.Header().Set("ETag", etagOf(1))
		_, _ = w.Write(body)
	}))
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: tls.VersionTLS12}
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake below is expected
	ts.StartTLS()
	t.Cleanup(ts.Close)

	act := newActivator()
	src := fastHTTP("authz", ts.URL+"/authz.tar.gz")
	src.Polling = bundles.PollingConfig{MinDelay: "1h", MaxDelay: "1h"}
	src.Credentials = bundles.CredentialsConfig{CAFile: caFile, ClientCertFile: certFile, ClientKeyFile: keyFile}
	startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{src}}, act, nil)
	waitUntil(t, "r1 active over mTLS", act.wake, func() bool { return act.revision("authz") == "r1" })
	select {
	case cn := <-peers:
		if cn != "policygate" {
			t.Fatalf("server saw client certificate %q", cn)
		}
	default:
		t.Fatal("server saw no client certificate")
	}

	// Without the client certificate the handshake fails: nothing activates.
	act2 := newActivator()
	src.Name = "authz"
	src.Credentials = bundles.CredentialsConfig{CAFile: caFile}
	m2 := startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{src}}, act2, nil)
	waitUntil(t, "a TLS failure", nil, func() bool { return statusOf(m2, "authz").Error != "" })
	if n, _, _ := act2.state(); n != 0 || m2.Ready() {
		t.Fatalf("activated without a client certificate")
	}
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "policygate test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) issue(t *testing.T, name string, client bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	} else if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
