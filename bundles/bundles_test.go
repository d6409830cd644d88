package bundles_test

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/policygate/policygate/bundles"
)

// TestSignatures (FAULTS.md "signature rules"): with a signing key
// configured, an unsigned, tampered, extra-file, missing-file or
// wrong-key bundle is rejected and the last good revision stays active.
func TestSignatures(t *testing.T) {
	key, other := newTestKey(t), newTestKey(t)
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, authzFiles("GET"), "r1", &key), etagOf(1))
	act := newActivator()
	reg := prometheus.NewRegistry()
	src := fastHTTP("authz", srv.bundleURL())
	src.Signing = &bundles.SigningConfig{PublicKeyFile: key.Public}
	m := startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{src}}, act, reg)
	waitUntil(t, "signed r1 active", act.wake, func() bool { return act.revision("authz") == "r1" })

	signed := buildBundle(t, authzFiles("GET", "DELETE"), "r2", &key)
	edit := func(f func([]tarEntry) []tarEntry) []byte { return writeTar(t, f(readTar(t, signed))) }
	tests := []struct {
		name string
		body []byte
		want string
	}{
		{name: "unsigned", body: buildBundle(t, authzFiles("GET", "DELETE"), "r2", nil), want: "missing .signatures.json"},
		{name: "wrong key", body: buildBundle(t, authzFiles("GET", "DELETE"), "r2", &other), want: "verify"},
		{name: "tampered module", body: edit(func(es []tarEntry) []tarEntry {
			for i := range es {
				if strings.HasSuffix(es[i].Name, "lib.rego") {
					es[i].Body = []byte("package authz.lib\n\nmethod_ok := true\n")
				}
			}
			return es
		}), want: "digest mismatch"},
		{name: "tampered data", body: edit(func(es []tarEntry) []tarEntry {
			for i := range es {
				if strings.HasSuffix(es[i].Name, "data.json") {
					es[i].Body = []byte(`{"authz": {"methods": ["GET", "DELETE", "POST"]}}`)
				}
			}
			return es
		}), want: "digest mismatch"},
		{name: "extra module", body: edit(func(es []tarEntry) []tarEntry {
			return append(es, tarEntry{Name: "/authz/backdoor.rego", Body: []byte("package authz\n\nallow if input.request.method == \"POST\"\n")})
		}), want: "not included in bundle signature"},
		{name: "extra data file", body: edit(func(es []tarEntry) []tarEntry {
			return append(es, tarEntry{Name: "/authz/more/data.json", Body: []byte(`{"x": 1}`)})
		}), want: "not included in bundle signature"},
		{name: "signed file removed", body: edit(func(es []tarEntry) []tarEntry {
			return slices.DeleteFunc(es, func(e tarEntry) bool { return strings.HasSuffix(e.Name, "lib.rego") })
		}), want: "not found in the target bundle"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv.publish(tt.body, etagOf(100+i))
			// Failures of the previous case repeat until the new body is
			// served; count from there.
			waitUntil(t, "the new body served", srv.wake, func() bool {
				return slices.ContainsFunc(srv.requests(), func(r seen) bool { return r.ETag == etagOf(100+i) })
			})
			before := counter(t, reg, "policygate_bundle_failures_total", map[string]string{"bundle": "authz", "stage": "read"})
			waitUntil(t, "the bundle rejected", nil, func() bool {
				return counter(t, reg, "policygate_bundle_failures_total", map[string]string{"bundle": "authz", "stage": "read"}) > before
			})
			if st := statusOf(m, "authz"); !strings.Contains(st.LastError, tt.want) {
				t.Errorf("status error %q does not contain %q", st.LastError, tt.want)
			}
			n, _, revs := act.state()
			if n != 1 || revs["authz"] != "r1" || act.allows(t, "DELETE") {
				t.Fatalf("%d activations, revisions %v: the %s bundle must not activate", n, revs, tt.name)
			}
		})
	}
	srv.publish(signed, etagOf(2))
	waitUntil(t, "signed r2 active", act.wake, func() bool { return act.revision("authz") == "r2" })
}

