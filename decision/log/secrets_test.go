package log_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
	decisionlog "github.com/policygate/policygate/decision/log"
)

// credentialInput carries a credential, each containing "SECRET", in every
// form a request can hold one, including the ext_authz (opa-envoy) fields.
func credentialInput(id string) *decision.Input {
	return &decision.Input{
		Request: decision.Request{
			ID: id, Method: "POST", Path: "/v1/keys", Segments: []string{"v1", "keys"},
			Headers: map[string]string{
				"authorization":             "Bearer SECRET-1",
				"proxy-authorization":       "Basic SECRET-2",
				"cookie":                    "sid=SECRET-3",
				"set-cookie":                "sid=SECRET-4",
				"x-api-key":                 "SECRET-5",
				"x-auth-token":              "SECRET-6",
				"x-service-key":             "SECRET-7", // the configured API-key header
				"x-vault-token":             "SECRET-8",
				"x-goog-api-key":            "SECRET-9",
				"x-amz-security-token":      "SECRET-10",
				"x-forwarded-authorization": "Bearer SECRET-11",
				"private-token":             "SECRET-12",
				"user-agent":                "curl/8\r\n{\"decision_id\":\"forged\"}\u2028",
			},
			Query: map[string][]string{
				"access_token": {"SECRET-20"}, "token": {"SECRET-21"}, "api_key": {"SECRET-22"},
				"APIKEY": {"SECRET-23"}, "X-Amz-Signature": {"SECRET-24"}, "X-Amz-Credential": {"SECRET-25"},
				"client_secret": {"SECRET-26"}, "refresh_token": {"SECRET-27"}, "id_token": {"SECRET-28"},
				"page": {"2"},
			},
			Body: map[string]any{
				"name":          "deployer",
				"password":      "SECRET-30",
				"secret":        "SECRET-31",
				"token":         "SECRET-32",
				"client_secret": "SECRET-33",
				"private_key":   "SECRET-34",
				"config": map[string]any{
					"db_password":  "SECRET-35",
					"clientSecret": "SECRET-36",
					"passphrase":   "SECRET-37",
					"credentials":  map[string]any{"user": "SECRET-38"},
				},
				"keys":   []any{map[string]any{"privateKey": "SECRET-39", "kid": "k1"}},
				"ssn":    "SECRET-40", // configured mask
				"card":   "SECRET-41", // the policy's mask
				"ttl":    json.Number("3600"),
				"fields": map[string]any{"password": []any{"SECRET-42"}}, // a form body
			},
		},
		Identity: decision.Identity{Authenticated: true, Method: decision.MethodAPIKey, Subject: "ci", Groups: []string{"ci"}, Claims: map[string]any{"email": "SECRET-50"}},
		Route:    decision.Route{Name: "keys"},
		Extra: map[string]any{
			"attributes": map[string]any{"request": map[string]any{"http": map[string]any{
				"method":    "POST",
				"path":      "/v1/keys?access_token=SECRET-60&page=2",
				"headers":   map[string]any{"authorization": "Bearer SECRET-61", "x-api-key": "SECRET-62", "user-agent": "envoy"},
				"headerMap": map[string]any{"headers": []any{map[string]any{"key": "cookie", "value": "SECRET-63"}, map[string]any{"key": "accept", "value": "*/*"}}},
				"rawBody":   "password=SECRET-64",
				"body":      `{"password":"SECRET-65"}`,
			}}},
			"parsed_query": map[string]any{"token": []any{"SECRET-66"}, "page": []any{"2"}},
			"parsed_body":  map[string]any{"password": "SECRET-67", "name": "deployer"},
		},
	}
}

func credentialEvent(id string) *decision.Event {
	in := credentialInput(id)
	d := &decision.Decision{
		ID: id, Path: "data.keys.decision", Input: in, Timestamp: time.Unix(0, 0),
		Result: decision.Result{Allow: true, Outcome: decision.OutcomeAllow, Mask: []string{"input.request.body.card"}},
	}
	return decision.NewEvent(d, decision.Completion{Status: 200})
}

