package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/policygate/policygate/testdata/sampleapi"
)

const backendToken = "backend-admin-token-0d1e"

var (
	saAdmin   = demoKey{ID: "alice", Secret: "sa-admin-secret-91", Groups: "platform-admin"}
	saLead    = demoKey{ID: "payments-lead", Secret: "sa-lead-secret-27", Groups: `team-lead, "team:payments"`}
	saCI      = demoKey{ID: "payments-ci", Secret: "sa-ci-secret-55", Groups: `ci, "team:payments"`}
	saAuditor = demoKey{ID: "auditor", Secret: "sa-auditor-secret-13", Groups: "auditor"}
)

type sampleEnv struct {
	api     *sampleapi.API
	backend *httptest.Server
	gw      *gatewayProc
}

func startSampleEnv(t *testing.T) *sampleEnv {
	t.Helper()
	api := sampleapi.New(sampleapi.Options{RequireAuth: "Bearer " + backendToken, FollowLimit: 20 * time.Second})
	for _, a := range []sampleapi.NewAccount{
		{ID: "payments.deployer", Owner: "alice@example.com", Team: "payments"},
		{ID: "billing.exporter", Owner: "bob@example.com", Team: "billing"},
	} {
		if _, err := api.CreateAccount(a); err != nil {
			t.Fatal(err)
		}
	}
	backend := httptest.NewServer(api)
	t.Cleanup(backend.Close)
	cfg := fmt.Sprintf(`server:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
policy:
  dir: %s
authn:
  api_key_header: X-Api-Key
  api_keys:
%s%s%s%sroutes:
  - name: sampleapi
    path_prefix: /
    upstream: %s
    policy: sampleapi/decision
    labels: {api: sample}
    upstream_auth:
      type: bearer
      token_file: backend.token
decision_log:
  output: file
  path: LOGFILE
  flush_interval: 5ms
`, repoPath(t, "policies"), saAdmin.yaml(), saLead.yaml(), saCI.yaml(), saAuditor.yaml(), backend.URL)
	gw := startGateway(t, cfg, map[string]string{"backend.token": backendToken + "\n"})
	return &sampleEnv{api: api, backend: backend, gw: gw}
}

