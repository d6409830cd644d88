package log_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
	decisionlog "github.com/policygate/policygate/decision/log"
)

// waitBound fails a test that would otherwise hang on a broken logger.
const waitBound = 5 * time.Second

// lockedBuffer is a concurrency-safe io.Writer.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// notifyWriter signals every write on wrote.
type notifyWriter struct {
	lockedBuffer
	wrote chan struct{}
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	n, err := w.lockedBuffer.Write(p)
	select {
	case w.wrote <- struct{}{}:
	default:
	}
	return n, err
}

// blockingWriter blocks every write until release is closed and signals
// on entered when the first write arrives.
type blockingWriter struct {
	lockedBuffer
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func newBlockingWriter() *blockingWriter {
	return &blockingWriter{entered: make(chan struct{}), release: make(chan struct{})}
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.entered) })
	<-w.release
	return w.lockedBuffer.Write(p)
}

func event(id string) *decision.Event {
	in := &decision.Input{
		Request:  decision.Request{ID: id, Method: "GET", Path: "/admin/users", Segments: []string{"admin", "users"}, Headers: map[string]string{"user-agent": "test"}},
		Identity: decision.Anonymous(),
		Route:    decision.Route{Name: "admin"},
	}
	d := &decision.Decision{ID: id, Path: "data.gate.decision", Input: in, Timestamp: time.Unix(0, 0), Result: decision.Result{Outcome: decision.OutcomeDeny}}
	return decision.NewEvent(d, decision.Completion{Status: 403})
}

// lines splits output into its lines, requiring a final newline and one
// JSON object per line.
func lines(t *testing.T, out []byte) []map[string]any {
	t.Helper()
	if len(out) == 0 {
		return nil
	}
	if out[len(out)-1] != '\n' {
		t.Fatalf("output does not end with a newline: %q", out[max(0, len(out)-80):])
	}
	var evs []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 4<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d is not one JSON object: %v\n%s", len(evs)+1, err, sc.Bytes())
		}
		evs = append(evs, m)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return evs
}

