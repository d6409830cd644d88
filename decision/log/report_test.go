package log_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
	decisionlog "github.com/policygate/policygate/decision/log"
)

// reviewLog writes a log for the access-review tests: two revisions of the
// policy, labelled and unlabelled actions, an anonymous caller, and one
// event delivered twice.
func reviewLog(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "decisions.jsonl")
	l := mustNew(t, decisionlog.Config{Output: "file", Path: path}, decisionlog.Options{})
	day := func(d int) time.Time { return time.Date(2025, 6, d, 12, 0, 0, 0, time.UTC) }
	type call struct {
		id, subject, method, path string
		allow                     bool
		action, rev               string
		at                        time.Time
	}
	calls := []call{
		{"1", "alice", "POST", "/v1/service-accounts/payments.deployer/keys", true, "key.create", "r1", day(1)},
		{"2", "alice", "POST", "/v1/service-accounts/payments.api/keys", true, "key.create", "r2", day(2)},
		{"3", "alice", "DELETE", "/v1/service-accounts/payments.api", false, "", "r2", day(2)},
		{"4", "alice", "GET", "/v1/service-accounts", true, "", "r2", day(3)},
		{"5", "", "GET", "/admin/users", false, "", "r2", day(3)},
		{"6", "ci-payments", "PUT", "/api/users/ci-payments-bot", true, "", "r2", day(4)},
		{"7", "ci-payments", "PUT", "/api/users/ci-payments-bot", false, "", "r2", day(5)},
	}
	for _, c := range calls {
		ev := reqEvent(c.id, c.subject, c.method, c.path, c.allow)
		ev.Timestamp = c.at
		ev.Bundles = map[string]decision.BundleInfo{"policies": {Revision: c.rev}}
		if c.action != "" {
			ev.Labels = map[string]string{"action": c.action, "team": "payments"}
		}
		if err := l.Log(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	// A replayed copy of event 3 must not count twice.
	ev := reqEvent("3", "alice", "DELETE", "/v1/service-accounts/payments.api", false)
	ev.Timestamp = day(2)
	ev.Bundles = map[string]decision.BundleInfo{"policies": {Revision: "r2"}}
	if err := l.Log(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestAccessReport(t *testing.T) {
	path := reviewLog(t)
	type row struct {
		subject, route, action string
		allowed, denied        int
		revisions              string
	}
	flatten := func(r *decisionlog.AccessReport) []row {
		var out []row
		for _, id := range r.Identities {
			for _, c := range id.Calls {
				out = append(out, row{id.Subject, c.Route, c.Action, c.Allowed, c.Denied, strings.Join(c.Revisions, " ")})
			}
		}
		return out
	}
	tests := []struct {
		name string
		opts decisionlog.ReportOptions
		want []row
	}{
		{
			name: "everything",
			want: []row{
				{"", "admin", "GET /admin/users", 0, 1, "policies@r2"},
				{"alice", "admin", "DELETE /v1/service-accounts/*", 0, 1, "policies@r2"},
				{"alice", "admin", "GET /v1/service-accounts", 1, 0, "policies@r2"},
				{"alice", "admin", "key.create", 2, 0, "policies@r1 policies@r2"},
				{"ci-payments", "admin", "PUT /api/users/ci-payments-bot", 1, 1, "policies@r2"},
			},
		},
		{
			name: "writes only, with an action pattern",
			opts: decisionlog.ReportOptions{WritesOnly: true, Actions: []string{"put /api/users/*"}},
			want: []row{
				{"alice", "admin", "DELETE /v1/service-accounts/*", 0, 1, "policies@r2"},
				{"alice", "admin", "key.create", 2, 0, "policies@r1 policies@r2"},
				{"ci-payments", "admin", "PUT /api/users/*", 1, 1, "policies@r2"},
			},
		},
		{
			name: "since and until",
			opts: decisionlog.ReportOptions{Since: time.Date(2025, 6, 2, 0, 0, 0, 0, time.UTC), Until: time.Date(2025, 6, 3, 0, 0, 0, 0, time.UTC)},
			want: []row{
				{"alice", "admin", "DELETE /v1/service-accounts/*", 0, 1, "policies@r2"},
				{"alice", "admin", "key.create", 1, 0, "policies@r2"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := decisionlog.BuildReport([]string{path}, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := flatten(rep); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("rows\n  %+v\nwant\n  %+v", got, tt.want)
			}
			if rep.Duplicates != 1 {
				t.Errorf("duplicates %d, want 1", rep.Duplicates)
			}
		})
	}
	t.Run("formats", func(t *testing.T) {
		rep, err := decisionlog.BuildReport([]string{path}, decisionlog.ReportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := rep.WriteCSV(&b); err != nil {
			t.Fatal(err)
		}
		recs, err := csv.NewReader(&b).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(recs[0], ",") != "subject,identity_method,route,action,allowed,denied,revisions,first_seen,last_seen" || len(recs) != 6 {
			t.Fatalf("csv %q", recs)
		}
		if got := strings.Join(recs[4], ","); got != "alice,api_key,admin,key.create,2,0,policies@r1 policies@r2,2025-06-01T12:00:00Z,2025-06-02T12:00:00Z" {
			t.Errorf("csv row %q", got)
		}
		b.Reset()
		if err := rep.WriteJSON(&b); err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Events     int `json:"events"`
			Identities []struct {
				Subject string `json:"subject"`
				Allowed int    `json:"allowed"`
				Denied  int    `json:"denied"`
			} `json:"identities"`
		}
		if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
			t.Fatal(err)
		}
		if doc.Events != 7 || len(doc.Identities) != 3 || doc.Identities[1].Subject != "alice" || doc.Identities[1].Allowed != 3 || doc.Identities[1].Denied != 1 {
			t.Errorf("json %s", b.Bytes())
		}
	})
	t.Run("bad action pattern", func(t *testing.T) {
		if _, err := decisionlog.BuildReport([]string{path}, decisionlog.ReportOptions{Actions: []string{"/no/method"}}); err == nil {
			t.Error("accepted an action without a method")
		}
	})
}

func TestConfigValidateDelivery(t *testing.T) {
	up := func(u decisionlog.UploadConfig) *decisionlog.UploadConfig { return &u }
	tests := []struct {
		name string
		cfg  decisionlog.Config
		want []string
	}{
		{name: "durable", cfg: decisionlog.Config{Delivery: "durable", SpoolDir: "/tmp/s", Fsync: "always", SpoolMaxSize: "64MiB"}},
		{name: "upload only", cfg: decisionlog.Config{Output: "none", Upload: up(decisionlog.UploadConfig{URL: "https://c.example/logs", BatchSize: 10, MaxDelay: "2s", Retry: decisionlog.RetryConfig{MinBackoff: "1s", MaxBackoff: "1m"}})}},
		{name: "rotation", cfg: decisionlog.Config{Output: "file", Path: "/tmp/d.jsonl", MaxSize: "100MiB", MaxAge: "24h", MaxFiles: 7}},
		{name: "checkpoint", cfg: decisionlog.Config{Checkpoint: &decisionlog.CheckpointConfig{SigningKeyFile: "k.pem", Every: "30s"}}},

		{name: "unknown delivery", cfg: decisionlog.Config{Delivery: "maybe"}, want: []string{"delivery:", "maybe"}},
		{name: "durable without spool", cfg: decisionlog.Config{Delivery: "durable"}, want: []string{"spool_dir: required"}},
		{name: "bad fsync", cfg: decisionlog.Config{Fsync: "sometimes"}, want: []string{"fsync:"}},
		{name: "bad fsync interval", cfg: decisionlog.Config{FsyncInterval: "0s"}, want: []string{"fsync_interval:"}},
		{name: "bad spool size", cfg: decisionlog.Config{SpoolMaxSize: "lots"}, want: []string{"spool_max_size:"}},
		{name: "rotation on stdout", cfg: decisionlog.Config{MaxSize: "1MiB", MaxFiles: 2}, want: []string{"max_size:", "max_files:"}},
		{name: "tiny max size", cfg: decisionlog.Config{Output: "file", Path: "/tmp/x", MaxSize: "100"}, want: []string{"max_size:"}},
		{name: "bad max age", cfg: decisionlog.Config{Output: "file", Path: "/tmp/x", MaxAge: "soon"}, want: []string{"max_age:"}},
		{name: "negative max files", cfg: decisionlog.Config{Output: "file", Path: "/tmp/x", MaxFiles: -1}, want: []string{"max_files:"}},
		{name: "none without upload", cfg: decisionlog.Config{Output: "none"}, want: []string{"output: none requires upload"}},
		{name: "upload without url", cfg: decisionlog.Config{Upload: up(decisionlog.UploadConfig{})}, want: []string{"upload.url: required"}},
		{name: "upload bad scheme", cfg: decisionlog.Config{Upload: up(decisionlog.UploadConfig{URL: "ftp://x/logs"})}, want: []string{"upload.url:"}},
		{name: "upload credentials in url", cfg: decisionlog.Config{Upload: up(decisionlog.UploadConfig{URL: "https://u:p@x/logs"})}, want: []string{"upload.url: credentials"}},
		{name: "upload reserved header", cfg: decisionlog.Config{Upload: up(decisionlog.UploadConfig{URL: "https://x/logs", Headers: map[string]string{"Content-Encoding": "br"}})}, want: []string{"upload.headers:"}},
		{
			name: "upload numbers and durations",
			cfg: decisionlog.Config{Upload: up(decisionlog.UploadConfig{URL: "https://x/logs", BatchSize: -1, BufferSize: -1, MaxBatchBytes: "x", MaxDelay: "x", Timeout: "-1s",
				Retry: decisionlog.RetryConfig{MinBackoff: "1m", MaxBackoff: "1s"}})},
			want: []string{"upload.batch_size:", "upload.buffer_size:", "upload.max_batch_bytes:", "upload.max_delay:", "upload.timeout:", "upload.retry.min_backoff:"},
		},
		{name: "checkpoint without key", cfg: decisionlog.Config{Checkpoint: &decisionlog.CheckpointConfig{Every: "x"}}, want: []string{"checkpoint.signing_key_file: required", "checkpoint.every:"}},
		{name: "bad shutdown grace", cfg: decisionlog.Config{ShutdownGrace: "forever"}, want: []string{"shutdown_grace:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
	t.Run("files are loaded by New and Check", func(t *testing.T) {
		dir := t.TempDir()
		cfg := decisionlog.Config{Checkpoint: &decisionlog.CheckpointConfig{SigningKeyFile: "missing.pem"}}
		for name, err := range map[string]error{
			"New": func() error {
				_, err := decisionlog.New(cfg, decisionlog.Options{BaseDir: dir, Stdout: &safeBuffer{}})
				return err
			}(),
			"Check": decisionlog.Check(cfg, decisionlog.Options{BaseDir: dir}),
		} {
			if err == nil || !strings.Contains(err.Error(), "checkpoint.signing_key_file") || !strings.Contains(err.Error(), filepath.Join(dir, "missing.pem")) {
				t.Errorf("%s = %v, want an error naming the key and the resolved file", name, err)
			}
		}
	})
}
