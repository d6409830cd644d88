package log_test

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/policygate/policygate/decision"
	decisionlog "github.com/policygate/policygate/decision/log"
)

// Credentials travel inside URIs too: in headers that carry the original
// request-target (forward-auth's X-Original-URI, a trusted proxy's
// X-Forwarded-Uri, Referer, Envoy's :path) and in query strings split on
// ';' or hidden in a fragment. None reaches the log, on the direct
// encoding path (no mask, no Extra) nor the general one.
func TestURICredentialsErased(t *testing.T) {
	l := mustNew(t, decisionlog.Config{Output: "none", Upload: &decisionlog.UploadConfig{URL: "http://127.0.0.1:1/", MaxDelay: "10ms"}}, decisionlog.Options{})
	headers := map[string]string{
		"x-original-uri":  "/v1/keys?access_token=SECRET-1&page=2",
		"x-forwarded-uri": "/v1/keys?page=2;token=SECRET-2",
		"referer":         "https://app.test/cb#access_token=SECRET-3&state=s",
		"user-agent":      "curl/8 (what?)",
	}
	for _, tc := range []struct {
		name  string
		extra map[string]any
		mask  []string
	}{
		{"direct", nil, nil},
		{"general (policy mask)", nil, []string{"input.request.body.x"}},
		{"general (ext_authz)", map[string]any{"attributes": map[string]any{"request": map[string]any{"http": map[string]any{
			"path":    "/v1/keys?page=2;access_token=SECRET-4#x",
			"headers": map[string]any{":path": "/v1/keys?access_token=SECRET-5", "referer": "/x#id_token=SECRET-6"},
			"headerMap": map[string]any{"headers": []any{
				map[string]any{"key": ":path", "rawValue": base64.StdEncoding.EncodeToString([]byte("/v1?token=SECRET-7"))},
				map[string]any{"key": "x-original-uri", "value": "/v1?client_secret=SECRET-8"},
			}},
		}}}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := map[string]string{}
			for k, v := range headers {
				h[k] = v
			}
			in := &decision.Input{Request: decision.Request{ID: "id", Method: "GET", Path: "/v1/keys", Headers: h}, Identity: decision.Anonymous(), Extra: tc.extra}
			d := &decision.Decision{ID: "id", Path: "data.x.allow", Input: in, Result: decision.Result{Outcome: decision.OutcomeAllow, Allow: true, Mask: tc.mask}}
			line, err := l.Encode(decision.NewEvent(d, decision.Completion{Status: 200}))
			if err != nil {
				t.Fatal(err)
			}
			if i := strings.Index(string(line), "SECRET"); i >= 0 {
				t.Fatalf("log holds a credential: …%s…", line[max(0, i-80):min(len(line), i+20)])
			}
			for _, keep := range []string{"page=2", "state=s", "curl/8 (what?)", `"/input/request/headers/referer"`} {
				if !strings.Contains(string(line), keep) {
					t.Errorf("lost %q: %s", keep, line)
				}
			}
			if h["x-original-uri"] != headers["x-original-uri"] {
				t.Error("masking reached the request")
			}
		})
	}
}