func (e *sampleEnv) do(t *testing.T, base string, method, path string, h map[string]string, body string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	if body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func bearer(k demoKey) map[string]string {
	return map[string]string{"Authorization": "Bearer " + k.Secret}
}

// TestSampleAPIThroughGateway drives the sample NHI admin API through the
// real server with the shipped policy: allowed calls pass through
// unchanged, denied calls never reach the backend, the backend's own
// credential is brokered, and every call leaves one matching, secret-free
// decision event.
func TestSampleAPIThroughGateway(t *testing.T) {
	e := startSampleEnv(t)
	direct := map[string]string{"Authorization": "Bearer " + backendToken}

	t.Run("allowed read passes through unchanged", func(t *testing.T) {
		gwResp, gwBody := e.do(t, e.gw.URL, "GET", "/v1/service-accounts/payments.deployer", bearer(saAuditor), "")
		dResp, dBody := e.do(t, e.backend.URL, "GET", "/v1/service-accounts/payments.deployer", direct, "")
		if gwResp.StatusCode != 200 || dResp.StatusCode != 200 {
			t.Fatalf("status gateway %d direct %d: %s", gwResp.StatusCode, dResp.StatusCode, gwBody)
		}
		if string(gwBody) != string(dBody) {
			t.Fatalf("body differs:\n gateway %s\n direct  %s", gwBody, dBody)
		}
		for _, h := range []string{"Content-Type", "Content-Length", "X-Content-Type-Options"} {
			if gwResp.Header.Get(h) != dResp.Header.Get(h) {
				t.Errorf("header %s: gateway %q direct %q", h, gwResp.Header.Get(h), dResp.Header.Get(h))
			}
		}
		if gwResp.Header.Get("X-Sample-Request-Id") == "" {
			t.Error("upstream response header X-Sample-Request-Id not passed through")
		}
		ev := e.gw.WaitEvent(t, gwResp.Header.Get("X-Decision-Id"))
		if ev["decision"] != "allow" || ev["subject"] != "auditor" || ev["status"].(float64) != 200 || ev["upstream_status"].(float64) != 200 {
			t.Errorf("event %v", ev)
		}
		if at(ev, "bundles", "policies", "revision") == nil {
			t.Errorf("event lacks the bundle revision: %v", ev["bundles"])
		}
	})

	t.Run("backend credential is brokered, client credential removed", func(t *testing.T) {
		resp, body := e.do(t, e.gw.URL, "GET", "/v1/debug/request?x=1", bearer(saAdmin), "")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		var dbg sampleapi.DebugRequest
		if err := json.Unmarshal(body, &dbg); err != nil {
			t.Fatal(err)
		}
		if dbg.Authorization != "Bearer "+backendToken {
			t.Fatalf("backend got Authorization %q", dbg.Authorization)
		}
		if strings.Contains(string(body), saAdmin.Secret) {
			t.Fatal("the client's key reached the backend")
		}
		if dbg.XForwardedFor != "127.0.0.1" || dbg.XForwardedProto != "http" {
			t.Errorf("forwarding headers: for %q proto %q", dbg.XForwardedFor, dbg.XForwardedProto)
		}
		if dbg.RequestURI != "/v1/debug/request?x=1" {
			t.Errorf("backend got %q", dbg.RequestURI)
		}
	})

	t.Run("lifecycle allowed for the owning team", func(t *testing.T) {
		resp, body := e.do(t, e.gw.URL, "POST", "/v1/service-accounts", bearer(saLead),
			`{"id":"payments.reporter","owner":"lead@example.com","team":"payments"}`)
		if resp.StatusCode != 201 {
			t.Fatalf("create: %d %s", resp.StatusCode, body)
		}
		resp, body = e.do(t, e.gw.URL, "POST", "/v1/service-accounts/payments.reporter/keys", map[string]string{"X-Api-Key": saCI.Secret}, `{"ttl_seconds": 3600}`)
		if resp.StatusCode != 201 {
			t.Fatalf("ci key: %d %s", resp.StatusCode, body)
		}
		resp, body = e.do(t, e.gw.URL, "POST", "/v1/service-accounts/payments.reporter/suspend",
			map[string]string{"Authorization": basicAuth(saLead.ID, saLead.Secret)}, "")
		if resp.StatusCode != 200 {
			t.Fatalf("suspend via Basic: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("denied calls never reach the backend", func(t *testing.T) {
		cases := []struct {
			name, method, path string
			h                  map[string]string
			body               string
			status             int
		}{
			{"unauthenticated", "GET", "/v1/service-accounts", nil, "", 401},
			{"wrong key", "GET", "/v1/service-accounts", map[string]string{"X-Api-Key": "nope"}, "", 401},
			{"auditor writes", "DELETE", "/v1/service-accounts/payments.deployer", bearer(saAuditor), "", 403},
			{"ci long-lived key", "POST", "/v1/service-accounts/payments.deployer/keys", bearer(saCI), `{"ttl_seconds": 604800}`, 403},
			{"ci other team", "POST", "/v1/service-accounts/billing.exporter/keys", bearer(saCI), `{"ttl_seconds": 60}`, 403},
			{"lead other team", "DELETE", "/v1/service-accounts/billing.exporter", bearer(saLead), "", 403},
			{"lead creates for another team", "POST", "/v1/service-accounts", bearer(saLead), `{"id":"billing.x","owner":"o","team":"billing"}`, 403},
			{"smuggled dot-segment", "DELETE", "/v1/service-accounts/payments.deployer/../billing.exporter", bearer(saLead), "", 400},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				before := e.api.Requests()
				resp, body := e.do(t, e.gw.URL, tc.method, tc.path, tc.h, tc.body)
				if resp.StatusCode != tc.status {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
				}
				if after := e.api.Requests(); after != before {
					t.Fatalf("backend received %d request(s) for a denied call (last %s)", after-before, e.api.LastRequest())
				}
				id := resp.Header.Get("X-Decision-Id")
				if !strings.Contains(string(body), id) {
					t.Fatalf("denial body %s lacks decision id %s", body, id)
				}
				ev := e.gw.WaitEvent(t, id)
				if ev["allowed"] != false || ev["status"].(float64) != float64(tc.status) {
					t.Fatalf("event %v", ev)
				}
			})
		}
	})

	t.Run("streaming response is not buffered", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", e.gw.URL+"/v1/events?follow=1", nil)
		req.Header.Set("Authorization", "Bearer "+saAuditor.Secret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		lines := make(chan string, 100)
		go func() {
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// A change made while the stream is open must arrive on it while the
		// upstream response is still in progress.
		r2, b2 := e.do(t, e.gw.URL, "POST", "/v1/service-accounts", bearer(saAdmin),
			`{"id":"payments.streamed","owner":"o@example.com","team":"payments"}`)
		if r2.StatusCode != 201 {
			t.Fatalf("create: %d %s", r2.StatusCode, b2)
		}
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("stream ended before the new event arrived")
				}
				if strings.Contains(l, "payments.streamed") {
					return
				}
			case <-ctx.Done():
				t.Fatal("new event not streamed within the timeout")
			}
		}
	})

	t.Run("no credential reaches the log", func(t *testing.T) {
		e.gw.Stop(t) // flushes the log
		raw, err := os.ReadFile(e.gw.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range []string{saAdmin.Secret, saLead.Secret, saCI.Secret, saAuditor.Secret, backendToken, "nope",
			basicAuth(saLead.ID, saLead.Secret)} {
			if strings.Contains(string(raw), secret) {
				t.Errorf("decision log contains credential %q", secret)
			}
		}
		if n := strings.Count(string(raw), "\n"); n < 12 {
			t.Errorf("only %d events logged", n)
		}
	})
}