// TestNoCredentialInAnySink logs credentials in every form through every
// sink — stdout, file, upload, and the durable spool — and finds none of
// them in any output; each request stays one line, and the request itself
// keeps every field.
func TestNoCredentialInAnySink(t *testing.T) {
	dir := t.TempDir()
	col := newCollector(t)
	stdout := &safeBuffer{}
	path := filepath.Join(dir, "decisions.jsonl")
	spool := filepath.Join(dir, "spool")
	mask := []string{"input.request.body.ssn", "input.identity.claims.email"}
	upload := &decisionlog.UploadConfig{URL: col.URL(), MaxDelay: "10ms"}
	loggers := []*decisionlog.Logger{
		mustNew(t, decisionlog.Config{Mask: mask, Upload: upload}, decisionlog.Options{Stdout: stdout, CredentialHeaders: []string{"X-Service-Key"}}),
		mustNew(t, decisionlog.Config{Output: "file", Path: path, Mask: mask, Upload: upload, Delivery: "durable", SpoolDir: spool},
			decisionlog.Options{CredentialHeaders: []string{"X-Service-Key"}}),
	}
	before, _ := json.Marshal(credentialInput("x"))
	for i, l := range loggers {
		ev := credentialEvent("cred-" + itoa(i))
		if err := l.LogSync(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	col.waitFor([]string{"cred-0", "cred-1"}, bound)
	// The spool is checked before Close: delivered segments may be deleted.
	var spooled []byte
	segs, _ := filepath.Glob(filepath.Join(spool, "*"))
	for _, s := range segs {
		raw, _ := os.ReadFile(s)
		spooled = append(spooled, raw...)
	}
	if !bytes.Contains(spooled, []byte("cred-1")) {
		t.Fatalf("the spool does not hold the event")
	}
	for _, l := range loggers {
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	file, _ := os.ReadFile(path)
	outputs := map[string][]byte{"stdout": stdout.Bytes(), "file": file, "upload": col.allBodies(), "spool": spooled}
	for name, out := range outputs {
		if len(out) == 0 {
			t.Errorf("%s: no output", name)
		}
		if i := bytes.Index(out, []byte("SECRET")); i >= 0 {
			t.Errorf("%s holds a credential: …%s…", name, out[max(0, i-60):min(len(out), i+20)])
		}
		for _, keep := range []string{`"deployer"`, `"page"`, `"kid":"k1"`, `"ttl":3600`, `"envoy"`, `"accept"`} {
			if !bytes.Contains(out, []byte(keep)) {
				t.Errorf("%s lost the non-secret %s", name, keep)
			}
		}
	}
	for name, out := range map[string][]byte{"stdout": stdout.Bytes(), "file": file} {
		if n := len(eventIDs(t, out)); n != 1 || bytes.Count(out, []byte("\n")) != 1 {
			t.Errorf("%s: %d events in %d lines, want one line", name, n, bytes.Count(out, []byte("\n")))
		}
		if bytes.ContainsAny(out[:len(out)-1], "\r\n\u2028") {
			t.Errorf("%s: raw line separator inside an event", name)
		}
	}
	after, _ := json.Marshal(credentialInput("x"))
	if !bytes.Equal(before, after) {
		t.Errorf("building the input changed between runs: the test is broken")
	}
	// Masking works on the log's copy: the decision input still has all.
	in := credentialInput("y")
	l := loggers[0]
	if _, err := l.Encode(decision.NewEvent(&decision.Decision{ID: "y", Input: in}, decision.Completion{})); err != nil {
		t.Fatal(err)
	}
	if in.Request.Headers["authorization"] != "Bearer SECRET-1" || in.Request.Body.(map[string]any)["password"] != "SECRET-30" ||
		in.Extra["parsed_body"].(map[string]any)["password"] != "SECRET-67" {
		t.Errorf("masking reached the request")
	}
}