// TestPersistence: the last good download survives a restart; a restart
// while the server is down serves it; with nothing persisted and nothing
// reachable the manager is not ready.
func TestPersistence(t *testing.T) {
	key := newTestKey(t)
	pdir := filepath.Join(t.TempDir(), "state")
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, authzFiles("GET"), "r1", &key), etagOf(1))
	src := fastHTTP("authz", srv.bundleURL())
	src.Signing = &bundles.SigningConfig{PublicKeyFile: key.Public}
	cfg := bundles.Config{Bundles: []bundles.SourceConfig{src}, PersistenceDir: pdir}

	run := func(t *testing.T, cfg bundles.Config) (*bundles.Manager, *activator, func()) {
		act := newActivator()
		m, err := bundles.New(cfg, act, bundles.Options{})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); _ = m.Run(t.Context()) }()
		return m, act, func() { m.Close(); <-done }
	}

	t.Run("download and persist", func(t *testing.T) {
		m, act, stop := run(t, cfg)
		defer stop()
		waitUntil(t, "r1 active", act.wake, func() bool { return act.revision("authz") == "r1" })
		waitUntil(t, "r1 persisted", nil, func() bool {
			_, err := os.Stat(filepath.Join(pdir, "authz.json"))
			return err == nil
		})
		if st := statusOf(m, "authz"); st.Persisted {
			t.Errorf("a downloaded bundle is reported as the persisted copy: %+v", st)
		}
		entries, _ := os.ReadDir(pdir)
		for _, e := range entries {
			if strings.Contains(e.Name(), ".tmp-") {
				t.Errorf("temporary file left behind: %s", e.Name())
			}
		}
	})

	t.Run("restart with the server up sends the persisted ETag", func(t *testing.T) {
		mark := len(srv.requests())
		m, act, stop := run(t, cfg)
		defer stop()
		waitUntil(t, "r1 active", act.wake, func() bool { return act.revision("authz") == "r1" })
		waitUntil(t, "a poll", srv.wake, func() bool { return len(srv.requests()) > mark })
		first := srv.requests()[mark]
		if first.IfNoneMatch != etagOf(1) || first.Status != 304 {
			t.Fatalf("first request after restart: %+v, want If-None-Match %s answered 304", first, etagOf(1))
		}
		waitUntil(t, "persisted copy confirmed", nil, func() bool { return !statusOf(m, "authz").Persisted })
	})

	srv.Close()

	t.Run("restart with the server down serves the persisted copy", func(t *testing.T) {
		m, act, stop := run(t, cfg)
		defer stop()
		waitUntil(t, "r1 active from disk", act.wake, func() bool { return m.Ready() && act.revision("authz") == "r1" })
		if !act.allows(t, "GET") {
			t.Fatal("not serving the persisted bundle")
		}
		waitUntil(t, "the download failure", nil, func() bool { return statusOf(m, "authz").Error != "" })
		if st := statusOf(m, "authz"); !st.Persisted || st.Revision != "r1" {
			t.Fatalf("status %+v", st)
		}
	})

	t.Run("a tampered persisted copy is not served", func(t *testing.T) {
		tp := filepath.Join(pdir, "authz.tar.gz")
		raw, err := os.ReadFile(tp)
		if err != nil {
			t.Fatal(err)
		}
		es := readTar(t, raw)
		for i := range es {
			if strings.HasSuffix(es[i].Name, "data.json") {
				es[i].Body = []byte(`{"authz": {"methods": ["GET", "DELETE"]}}`)
			}
		}
		if err := os.WriteFile(tp, writeTar(t, es), 0o600); err != nil {
			t.Fatal(err)
		}
		act := newActivator()
		reg := prometheus.NewRegistry()
		m, err := bundles.New(cfg, act, bundles.Options{Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		// Run stops after the persisted copy was looked at: the load happens
		// before any download.
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { defer close(done); _ = m.Run(ctx) }()
		waitUntil(t, "the load failure", nil, func() bool {
			return counter(t, reg, "policygate_bundle_failures_total", map[string]string{"bundle": "authz", "stage": "load"}) == 1
		})
		cancel()
		<-done
		if st := statusOf(m, "authz"); st.Persisted {
			t.Fatalf("status %+v", st)
		}
		if n, _, _ := act.state(); n != 0 || m.Ready() {
			t.Fatal("a tampered persisted bundle was activated")
		}
	})

	t.Run("nothing persisted, nothing reachable: not ready", func(t *testing.T) {
		empty := cfg
		empty.PersistenceDir = filepath.Join(t.TempDir(), "none")
		m, act, stop := run(t, empty)
		defer stop()
		waitUntil(t, "the download failure", nil, func() bool { return statusOf(m, "authz").Error != "" })
		if n, _, _ := act.state(); n != 0 || m.Ready() {
			t.Fatal("ready without any bundle")
		}
	})
}

// TestTarOrder (FAULTS.md): the order of files in a tarball never changes
// the bundle; a true conflict is the same error in every order, and a path
// twice in one archive is an error.
func TestTarOrder(t *testing.T) {
	entries := []tarEntry{
		{Name: "/.manifest", Body: []byte(`{"revision": "r1", "roots": ["a"]}`)},
		{Name: "/data.json", Body: []byte(`{"a": {"y": 1, "deep": {"k": "root"}}}`)},
		{Name: "/a/data.json", Body: []byte(`{"x": 2}`)},
		{Name: "/a/deep/more/data.json", Body: []byte(`{"z": [1, 2]}`)},
		{Name: "/a/p.rego", Body: []byte("package a\n\nq := data.a.x + data.a.y\n")},
		{Name: "/a/b/q.rego", Body: []byte("package a.b\n\nr := 1\n")},
	}
	f := filepath.Join(t.TempDir(), "b.tar.gz") // one name: errors name the file
	read := func(t *testing.T, es []tarEntry) (string, map[string]any, error) {
		t.Helper()
		if err := os.WriteFile(f, writeTar(t, es), 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := bundles.ReadFile(f, 0, nil)
		if err != nil {
			return "", nil, err
		}
		d, err := bundles.Digest(b)
		if err != nil {
			t.Fatal(err)
		}
		return d, b.Data, nil
	}
	orders := map[string][]tarEntry{"forward": entries, "reversed": reversed(entries), "shuffled": {entries[3], entries[0], entries[5], entries[2], entries[4], entries[1]}}
	var want string
	var wantData map[string]any
	for _, name := range []string{"forward", "reversed", "shuffled"} {
		d, data, err := read(t, orders[name])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if want == "" {
			want, wantData = d, data
			continue
		}
		if d != want || !reflect.DeepEqual(data, wantData) {
			t.Fatalf("%s order: digest %s data %v; forward: %s %v", name, d, data, want, wantData)
		}
	}
	if got := wantData["a"].(map[string]any); got["x"] == nil || got["y"] == nil || got["deep"].(map[string]any)["more"] == nil {
		t.Fatalf("merged data %v", wantData)
	}

	conflict := append(slices.Clone(entries), tarEntry{Name: "/a/deep/data.json", Body: []byte(`{"k": "nested"}`)})
	_, _, errF := read(t, conflict)
	_, _, errR := read(t, reversed(conflict))
	if errF == nil || errR == nil || errF.Error() != errR.Error() {
		t.Fatalf("conflicting data files: %v / %v; want the same error in both orders", errF, errR)
	}

	dup := append(slices.Clone(entries), tarEntry{Name: "a/p.rego", Body: []byte("package a\n\nq := 0\n")})
	for _, es := range [][]tarEntry{dup, reversed(dup)} {
		if _, _, err := read(t, es); err == nil || !strings.Contains(err.Error(), "more than once") {
			t.Fatalf("duplicate path: %v", err)
		}
	}
}

func reversed[T any](s []T) []T {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

// TestDependencyRemoved (FAULTS.md): a new revision that drops a package
// another module imports fails activation; the old revision keeps serving
// and never decides with an undefined rule.
func TestDependencyRemoved(t *testing.T) {
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, authzFiles("GET"), "r1", nil), etagOf(1))
	act := newActivator()
	m := startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{fastHTTP("authz", srv.bundleURL())}}, act, nil)
	waitUntil(t, "r1 active", act.wake, func() bool { return act.revision("authz") == "r1" })

	files := authzFiles("GET")
	delete(files, "authz/lib/lib.rego")
	srv.publish(buildBundle(t, files, "r2", nil), etagOf(2))
	waitUntil(t, "r2 rejected, the missing import in status", act.wake, func() bool {
		return strings.Contains(statusOf(m, "authz").LastError, "import data.authz.lib")
	})
	if !act.allows(t, "GET") || act.revision("authz") != "r1" {
		t.Fatal("r1 does not serve after r2 failed")
	}
	if st := statusOf(m, "authz"); st.Revision != "r1" || !strings.Contains(st.LastError, "activate") {
		t.Fatalf("status %+v", st)
	}
}