func TestFileOutput(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.jsonl")
	ctx := context.Background()
	for round, ids := range [][]string{{"a1", "a2", "a3"}, {"b1"}} {
		l, err := decisionlog.New(decisionlog.Config{Output: "file", Path: path}, decisionlog.Options{})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		for _, id := range ids {
			if err := l.Log(ctx, event(id)); err != nil {
				t.Fatalf("Log: %v", err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatalf("Close (round %d): %v", round, err)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	evs := lines(t, raw)
	var got []string
	for _, ev := range evs {
		got = append(got, ev["decision_id"].(string))
	}
	// The file is appended to, never truncated.
	if want := []string{"a1", "a2", "a3", "b1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("decision ids %v, want %v", got, want)
	}
	ev := evs[0]
	if ev["path"] != "gate/decision" || ev["route"] != "admin" || ev["decision"] != "deny" || ev["status"] != float64(403) {
		t.Errorf("event fields: %v", ev)
	}
	if _, ok := ev["input"].(map[string]any)["request"]; !ok {
		t.Errorf("event lacks input.request: %v", ev)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("log file mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
}

func TestCloseFlushesEverything(t *testing.T) {
	const (
		writers   = 8
		perWriter = 1250
	)
	path := filepath.Join(t.TempDir(), "decisions.jsonl")
	// A small queue forces backpressure while the writers race Close.
	l, err := decisionlog.New(decisionlog.Config{Output: "file", Path: path, QueueSize: 64}, decisionlog.Options{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				if err := l.Log(context.Background(), event(fmt.Sprintf("w%d-%d", w, i))); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Log: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(raw, []byte("\n")); n != writers*perWriter {
		t.Fatalf("%d lines after Close, want %d", n, writers*perWriter)
	}
	ids := map[string]bool{}
	for _, ev := range lines(t, raw) {
		id := ev["decision_id"].(string)
		if ids[id] {
			t.Fatalf("decision %s written twice", id)
		}
		ids[id] = true
	}
	if len(ids) != writers*perWriter {
		t.Fatalf("%d distinct decision ids, want %d", len(ids), writers*perWriter)
	}
	if written, failed := l.Stats(); written != writers*perWriter || failed != 0 {
		t.Errorf("Stats() = %d written, %d failed", written, failed)
	}
}

func TestLogAfterClose(t *testing.T) {
	var out lockedBuffer
	l, err := decisionlog.New(decisionlog.Config{}, decisionlog.Options{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Log(context.Background(), event("before")); err != nil {
		t.Fatalf("Log: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Log(context.Background(), event("after")); err == nil {
		t.Fatal("Log after Close returned nil: the event would be lost silently")
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	evs := lines(t, out.Bytes())
	if len(evs) != 1 || evs[0]["decision_id"] != "before" {
		t.Fatalf("output %v, want only the event logged before Close", evs)
	}
}

// TestFlushInterval: a written event reaches the output within the flush
// interval, without Close.
func TestFlushInterval(t *testing.T) {
	w := &notifyWriter{wrote: make(chan struct{}, 1)}
	l, err := decisionlog.New(decisionlog.Config{FlushInterval: "1ms"}, decisionlog.Options{Stdout: w})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Log(context.Background(), event("flushed")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.wrote:
	case <-time.After(waitBound):
		t.Fatal("event not flushed to the output before Close")
	}
	if !bytes.Contains(w.Bytes(), []byte(`"decision_id":"flushed"`)) {
		t.Fatalf("output %q", w.Bytes())
	}
}

// TestFullQueueWaits: with the writer stuck and the queue full, Log waits
// for room and gives up only with an error when its context ends.
func TestFullQueueWaits(t *testing.T) {
	w := newBlockingWriter()
	l, err := decisionlog.New(decisionlog.Config{QueueSize: 1}, decisionlog.Options{Stdout: w})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// An event larger than the write buffer goes straight to the writer,
	// which blocks the log's writer goroutine.
	big := event("big")
	big.Source.Request.Body = strings.Repeat("x", 100<<10)
	if err := l.Log(ctx, big); err != nil {
		t.Fatalf("Log big: %v", err)
	}
	select {
	case <-w.entered:
	case <-time.After(waitBound):
		t.Fatal("writer never called")
	}
	if err := l.Log(ctx, event("queued")); err != nil { // fills the queue
		t.Fatalf("Log queued: %v", err)
	}

	t.Run("context already done", func(t *testing.T) {
		done, cancel := context.WithCancel(ctx)
		cancel()
		if err := l.Log(done, event("refused-now")); !errors.Is(err, context.Canceled) {
			t.Fatalf("Log on a full queue with a done context = %v, want context.Canceled", err)
		}
	})
	t.Run("context ends while waiting", func(t *testing.T) {
		waitCtx, cancel := context.WithCancel(ctx)
		res := make(chan error, 1)
		go func() { res <- l.Log(waitCtx, event("refused-later")) }()
		select {
		case err := <-res:
			t.Fatalf("Log returned %v while the queue was full, want it to wait", err)
		default:
		}
		cancel()
		select {
		case err := <-res:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Log = %v, want context.Canceled", err)
			}
		case <-time.After(waitBound):
			t.Fatal("Log ignored its context's cancellation")
		}
	})

	// A waiting Log succeeds once the writer drains.
	waited := make(chan error, 1)
	go func() { waited <- l.Log(ctx, event("waited")) }()
	close(w.release)
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("Log after the writer resumed: %v", err)
		}
	case <-time.After(waitBound):
		t.Fatal("Log still waiting after the writer resumed")
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	var got []string
	for _, ev := range lines(t, w.Bytes()) {
		got = append(got, ev["decision_id"].(string))
	}
	if want := []string{"big", "queued", "waited"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("written %v, want %v", got, want)
	}
	if written, failed := l.Stats(); written != 3 || failed != 0 {
		t.Errorf("Stats() = %d written, %d failed; want 3, 0", written, failed)
	}
}

// secretInput carries one distinct secret value per place a credential or
// masked field can hide.
func secretInput() *decision.Input {
	return &decision.Input{
		Request: decision.Request{
			ID:     "masked-1",
			Method: "POST",
			Path:   "/api/users",
			Headers: map[string]string{
				"authorization":       "Bearer SECRET-AUTHZ",
				"proxy-authorization": "Basic SECRET-PROXY",
				"cookie":              "session=SECRET-COOKIE",
				"x-api-key":           "SECRET-APIKEY",
				"x-service-key":       "SECRET-CUSTOM",
				"user-agent":          "curl/8",
			},
			Query: map[string][]string{
				"access_token": {"SECRET-Q-ACCESS"},
				"token":        {"SECRET-Q-TOKEN"},
				"API_KEY":      {"SECRET-Q-APIKEY"},
				"page":         {"2"},
			},
			Body: map[string]any{
				"username": "ci-bot",
				"password": "SECRET-PASSWORD",
				"Secret":   "SECRET-SECRET",
				"nested": map[string]any{
					"token":  "SECRET-NESTED-TOKEN",
					"deeper": map[string]any{"client_secret": "SECRET-CLIENT", "keep": "visible"},
				},
				"keys": []any{
					map[string]any{"private_key": "SECRET-PK0"},
					map[string]any{"name": "k1", "private_key": "SECRET-PK1"},
					[]any{map[string]any{"password": "SECRET-ARRAY-IN-ARRAY"}},
				},
				"profile":    map[string]any{"ssn": "SECRET-SSN", "city": "Lyon"},
				"card":       "SECRET-CARD",
				"dotted.key": "SECRET-DOTTED",
				"a/b":        "SECRET-SLASHED",
			},
		},
		Identity: decision.Identity{
			Authenticated: true, Method: decision.MethodAPIKey, Subject: "ci-bot",
			Groups: []string{}, Claims: map[string]any{"email": "SECRET-EMAIL", "tier": "gold"},
		},
		Route: decision.Route{Name: "users"},
	}
}

func TestMasking(t *testing.T) {
	in := secretInput()
	before, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	d := &decision.Decision{
		ID: in.Request.ID, Path: "data.gate.decision", Input: in, Timestamp: time.Unix(0, 0),
		Result: decision.Result{
			Allow: true, Outcome: decision.OutcomeAllow,
			// The policy's own mask, in both path forms.
			Mask: []string{"input.request.body.card", "/input/request/body/dotted.key", "/input/request/body/a~1b", "input.request.body.absent"},
		},
	}
	var out lockedBuffer
	l, err := decisionlog.New(decisionlog.Config{
		Mask: []string{"input.request.body.profile.ssn", "/input/identity/claims/email"},
	}, decisionlog.Options{Stdout: &out, CredentialHeaders: []string{"X-Service-Key"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Log(context.Background(), decision.NewEvent(d, decision.Completion{Status: 200})); err != nil {
		t.Fatalf("Log: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	raw := out.Bytes()

	for _, secret := range []string{
		"SECRET-AUTHZ", "SECRET-PROXY", "SECRET-COOKIE", "SECRET-APIKEY", "SECRET-CUSTOM",
		"SECRET-Q-ACCESS", "SECRET-Q-TOKEN", "SECRET-Q-APIKEY",
		"SECRET-PASSWORD", "SECRET-SECRET", "SECRET-NESTED-TOKEN", "SECRET-CLIENT", "SECRET-PK0", "SECRET-PK1",
		"SECRET-ARRAY-IN-ARRAY", "SECRET-SSN", "SECRET-CARD", "SECRET-DOTTED", "SECRET-SLASHED", "SECRET-EMAIL",
	} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("secret %s reached the log", secret)
		}
	}
	if bytes.Contains(raw, []byte("SECRET")) {
		t.Errorf("log output still holds a secret: %s", raw)
	}
	// Everything else is kept.
	for _, keep := range []string{`"ci-bot"`, `"visible"`, `"Lyon"`, `"gold"`, `"curl/8"`, `"page"`, `"k1"`} {
		if !bytes.Contains(raw, []byte(keep)) {
			t.Errorf("log output lost %s", keep)
		}
	}

	evs := lines(t, raw)
	if len(evs) != 1 {
		t.Fatalf("%d events, want 1", len(evs))
	}
	var erased []string
	for _, p := range evs[0]["erased"].([]any) {
		erased = append(erased, p.(string))
	}
	want := []string{
		"/input/identity/claims/email",
		"/input/request/body/Secret",
		"/input/request/body/a~1b",
		"/input/request/body/card",
		"/input/request/body/dotted.key",
		"/input/request/body/keys/0/private_key",
		"/input/request/body/keys/1/private_key",
		"/input/request/body/keys/2/0/password",
		"/input/request/body/nested/deeper/client_secret",
		"/input/request/body/nested/token",
		"/input/request/body/password",
		"/input/request/body/profile/ssn",
		"/input/request/headers/authorization",
		"/input/request/headers/cookie",
		"/input/request/headers/proxy-authorization",
		"/input/request/headers/x-api-key",
		"/input/request/headers/x-service-key",
		"/input/request/query/API_KEY",
		"/input/request/query/access_token",
		"/input/request/query/token",
	}
	if !reflect.DeepEqual(erased, want) {
		t.Errorf("erased =\n  %q\nwant\n  %q", erased, want)
	}

	// Masking touched the log's copy only: the request still carries every
	// field to the upstream.
	after, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("the decision input changed while logging:\nbefore %s\nafter  %s", before, after)
	}
	body := in.Request.Body.(map[string]any)
	if body["password"] != "SECRET-PASSWORD" || in.Request.Headers["authorization"] != "Bearer SECRET-AUTHZ" ||
		in.Request.Query["access_token"][0] != "SECRET-Q-ACCESS" || in.Identity.Claims["email"] != "SECRET-EMAIL" {
		t.Errorf("the request lost a field to masking: %+v", in.Request)
	}
}

// TestMaskingEncodeEachEvent: every event is masked on its own, so one
// event's policy mask never leaks into another's.
func TestMaskingEncodeEachEvent(t *testing.T) {
	l, err := decisionlog.New(decisionlog.Config{}, decisionlog.Options{Stdout: &lockedBuffer{}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	mk := func(mask []string) *decision.Event {
		in := &decision.Input{Request: decision.Request{ID: "x", Body: map[string]any{"ssn": "123-45"}}}
		return decision.NewEvent(&decision.Decision{ID: "x", Input: in, Result: decision.Result{Mask: mask}}, decision.Completion{})
	}
	masked, err := l.Encode(mk([]string{"input.request.body.ssn"}))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := l.Encode(mk(nil))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(masked, []byte("123-45")) || !bytes.Contains(plain, []byte("123-45")) {
		t.Fatalf("masked %s\nplain %s", masked, plain)
	}
}

func TestLogInjection(t *testing.T) {
	const inject = "a\r\n{\"decision_id\":\"fake\"}\n\u2028\u2029"
	tests := []struct {
		name string
		edit func(in *decision.Input)
	}{
		{name: "user agent", edit: func(in *decision.Input) { in.Request.Headers["user-agent"] = inject }},
		{name: "path", edit: func(in *decision.Input) { in.Request.Path, in.Request.RawPath = "/x"+inject, "/x"+inject }},
		{name: "query", edit: func(in *decision.Input) { in.Request.Query = map[string][]string{inject: {inject}} }},
		{name: "body key and value", edit: func(in *decision.Input) { in.Request.Body = map[string]any{inject: inject} }},
		{name: "subject", edit: func(in *decision.Input) { in.Identity.Subject = inject }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out lockedBuffer
			l, err := decisionlog.New(decisionlog.Config{}, decisionlog.Options{Stdout: &out})
			if err != nil {
				t.Fatal(err)
			}
			in := &decision.Input{
				Request:  decision.Request{ID: "real-id", Method: "GET", Path: "/", Headers: map[string]string{"user-agent": "ua"}},
				Identity: decision.Anonymous(),
			}
			tt.edit(in)
			ev := decision.NewEvent(&decision.Decision{ID: "real-id", Input: in, Timestamp: time.Unix(0, 0)}, decision.Completion{Status: 403})
			if err := l.Log(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			raw := out.Bytes()
			if n := bytes.Count(raw, []byte("\n")); n != 1 {
				t.Fatalf("one event wrote %d lines:\n%s", n, raw)
			}
			if bytes.ContainsAny(raw[:len(raw)-1], "\r\u2028\u2029") {
				t.Errorf("raw line separators in the output: %q", raw)
			}
			evs := lines(t, raw)
			if len(evs) != 1 || evs[0]["decision_id"] != "real-id" {
				t.Fatalf("events %v, want exactly the real one", evs)
			}
			if !bytes.Contains(raw, []byte(`"decision_id":"real-id"`)) || bytes.Count(raw, []byte(`"decision_id":`)) != 1 {
				t.Errorf("injected decision_id escaped its string: %s", raw)
			}
		})
	}
	t.Run("value round-trips", func(t *testing.T) {
		var out lockedBuffer
		l, err := decisionlog.New(decisionlog.Config{}, decisionlog.Options{Stdout: &out})
		if err != nil {
			t.Fatal(err)
		}
		ev := event("real-id")
		ev.Source.Request.Headers["user-agent"] = inject
		if err := l.Log(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		evs := lines(t, out.Bytes())
		got := evs[0]["input"].(map[string]any)["request"].(map[string]any)["headers"].(map[string]any)["user-agent"]
		if got != inject {
			t.Fatalf("user-agent logged as %q, want %q", got, inject)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  decisionlog.Config
		want []string // substrings; none means valid
	}{
		{name: "zero", cfg: decisionlog.Config{}},
		{name: "stdout", cfg: decisionlog.Config{Output: "stdout", FlushInterval: "50ms", QueueSize: 10}},
		{name: "file", cfg: decisionlog.Config{Output: "file", Path: "/tmp/x.jsonl"}},
		{name: "mask forms", cfg: decisionlog.Config{Mask: []string{"input.request.body.ssn", "/input/request/body/a.b"}}},

		{name: "unknown output", cfg: decisionlog.Config{Output: "syslog"}, want: []string{"output:", "syslog"}},
		{name: "file without path", cfg: decisionlog.Config{Output: "file"}, want: []string{"path:", "required"}},
		{name: "stdout with path", cfg: decisionlog.Config{Output: "stdout", Path: "/tmp/x"}, want: []string{"path:"}},
		{name: "mask without input", cfg: decisionlog.Config{Mask: []string{"request.body.ssn"}}, want: []string{"mask[0]:"}},
		{name: "mask only input", cfg: decisionlog.Config{Mask: []string{"input.request", "input"}}, want: []string{"mask[1]:"}},
		{name: "mask empty segment", cfg: decisionlog.Config{Mask: []string{"input.request.body.ssn", "/input//x", "input..x"}}, want: []string{"mask[1]:", "mask[2]:"}},
		{name: "negative queue", cfg: decisionlog.Config{QueueSize: -1}, want: []string{"queue_size:"}},
		{name: "bad flush interval", cfg: decisionlog.Config{FlushInterval: "x"}, want: []string{"flush_interval:"}},
		{name: "negative flush interval", cfg: decisionlog.Config{FlushInterval: "-1s"}, want: []string{"flush_interval:"}},
		{name: "zero flush interval", cfg: decisionlog.Config{FlushInterval: "0s"}, want: []string{"flush_interval:"}},
		{
			name: "all reported",
			cfg:  decisionlog.Config{Output: "file", Mask: []string{"x"}, FlushInterval: "soon"},
			want: []string{"path:", "mask[0]:", "flush_interval:"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want errors naming %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
			if l, nerr := decisionlog.New(tt.cfg, decisionlog.Options{Stdout: &lockedBuffer{}}); nerr == nil {
				l.Close()
				t.Errorf("New accepted a config Validate rejects")
			}
		})
	}
	t.Run("unopenable file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "missing-dir", "decisions.jsonl")
		if _, err := decisionlog.New(decisionlog.Config{Output: "file", Path: path}, decisionlog.Options{}); err == nil || !strings.Contains(err.Error(), path) {
			t.Fatalf("New = %v, want an error naming %s", err, path)
		}
	})
}
