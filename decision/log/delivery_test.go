package log_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	decisionlog "github.com/policygate/policygate/decision/log"
)

// outageEnv shortens the collector outage of TestDurableUploadOutage for
// local runs (a Go duration); make test runs the full 60 s.
const outageEnv = "POLICYGATE_LOG_OUTAGE"

// metric reads one sample from a registry: name and label pairs.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
		return 0
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == k && lp.GetValue() == v {
			return true
		}
	}
	return false
}

// TestDurableUploadOutage: under steady load, the collector is down (its
// address refuses connections) for 60 s and comes back. Every event Log
// acknowledged reaches the collector and the file, none twice, and the
// accounting adds up.
func TestDurableUploadOutage(t *testing.T) {
	outage := 60 * time.Second
	if v := os.Getenv(outageEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", outageEnv, v, err)
		}
		outage = d
	}
	t.Parallel()
	const (
		writers = 4
		rate    = 50 // events per second per writer: 200/s in all
	)
	dir := t.TempDir()
	col := newCollector(t)
	reg := prometheus.NewRegistry()
	path := filepath.Join(dir, "decisions.jsonl")
	l := mustNew(t, decisionlog.Config{
		Output: "file", Path: path,
		Delivery: "durable", SpoolDir: filepath.Join(dir, "spool"),
		Upload: &decisionlog.UploadConfig{
			URL: col.URL(), BatchSize: 200, MaxDelay: "100ms", Timeout: "2s",
			Retry: decisionlog.RetryConfig{MinBackoff: "50ms", MaxBackoff: "1s"},
		},
		ShutdownGrace: "20s",
	}, decisionlog.Options{Registerer: reg})

	var (
		mu    sync.Mutex
		acked []string
		fails atomic.Int64
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second / rate)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				id := fmt.Sprintf("w%d-%06d", w, i)
				if err := l.Log(context.Background(), simpleEvent(id)); err != nil {
					fails.Add(1)
					continue
				}
				mu.Lock()
				acked = append(acked, id)
				mu.Unlock()
			}
		}()
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	snapshot := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), acked...)
	}

	// Steady state: the collector keeps up.
	waitUntil(t, bound, "the first events", func() bool { return count() >= 200 })
	col.waitFor(snapshot(), bound)

	col.down()
	downAt := time.Now()
	time.Sleep(outage / 2) // the load keeps running meanwhile
	if b := metric(t, reg, "policygate_decision_log_backlog_events", "sink", "upload"); b == 0 {
		t.Errorf("upload backlog is 0 during the outage")
	}
	if s := metric(t, reg, "policygate_decision_log_spool_bytes"); s == 0 {
		t.Errorf("spool is empty during the outage")
	}
	time.Sleep(outage - time.Since(downAt))
	col.up()
	t.Logf("collector down for %v; %d events acknowledged so far", time.Since(downAt).Round(time.Millisecond), count())
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()

	want := snapshot()
	col.waitFor(want, 60*time.Second)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if f := fails.Load(); f != 0 {
		t.Errorf("Log refused %d events", f)
	}
	// Delivery is at least once: a batch the collector took but whose
	// answer was lost is sent again. Losses are what must be zero.
	dups := col.duplicates()
	if p := col.problems(); len(p) > 0 {
		t.Errorf("protocol problems: %q", p[:min(len(p), 5)])
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	inFile := map[string]bool{}
	for _, id := range eventIDs(t, raw) {
		inFile[id] = true
	}
	lost := 0
	for _, id := range want {
		if !inFile[id] {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d acknowledged events missing from the file", lost)
	}
	n := float64(len(want))
	if got := metric(t, reg, "policygate_decision_log_events_spooled_total"); got != n {
		t.Errorf("spooled %v, want %v", got, n)
	}
	if got := metric(t, reg, "policygate_decision_log_events_written_total", "sink", "upload"); got != n {
		t.Errorf("uploaded %v, want %v", got, n)
	}
	if got := metric(t, reg, "policygate_decision_log_upload_failures_total", "status", "error"); got == 0 {
		t.Errorf("no upload failure counted during the outage")
	}
	for _, reason := range []string{"queue_full", "spool_full", "spool_error", "shutdown"} {
		if got := metric(t, reg, "policygate_decision_log_events_dropped_total", "reason", reason); got != 0 {
			t.Errorf("dropped{%s} = %v", reason, got)
		}
	}
	if res, err := decisionlog.Verify([]string{path}, decisionlog.VerifyOptions{}); err != nil || res.Problem != nil || res.Events != len(want) {
		t.Errorf("verify: %v %v events %d", err, res.Problem, res.Events)
	}
	t.Logf("%d events acknowledged, %d received by the collector, 0 lost, %d received twice", len(want), len(want)-col.missing(want), dups)
}

// TestDurableReplayAfterRestart: events spooled while the collector is down
// survive Close and a new process; the next logger uploads them, and the
// chain continues.
func TestDurableReplayAfterRestart(t *testing.T) {
	dir := t.TempDir()
	col := newCollector(t)
	col.down()
	cfg := decisionlog.Config{
		Output: "file", Path: filepath.Join(dir, "decisions.jsonl"),
		Delivery: "durable", SpoolDir: filepath.Join(dir, "spool"),
		Upload:        &decisionlog.UploadConfig{URL: col.URL(), MaxDelay: "10ms", Retry: decisionlog.RetryConfig{MinBackoff: "10ms", MaxBackoff: "50ms"}},
		ShutdownGrace: "200ms",
	}
	first := ids("a", 300)
	l := mustNew(t, cfg, decisionlog.Options{})
	logAll(t, l, first...)
	if err := l.Close(); err != nil {
		t.Fatalf("Close with the collector down: %v", err)
	}
	if m := col.missing(first); m != len(first) {
		t.Fatalf("collector down, yet %d events arrived", len(first)-m)
	}

	col.up()
	l = mustNew(t, cfg, decisionlog.Options{})
	col.waitFor(first, bound)
	second := ids("b", 100)
	logAll(t, l, second...)
	col.waitFor(second, bound)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if d := col.duplicates(); d != 0 {
		t.Errorf("%d duplicates", d)
	}
	raw, _ := os.ReadFile(cfg.Path)
	if got := eventIDs(t, raw); len(got) != 400 || got[0] != first[0] || got[399] != second[99] {
		t.Fatalf("file holds %d events", len(got))
	}
	if res, err := decisionlog.Verify([]string{cfg.Path}, decisionlog.VerifyOptions{}); err != nil || res.Problem != nil || res.LastSeq != 400 {
		t.Fatalf("verify: %v %v %+v", err, res.Problem, res)
	}
	// Delivered segments are deleted: what is left is at most the active one.
	segs, _ := filepath.Glob(filepath.Join(cfg.SpoolDir, "seg-*.jsonl"))
	if len(segs) > 1 {
		t.Errorf("spool keeps %d segments after everything was delivered", len(segs))
	}
}

// TestDurableSpoolFullRefuses: a full spool refuses new events with an
// error (LogSync: the fail-closed call) instead of evicting acknowledged
// ones, and accepts again once the collector drained it.
func TestDurableSpoolFullRefuses(t *testing.T) {
	dir := t.TempDir()
	col := newCollector(t)
	col.down()
	reg := prometheus.NewRegistry()
	l := mustNew(t, decisionlog.Config{
		Output: "none", Delivery: "durable", SpoolDir: dir, SpoolMaxSize: "256KiB",
		Upload:        &decisionlog.UploadConfig{URL: col.URL(), MaxDelay: "10ms", Retry: decisionlog.RetryConfig{MinBackoff: "10ms", MaxBackoff: "100ms"}},
		ShutdownGrace: "100ms",
	}, decisionlog.Options{Registerer: reg})
	ctx := context.Background()
	var acked []string
	var refused error
	for i := 0; i < 2000 && refused == nil; i++ {
		id := fmt.Sprintf("e%05d", i)
		if refused = l.LogSync(ctx, simpleEvent(id)); refused == nil {
			acked = append(acked, id)
		}
	}
	if refused == nil || !strings.Contains(refused.Error(), "spool full") {
		t.Fatalf("LogSync on a full spool = %v, want a spool full error", refused)
	}
	if got := metric(t, reg, "policygate_decision_log_events_dropped_total", "reason", "spool_full"); got != 1 {
		t.Errorf("dropped{spool_full} = %v, want 1", got)
	}
	if err := l.Log(ctx, simpleEvent("also-refused")); err == nil {
		t.Errorf("Log on a full durable spool returned nil")
	}
	col.up()
	col.waitFor(acked, bound)
	waitUntil(t, bound, "the spool to accept again", func() bool { return l.LogSync(ctx, simpleEvent("after")) == nil })
	col.waitFor([]string{"after"}, bound)
	if d := col.duplicates(); d != 0 {
		t.Errorf("%d duplicates", d)
	}
}

// TestBestEffortDropsAndCounts: with the writer stuck, best_effort never
// makes a caller wait; what does not fit is dropped and counted.
func TestBestEffortDropsAndCounts(t *testing.T) {
	out := &gateWriter{release: make(chan struct{}), entered: make(chan struct{})}
	reg := prometheus.NewRegistry()
	l := mustNew(t, decisionlog.Config{Delivery: "best_effort", QueueSize: 4}, decisionlog.Options{Stdout: out, Registerer: reg})
	big := simpleEvent("big")
	big.Source.Request.Body = strings.Repeat("x", 100<<10) // bypasses the write buffer
	if err := l.Log(context.Background(), big); err != nil {
		t.Fatal(err)
	}
	<-out.entered
	start := time.Now()
	for _, id := range ids("e", 100) {
		if err := l.Log(context.Background(), simpleEvent(id)); err != nil {
			t.Fatalf("best_effort Log returned %v", err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("100 Log calls took %v with the writer stuck", d)
	}
	dropped := metric(t, reg, "policygate_decision_log_events_dropped_total", "reason", "queue_full")
	if dropped < 90 {
		t.Errorf("dropped{queue_full} = %v, want at least 96 (queue of 4)", dropped)
	}
	close(out.release)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	written, failed := l.Stats()
	lines := len(eventIDs(t, out.Bytes()))
	if written != int64(lines) || written+failed != 101 || float64(failed) != dropped {
		t.Errorf("Stats = %d written, %d failed; %d lines; %v dropped", written, failed, lines, dropped)
	}
}

// gateWriter blocks writes until release is closed.
type gateWriter struct {
	safeBuffer
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (w *gateWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.entered) })
	<-w.release
	return w.safeBuffer.Write(p)
}

// TestLogSyncIsOnDisk: LogSync returns only when the event is in the file
// (backpressure) or the spool (durable), before any flush interval.
func TestLogSyncIsOnDisk(t *testing.T) {
	for _, delivery := range []string{"backpressure", "durable"} {
		t.Run(delivery, func(t *testing.T) {
			dir := t.TempDir()
			cfg := decisionlog.Config{Output: "file", Path: filepath.Join(dir, "d.jsonl"), FlushInterval: "1h", Delivery: delivery, Fsync: "always"}
			if delivery == "durable" {
				cfg.SpoolDir = filepath.Join(dir, "spool")
			}
			l := mustNew(t, cfg, decisionlog.Options{})
			if err := l.LogSync(context.Background(), simpleEvent("synced")); err != nil {
				t.Fatal(err)
			}
			where := cfg.Path
			if delivery == "durable" {
				segs, _ := filepath.Glob(filepath.Join(cfg.SpoolDir, "seg-*.jsonl"))
				if len(segs) != 1 {
					t.Fatalf("spool segments %v", segs)
				}
				where = segs[0]
			}
			raw, _ := os.ReadFile(where)
			if !bytes.Contains(raw, []byte(`"decision_id":"synced"`)) {
				t.Fatalf("%s does not hold the event LogSync acknowledged: %q", where, raw)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if err := l.LogSync(context.Background(), simpleEvent("late")); err == nil {
				t.Fatal("LogSync after Close returned nil")
			}
		})
	}
}

// TestUploadProtocol: OPA's upload format, the bearer token and extra
// headers, batches split on 413, and no checkpoints uploaded.
func TestUploadProtocol(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("UPLOAD-TOKEN\n"), 0o600)
	keyPath, _, _ := keyPair(t, dir, "k")
	col := newCollector(t)
	var auth, tenant atomic.Value
	col.status = func(n int) int {
		if n > 8 {
			return http.StatusRequestEntityTooLarge
		}
		return http.StatusOK
	}
	wrapped := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		auth.Store(r.Header.Get("Authorization"))
		tenant.Store(r.Header.Get("X-Tenant"))
		return http.DefaultTransport.RoundTrip(r)
	})}
	l := mustNew(t, decisionlog.Config{
		Output: "none",
		Upload: &decisionlog.UploadConfig{
			URL: col.URL(), BearerTokenFile: "token", Headers: map[string]string{"X-Tenant": "blue"},
			BatchSize: 50, MaxDelay: "50ms",
		},
		Checkpoint: &decisionlog.CheckpointConfig{SigningKeyFile: keyPath, Every: "1ms"},
	}, decisionlog.Options{BaseDir: dir, HTTPClient: wrapped})
	all := ids("u", 120)
	logAll(t, l, all...)
	col.waitFor(all, bound)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if auth.Load() != "Bearer UPLOAD-TOKEN" || tenant.Load() != "blue" {
		t.Errorf("Authorization %q, X-Tenant %q", auth.Load(), tenant.Load())
	}
	if p := col.problems(); len(p) > 0 {
		t.Errorf("protocol problems: %q", p)
	}
	body := col.allBodies()
	if bytes.Contains(body, []byte("checkpoint")) {
		t.Errorf("a checkpoint was uploaded")
	}
	if !bytes.Contains(body, []byte(`"seq":1,"prev_hash":"`)) || !bytes.Contains(body, []byte(`"hash":"`)) {
		t.Errorf("uploaded events lack their chain fields")
	}
	if d := col.duplicates(); d != 0 {
		t.Errorf("%d duplicates", d)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestSpoolLockedByOneProcess: a second logger on the same spool is refused.
func TestSpoolLockedByOneProcess(t *testing.T) {
	dir := t.TempDir()
	cfg := decisionlog.Config{Output: "file", Path: filepath.Join(dir, "d.jsonl"), Delivery: "durable", SpoolDir: filepath.Join(dir, "spool")}
	l := mustNew(t, cfg, decisionlog.Options{})
	cfg2 := cfg
	cfg2.Path = filepath.Join(dir, "other.jsonl")
	if l2, err := decisionlog.New(cfg2, decisionlog.Options{}); err == nil {
		l2.Close()
		t.Fatal("two loggers share one spool")
	} else if !strings.Contains(err.Error(), "spool_dir") {
		t.Errorf("error %q does not name spool_dir", err)
	}
	if err := decisionlog.Check(cfg, decisionlog.Options{}); err != nil {
		t.Errorf("Check while the spool is in use: %v", err)
	}
	l.Close()
}

// TestSpoolTornTail: a spool segment cut mid-line by a crash is repaired on
// start and nothing acknowledged is lost.
func TestSpoolTornTail(t *testing.T) {
	dir := t.TempDir()
	col := newCollector(t)
	col.down()
	cfg := decisionlog.Config{
		Output: "none", Delivery: "durable", SpoolDir: dir, ShutdownGrace: "50ms",
		Upload: &decisionlog.UploadConfig{URL: col.URL(), MaxDelay: "10ms", Retry: decisionlog.RetryConfig{MinBackoff: "10ms", MaxBackoff: "20ms"}},
	}
	l := mustNew(t, cfg, decisionlog.Options{})
	first := ids("a", 50)
	logAll(t, l, first...)
	l.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.jsonl"))
	f, err := os.OpenFile(segs[len(segs)-1], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":51,"prev_hash":"0000`)
	f.Close()
	col.up()
	l = mustNew(t, cfg, decisionlog.Options{})
	logAll(t, l, "b")
	col.waitFor(append(first, "b"), bound)
	l.Close()
	if p := col.problems(); len(p) > 0 {
		t.Errorf("protocol problems: %q", p)
	}
}

// TestMetricsRegistration: every instrument is registered once; a second
// registration on the same registry is an error from New.
func TestMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	l := mustNew(t, decisionlog.Config{}, decisionlog.Options{Stdout: &safeBuffer{}, Registerer: reg})
	logAll(t, l, "m1")
	l.Close()
	if got := metric(t, reg, "policygate_decision_log_events_written_total", "sink", "stdout"); got != 1 {
		t.Errorf("written{stdout} = %v", got)
	}
	for _, name := range []string{
		"policygate_decision_log_events_dropped_total", "policygate_decision_log_events_spooled_total",
		"policygate_decision_log_upload_batches_total",
		"policygate_decision_log_queue_length", "policygate_decision_log_spool_bytes",
		"policygate_decision_log_chain_seq", "policygate_decision_log_checkpoints_total",
	} {
		metric(t, reg, name)
	}
	if got := metric(t, reg, "policygate_decision_log_chain_seq"); got != 1 {
		t.Errorf("chain_seq = %v, want 1", got)
	}
	if len(l.Collectors()) == 0 {
		t.Error("no collectors")
	}
	if l2, err := decisionlog.New(decisionlog.Config{}, decisionlog.Options{Stdout: &safeBuffer{}, Registerer: reg}); err == nil {
		l2.Close()
		t.Error("duplicate registration accepted")
	}
}