// TestDirSource: a watched directory reloads after a change, keeps the
// last good revision on a broken edit, and serves no *_test.rego file.
func TestDirSource(t *testing.T) {
	dir := writeTree(t, t.TempDir(), authzFiles("GET"))
	act := newActivator()
	m := startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{{Name: "local", Dir: dir, Debounce: "20ms"}}}, act, nil)
	waitUntil(t, "first load", act.wake, func() bool { return act.revision("local") != "" })
	rev1 := act.revision("local")
	if !strings.HasPrefix(rev1, "sha256:") || !act.allows(t, "GET") || act.allows(t, "PUT") {
		t.Fatalf("revision %q", rev1)
	}

	writeTree(t, dir, map[string]string{"authz/data.json": `{"methods": ["GET", "PUT"]}`})
	waitUntil(t, "reload", act.wake, func() bool { r := act.revision("local"); return r != "" && r != rev1 })
	if !act.allows(t, "PUT") {
		t.Fatal("the edit did not take effect")
	}
	n, _, _ := act.state()

	writeTree(t, dir, map[string]string{"authz/policy.rego": "package authz\n\nallow if {\n"})
	waitUntil(t, "the parse error", nil, func() bool { return statusOf(m, "local").Error != "" })
	if n2, _, _ := act.state(); n2 != n || !act.allows(t, "PUT") {
		t.Fatal("a broken edit replaced the last good revision")
	}

	// A new subdirectory is watched too.
	writeTree(t, dir, map[string]string{
		"authz/policy.rego":            "package authz\n\nimport data.authz.lib\n\ndefault allow := false\n\nallow if lib.method_ok\n\nallow if input.request.method in data.authz.extra.methods\n",
		"authz/extra/data.json":        `{"methods": ["PATCH"]}`,
		"authz/extra/more/x.rego":      "package authz.extra.more\n\ny := 1\n",
		"authz/extra/more/x_test.rego": "package authz.extra.more\n\ntest_y if y == 1\n",
	})
	waitUntil(t, "the fix", act.wake, func() bool { return statusOf(m, "local").Error == "" && act.allows(t, "PATCH") })
}

// TestFileSource: a tarball replaced by rename is reloaded.
func TestFileSource(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "authz.tar.gz")
	if err := bundles.WriteFileAtomic(file, buildBundle(t, authzFiles("GET"), "r1", nil), 0o644); err != nil {
		t.Fatal(err)
	}
	act := newActivator()
	startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{{Name: "authz", File: file, Debounce: "20ms"}}}, act, nil)
	waitUntil(t, "r1", act.wake, func() bool { return act.revision("authz") == "r1" })
	if err := bundles.WriteFileAtomic(file, buildBundle(t, authzFiles("GET", "POST"), "r2", nil), 0o644); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "r2", act.wake, func() bool { return act.revision("authz") == "r2" })
	// An unrelated file next to it changes nothing.
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := act.state(); n != 2 {
		t.Fatalf("%d activations", n)
	}
}

// TestSeveralBundles: bundles with disjoint roots activate together once
// each has arrived; each keeps its revision.
func TestSeveralBundles(t *testing.T) {
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, authzFiles("GET"), "a1", nil), etagOf(1))
	dir := writeTree(t, t.TempDir(), map[string]string{
		".manifest":       `{"revision": "x1", "roots": ["extra"]}`,
		"extra/x.rego":    "package extra\n\nimport data.authz.lib\n\nok if lib.method_ok\n",
		"policy.rego":     "package extra.policy\n\nv := 1\n",
		"extra/data.json": `{"n": 1}`,
	})
	act := newActivator("data.authz.allow", "data.extra.ok")
	m := startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{
		fastHTTP("authz", srv.bundleURL()),
		{Name: "extra", Dir: dir, Debounce: "20ms"},
	}}, act, nil)
	waitUntil(t, "both active", act.wake, func() bool {
		_, _, revs := act.state()
		return maps.Equal(revs, map[string]string{"authz": "a1", "extra": "x1"})
	})
	if n, _, _ := act.state(); n != 1 {
		t.Fatalf("%d activations: the first must wait for every bundle", n)
	}
	waitUntil(t, "both activated in status", nil, func() bool {
		for _, st := range m.Status() {
			if st.LastActivation == nil || st.Pending {
				return false
			}
		}
		return statusOf(m, "extra").Revision == "x1"
	})
	srv.publish(buildBundle(t, authzFiles("GET", "PUT"), "a2", nil), etagOf(2))
	waitUntil(t, "authz a2, extra x1", act.wake, func() bool {
		_, _, revs := act.state()
		return maps.Equal(revs, map[string]string{"authz": "a2", "extra": "x1"})
	})
}

// TestSameRevisionNewContent: a server that changes content but not the
// manifest revision still produces a new revision string.
func TestSameRevisionNewContent(t *testing.T) {
	srv := newBundleServer(t)
	srv.publish(buildBundle(t, authzFiles("GET"), "r1", nil), etagOf(1))
	act := newActivator()
	startManager(t, bundles.Config{Bundles: []bundles.SourceConfig{fastHTTP("authz", srv.bundleURL())}}, act, nil)
	waitUntil(t, "r1", act.wake, func() bool { return act.revision("authz") == "r1" })
	srv.publish(buildBundle(t, authzFiles("GET", "PUT"), "r1", nil), etagOf(2))
	waitUntil(t, "new content", act.wake, func() bool { return strings.HasPrefix(act.revision("authz"), "r1+") })
	if !act.allows(t, "PUT") {
		t.Fatal("new content not active")
	}
	second := act.revision("authz")
	srv.publish(buildBundle(t, authzFiles("GET", "POST"), "r1", nil), etagOf(3))
	waitUntil(t, "third content", act.wake, func() bool { return act.allows(t, "POST") })
	if third := act.revision("authz"); third == "r1" || third == second || !strings.HasPrefix(third, "r1+") {
		t.Fatalf("revisions r1, %s, %s: each content needs its own", second, third)
	}
}

// TestBuildInspect: Build signs, Inspect reports, ReadFile verifies.
func TestBuildInspect(t *testing.T) {
	key := newTestKey(t)
	raw := buildBundle(t, authzFiles("GET"), "r9", &key)
	f := filepath.Join(t.TempDir(), "b.tar.gz")
	if err := bundles.WriteFileAtomic(f, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	vc, err := (&bundles.SigningConfig{PublicKeyFile: key.Public}).Verification("")
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundles.ReadFile(f, 0, vc)
	if err != nil {
		t.Fatalf("ReadFile: %v", err)
	}
	info, err := bundles.Inspect(b, true)
	if err != nil {
		t.Fatal(err)
	}
	if info.Revision != "r9" || !info.Signed || !info.Verified || info.Signature.KeyID != "default" ||
		!slices.Equal(info.Modules, []string{"/authz/lib/lib.rego", "/authz/policy.rego"}) ||
		!slices.Equal(info.Roots, []string{"authz"}) || !slices.Contains(info.Signature.Files, "authz/policy.rego") {
		t.Fatalf("info %+v, signature %+v", info, info.Signature)
	}
	unverified, err := bundles.ReadFileUnverified(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(unverified.Signatures.Signatures) != 1 {
		t.Fatal("ReadFileUnverified dropped the signature")
	}
	if _, err := bundles.ReadFile(f, 0, nil); err == nil {
		t.Fatal("a signed bundle read without a key must fail, as in OPA")
	}
	// The signature does not change the content: the digest is that of the
	// unsigned build.
	plain, err := bundles.Build(writeTree(t, t.TempDir(), authzFiles("GET")), bundles.BuildOptions{Revision: "r9"})
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := bundles.Digest(plain); d != info.Digest {
		t.Fatalf("digest %s of the unsigned build, %s of the signed one", d, info.Digest)
	}
}

// TestConfigErrors: every configuration error names its key.
func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "b.tar.gz")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(dir, "tok")
	if err := os.WriteFile(tok, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok := bundles.SourceConfig{Name: "a", URL: "https://bundles.example.com/a.tar.gz"}
	with := func(f func(*bundles.SourceConfig)) bundles.SourceConfig { s := ok; f(&s); return s }
	tests := []struct {
		name string
		cfg  bundles.Config
		want string
	}{
		{"no name", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) { s.Name = "" })}}, "bundles[0].name: required"},
		{"bad name", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) { s.Name = "../x" })}}, "bundles[0].name:"},
		{"duplicate name", bundles.Config{Bundles: []bundles.SourceConfig{ok, ok}}, "bundles[1].name: \"a\" is used twice"},
		{"no source", bundles.Config{Bundles: []bundles.SourceConfig{{Name: "a"}}}, "bundles[0].url: exactly one of url, file and dir"},
		{"two sources", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) { s.Dir = dir })}}, "exactly one of"},
		{"scheme", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) { s.URL = "ftp://x/b" })}}, "bundles[0].url:"},
		{"userinfo", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) { s.URL = "https://u:p@x/b" })}}, "bundles[0].url: credentials in the URL"},
		{"delays", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) { s.Polling = bundles.PollingConfig{MinDelay: "20s", MaxDelay: "10s"} })}}, "bundles[0].polling.max_delay"},
		{"bad duration", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) { s.Timeout = "soon" })}}, "bundles[0].timeout"},
		{"long poll", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) { s.LongPollingTimeout = "500ms" })}}, "bundles[0].long_polling_timeout"},
		{"max size", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) { s.MaxSize = "lots" })}}, "bundles[0].max_size"},
		{"token over http", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) {
			s.URL = "http://bundles.example.com/a.tar.gz"
			s.Credentials.BearerTokenFile = tok
		})}}, "bundles[0].credentials: bearer_token_file"},
		{"cert without key", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) { s.Credentials.ClientCertFile = tok })}}, "bundles[0].credentials: client_cert_file"},
		{"signing without key", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) { s.Signing = &bundles.SigningConfig{} })}}, "bundles[0].signing.public_key_file: required"},
		{"signing algorithm", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) {
			s.Signing = &bundles.SigningConfig{PublicKeyFile: tok, Algorithm: "none"}
		})}}, "bundles[0].signing.algorithm"},
		{"missing dir", bundles.Config{Bundles: []bundles.SourceConfig{{Name: "a", Dir: filepath.Join(dir, "nope")}}}, "bundles[0].dir:"},
		{"file is a dir", bundles.Config{Bundles: []bundles.SourceConfig{{Name: "a", File: dir}}}, "bundles[0].file:"},
		{"polling on a file", bundles.Config{Bundles: []bundles.SourceConfig{{Name: "a", File: file, Polling: bundles.PollingConfig{MinDelay: "1s"}}}}, "bundles[0].polling"},
		{"debounce on a url", bundles.Config{Bundles: []bundles.SourceConfig{with(func(s *bundles.SourceConfig) { s.Debounce = "1s" })}}, "bundles[0].debounce"},
		{"persistence dir is a file", bundles.Config{Bundles: []bundles.SourceConfig{ok}, PersistenceDir: file}, "persistence_dir:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := bundles.New(tt.cfg, newActivator(), bundles.Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := bundles.New(bundles.Config{Bundles: []bundles.SourceConfig{ok}}, newActivator(), bundles.Options{}); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if _, err := bundles.New(bundles.Config{}, newActivator(), bundles.Options{}); err == nil {
		t.Fatal("no bundles accepted")
	}
	var joined interface{ Unwrap() []error }
	_, err := bundles.New(bundles.Config{Bundles: []bundles.SourceConfig{{Name: ""}, {Name: "b", URL: "ftp://x"}}}, newActivator(), bundles.Options{})
	if !errors.As(err, &joined) || len(joined.Unwrap()) < 3 {
		t.Fatalf("errors are not all reported: %v", err)
	}
}
