package sampleapi_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/policygate/policygate/testdata/sampleapi"
)

// streamTimeout bounds every wait on the event stream.
const streamTimeout = 5 * time.Second

var epoch = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type fixture struct {
	api   *sampleapi.API
	srv   *httptest.Server
	clock *clock
}

func newFixture(t *testing.T, opts sampleapi.Options) *fixture {
	t.Helper()
	c := &clock{t: epoch}
	if opts.Now == nil {
		opts.Now = c.Now
	}
	api := sampleapi.New(opts)
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	return &fixture{api: api, srv: srv, clock: c}
}

// do sends a request; a non-nil body is marshalled as JSON unless it is
// already a string.
func (f *fixture) do(t *testing.T, method, path string, body any, header ...string) (*http.Response, []byte) {
	t.Helper()
	resp, out, err := f.send(method, path, body, header...)
	if err != nil {
		t.Fatal(err)
	}
	return resp, out
}

// send is do for goroutines other than the test's: it reports errors
// instead of failing.
func (f *fixture) send(method, path string, body any, header ...string) (*http.Response, []byte, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return nil, nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, f.srv.URL+path, rd)
	if err != nil {
		return nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp, out, err
}

// want sends a request and checks its status and, for JSON responses, the
// Content-Type; it decodes the body into into when into is not nil.
func (f *fixture) want(t *testing.T, status int, method, path string, body, into any) []byte {
	t.Helper()
	resp, out := f.do(t, method, path, body)
	if resp.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d; body %s", method, path, resp.StatusCode, status, out)
	}
	if len(out) > 0 && path != "/healthz" {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" && ct != "application/x-ndjson" {
			t.Errorf("%s %s: Content-Type %q", method, path, ct)
		}
	}
	if into != nil {
		if err := json.Unmarshal(out, into); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, out, err)
		}
	}
	return out
}

func newAccount(id, team string) sampleapi.NewAccount {
	return sampleapi.NewAccount{ID: id, Team: team, Owner: "alice@example.com", Description: "test account"}
}

type list[T any] struct {
	Items []T `json:"items"`
}

func TestAccountLifecycle(t *testing.T) {
	f := newFixture(t, sampleapi.Options{})

	var acc sampleapi.Account
	f.want(t, http.StatusCreated, "POST", "/v1/service-accounts", newAccount("payments.deployer", "payments"), &acc)
	want := sampleapi.Account{
		ID: "payments.deployer", Team: "payments", Owner: "alice@example.com", Description: "test account",
		Status: sampleapi.StatusActive, CreatedAt: epoch, UpdatedAt: epoch,
	}
	if acc != want {
		t.Fatalf("created %+v, want %+v", acc, want)
	}
	f.want(t, http.StatusConflict, "POST", "/v1/service-accounts", newAccount("payments.deployer", "payments"), nil)
	f.want(t, http.StatusCreated, "POST", "/v1/service-accounts", newAccount("billing.exporter", "billing"), nil)

	var got sampleapi.Account
	f.want(t, http.StatusOK, "GET", "/v1/service-accounts/payments.deployer", nil, &got)
	if got != want {
		t.Errorf("get %+v, want %+v", got, want)
	}

	var all, payments list[sampleapi.Account]
	f.want(t, http.StatusOK, "GET", "/v1/service-accounts", nil, &all)
	f.want(t, http.StatusOK, "GET", "/v1/service-accounts?team=payments", nil, &payments)
	if len(all.Items) != 2 || all.Items[0].ID != "billing.exporter" || all.Items[1].ID != "payments.deployer" {
		t.Errorf("list = %+v", all.Items)
	}
	if len(payments.Items) != 1 || payments.Items[0].ID != "payments.deployer" {
		t.Errorf("list ?team=payments = %+v", payments.Items)
	}

	f.clock.Advance(time.Minute)
	f.want(t, http.StatusOK, "POST", "/v1/service-accounts/payments.deployer/suspend", nil, &got)
	if got.Status != sampleapi.StatusSuspended || !got.UpdatedAt.Equal(epoch.Add(time.Minute)) {
		t.Errorf("suspended account = %+v", got)
	}
	f.want(t, http.StatusConflict, "POST", "/v1/service-accounts/payments.deployer/keys", map[string]int{"ttl_seconds": 60}, nil)
	f.want(t, http.StatusOK, "POST", "/v1/service-accounts/payments.deployer/reactivate", nil, &got)
	if got.Status != sampleapi.StatusActive {
		t.Errorf("reactivated account = %+v", got)
	}

	var key sampleapi.Key
	f.want(t, http.StatusCreated, "POST", "/v1/service-accounts/payments.deployer/keys", map[string]int{"ttl_seconds": 60}, &key)
	f.want(t, http.StatusCreated, "POST", "/v1/bindings", sampleapi.NewBinding{Account: "payments.deployer", Role: "deployer", Resource: "ns/payments"}, nil)

	f.want(t, http.StatusNoContent, "DELETE", "/v1/service-accounts/payments.deployer", nil, nil)
	f.want(t, http.StatusNotFound, "GET", "/v1/service-accounts/payments.deployer", nil, nil)
	f.want(t, http.StatusNotFound, "DELETE", "/v1/service-accounts/payments.deployer", nil, nil)
	f.want(t, http.StatusNotFound, "POST", "/v1/service-accounts/payments.deployer/suspend", nil, nil)
	var bindings list[sampleapi.Binding]
	f.want(t, http.StatusOK, "GET", "/v1/bindings", nil, &bindings)
	if len(bindings.Items) != 0 {
		t.Errorf("bindings of a deleted account survive: %+v", bindings.Items)
	}

	types := eventTypes(t, f, "/v1/events")
	wantTypes := []string{
		"account.created", "account.created", "account.suspended", "account.reactivated",
		"key.created", "binding.created", "key.revoked", "binding.deleted", "account.deleted",
	}
	if strings.Join(types, " ") != strings.Join(wantTypes, " ") {
		t.Errorf("events %v, want %v", types, wantTypes)
	}
}

func TestCreateAccountRejects(t *testing.T) {
	f := newFixture(t, sampleapi.Options{})
	tests := []struct {
		name   string
		body   string
		ctype  string
		status int
	}{
		{"bad JSON", `{"id":`, "application/json", http.StatusBadRequest},
		{"empty body", ``, "application/json", http.StatusBadRequest},
		{"missing owner", `{"id":"payments.x","team":"payments"}`, "application/json", http.StatusBadRequest},
		{"missing team", `{"id":"payments.x","owner":"a@example.com"}`, "application/json", http.StatusBadRequest},
		{"id without team", `{"id":"deployer","team":"payments","owner":"a@example.com"}`, "application/json", http.StatusBadRequest},
		{"id of another team", `{"id":"billing.x","team":"payments","owner":"a@example.com"}`, "application/json", http.StatusBadRequest},
		{"two dots", `{"id":"payments.x.y","team":"payments","owner":"a@example.com"}`, "application/json", http.StatusBadRequest},
		{"upper case", `{"id":"Payments.x","team":"Payments","owner":"a@example.com"}`, "application/json", http.StatusBadRequest},
		{"unknown field", `{"id":"payments.x","team":"payments","owner":"a@example.com","role":"admin"}`, "application/json", http.StatusBadRequest},
		{"differently cased key", `{"id":"payments.x","team":"payments","owner":"a@example.com","ID":"billing.x","Team":"billing"}`, "application/json", http.StatusBadRequest},
		{"duplicate key", `{"id":"payments.x","team":"payments","owner":"a@example.com","id":"payments.y"}`, "application/json", http.StatusBadRequest},
		{"not an object", `["payments.x"]`, "application/json", http.StatusBadRequest},
		{"trailing data", `{"id":"payments.x","team":"payments","owner":"a@example.com"} {}`, "application/json", http.StatusBadRequest},
		{"not JSON content", `{"id":"payments.x","team":"payments","owner":"a@example.com"}`, "text/plain", http.StatusUnsupportedMediaType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", f.srv.URL+"/v1/service-accounts", strings.NewReader(tt.body))
			req.Header.Set("Content-Type", tt.ctype)
			resp, err := f.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, tt.status, out)
			}
			var e struct{ Error, Message string }
			if err := json.Unmarshal(out, &e); err != nil || e.Error == "" || e.Message == "" {
				t.Errorf("error body %s (%v)", out, err)
			}
		})
	}
	var all list[sampleapi.Account]
	f.want(t, http.StatusOK, "GET", "/v1/service-accounts", nil, &all)
	if len(all.Items) != 0 {
		t.Errorf("rejected creations left accounts: %+v", all.Items)
	}
}

func TestKeys(t *testing.T) {
	grace := 5 * time.Minute
	f := newFixture(t, sampleapi.Options{RotationGrace: grace})
	f.want(t, http.StatusCreated, "POST", "/v1/service-accounts", newAccount("payments.ci-runner", "payments"), nil)
	keys := "/v1/service-accounts/payments.ci-runner/keys"

	var k1 sampleapi.Key
	f.want(t, http.StatusCreated, "POST", keys, map[string]int{"ttl_seconds": 3600}, &k1)
	if k1.KeyID == "" || !strings.HasPrefix(k1.Secret, "sk_") || k1.Status != sampleapi.KeyActive {
		t.Fatalf("minted key %+v", k1)
	}
	if k1.ExpiresAt == nil || !k1.ExpiresAt.Equal(epoch.Add(time.Hour)) {
		t.Errorf("expires_at %v, want %v", k1.ExpiresAt, epoch.Add(time.Hour))
	}

	var forever sampleapi.Key
	raw := f.want(t, http.StatusCreated, "POST", keys, nil, &forever)
	if forever.ExpiresAt != nil || !bytes.Contains(raw, []byte(`"expires_at":null`)) {
		t.Errorf("key without ttl: %s", raw)
	}

	var imported sampleapi.Key
	raw = f.want(t, http.StatusCreated, "POST", keys, map[string]any{"ttl_seconds": 60, "secret": "0123456789abcdef-imported"}, &imported)
	if !imported.Imported || bytes.Contains(raw, []byte("0123456789abcdef")) {
		t.Errorf("imported key echoed or not marked: %s", raw)
	}

	for _, body := range []string{`{"ttl_seconds":-1}`, `{"ttl_seconds":1.5}`, `{"ttl_seconds":"60"}`, `{"ttl":60}`, `{"secret":"short"}`} {
		if resp, out := f.do(t, "POST", keys, body); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("POST keys %s: status %d, want 400; %s", body, resp.StatusCode, out)
		}
	}

	// Rotation: a successor with the old lifetime, the old key kept for the
	// grace period only.
	f.clock.Advance(10 * time.Minute)
	var k2 sampleapi.Key
	f.want(t, http.StatusCreated, "POST", keys+"/"+k1.KeyID+"/rotate", nil, &k2)
	if k2.KeyID == k1.KeyID || k2.Secret == "" || k2.Secret == k1.Secret {
		t.Fatalf("rotated key %+v", k2)
	}
	if now := epoch.Add(10 * time.Minute); k2.ExpiresAt == nil || !k2.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Errorf("successor expires_at %v, want the old ttl from now", k2.ExpiresAt)
	}
	f.want(t, http.StatusConflict, "POST", keys+"/"+k1.KeyID+"/rotate", nil, nil)

	var k3 sampleapi.Key
	f.want(t, http.StatusCreated, "POST", keys+"/"+k2.KeyID+"/rotate", map[string]int{"ttl_seconds": 120}, &k3)
	if k3.TTLSeconds != 120 {
		t.Errorf("rotation with ttl_seconds gave ttl %d", k3.TTLSeconds)
	}

	status := func() map[string]sampleapi.Key {
		t.Helper()
		var l list[sampleapi.Key]
		raw := f.want(t, http.StatusOK, "GET", keys, nil, &l)
		if bytes.Contains(raw, []byte(`"secret"`)) {
			t.Errorf("key listing shows secrets: %s", raw)
		}
		m := make(map[string]sampleapi.Key, len(l.Items))
		for _, k := range l.Items {
			m[k.KeyID] = k
		}
		return m
	}
	got := status()
	if len(got) != 5 {
		t.Fatalf("listed %d keys, want 5", len(got))
	}
	old := got[k1.KeyID]
	if old.Status != sampleapi.KeyRotated || old.RotatedTo != k2.KeyID || !old.ExpiresAt.Equal(epoch.Add(10*time.Minute+grace)) {
		t.Errorf("rotated key = %+v", old)
	}

	f.clock.Advance(grace)
	if s := status()[k1.KeyID].Status; s != sampleapi.KeyExpired {
		t.Errorf("after the grace period the rotated key is %s, want expired", s)
	}

	f.want(t, http.StatusNoContent, "DELETE", keys+"/"+k3.KeyID, nil, nil)
	f.want(t, http.StatusNoContent, "DELETE", keys+"/"+k3.KeyID, nil, nil) // idempotent
	f.want(t, http.StatusNotFound, "DELETE", keys+"/key-unknown", nil, nil)
	f.want(t, http.StatusNotFound, "GET", "/v1/service-accounts/payments.nobody/keys", nil, nil)
	if s := status()[k3.KeyID].Status; s != sampleapi.KeyRevoked {
		t.Errorf("revoked key is %s", s)
	}
	f.want(t, http.StatusConflict, "POST", keys+"/"+k3.KeyID+"/rotate", nil, nil)
}

func TestBindings(t *testing.T) {
	f := newFixture(t, sampleapi.Options{})
	f.want(t, http.StatusCreated, "POST", "/v1/service-accounts", newAccount("payments.deployer", "payments"), nil)
	f.want(t, http.StatusCreated, "POST", "/v1/service-accounts", newAccount("billing.exporter", "billing"), nil)

	var b1, b2 sampleapi.Binding
	f.want(t, http.StatusCreated, "POST", "/v1/bindings", sampleapi.NewBinding{Account: "payments.deployer", Role: "deployer", Resource: "ns/payments"}, &b1)
	f.want(t, http.StatusCreated, "POST", "/v1/bindings", sampleapi.NewBinding{Account: "billing.exporter", Role: "reader", Resource: "bucket/invoices"}, &b2)
	if b1.ID == "" || b1.ID == b2.ID || b1.Role != "deployer" {
		t.Fatalf("bindings %+v %+v", b1, b2)
	}
	f.want(t, http.StatusBadRequest, "POST", "/v1/bindings", sampleapi.NewBinding{Account: "payments.nobody", Role: "r", Resource: "x"}, nil)
	f.want(t, http.StatusBadRequest, "POST", "/v1/bindings", sampleapi.NewBinding{Account: "payments.deployer", Role: "r"}, nil)

	var l list[sampleapi.Binding]
	f.want(t, http.StatusOK, "GET", "/v1/bindings?account=billing.exporter", nil, &l)
	if len(l.Items) != 1 || l.Items[0] != b2 {
		t.Errorf("bindings of billing.exporter = %+v", l.Items)
	}
	f.want(t, http.StatusNoContent, "DELETE", "/v1/bindings/"+b1.ID, nil, nil)
	f.want(t, http.StatusNotFound, "DELETE", "/v1/bindings/"+b1.ID, nil, nil)
	f.want(t, http.StatusOK, "GET", "/v1/bindings", nil, &l)
	if len(l.Items) != 1 {
		t.Errorf("bindings after delete = %+v", l.Items)
	}
}

func eventTypes(t *testing.T, f *fixture, path string) []string {
	t.Helper()
	var types []string
	for _, e := range readEvents(t, f.want(t, http.StatusOK, "GET", path, nil, nil)) {
		types = append(types, e.Type)
	}
	return types
}

func readEvents(t *testing.T, ndjson []byte) []sampleapi.Event {
	t.Helper()
	var out []sampleapi.Event
	sc := bufio.NewScanner(bytes.NewReader(ndjson))
	for sc.Scan() {
		var e sampleapi.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("event line %q: %v", sc.Bytes(), err)
		}
		out = append(out, e)
	}
	return out
}

func TestEvents(t *testing.T) {
	f := newFixture(t, sampleapi.Options{MaxEvents: 3})
	for _, id := range []string{"payments.a", "payments.b", "payments.c", "payments.d"} {
		f.want(t, http.StatusCreated, "POST", "/v1/service-accounts", newAccount(id, "payments"), nil)
	}
	resp, out := f.do(t, "GET", "/v1/events", nil, "X-Request-Id", "req-42")
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("Content-Type %q", ct)
	}
	events := readEvents(t, out)
	if len(events) != 3 || events[0].Seq != 2 || events[2].Seq != 4 || events[2].Account != "payments.d" {
		t.Fatalf("bounded events = %+v", events)
	}
	if !events[0].Time.Equal(epoch) {
		t.Errorf("event time %v", events[0].Time)
	}
	if got := eventTypes(t, f, "/v1/events?since=3"); len(got) != 1 {
		t.Errorf("?since=3 gave %v", got)
	}
	f.want(t, http.StatusBadRequest, "GET", "/v1/events?since=x", nil, nil)
}

func TestEventsFollow(t *testing.T) {
	f := newFixture(t, sampleapi.Options{})
	f.want(t, http.StatusCreated, "POST", "/v1/service-accounts", newAccount("payments.a", "payments"), nil)

	ctx, cancel := context.WithTimeout(context.Background(), streamTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"/v1/events?follow=1", nil)
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	next := func() sampleapi.Event {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("stream ended: %v", lines.Err())
		}
		var e sampleapi.Event
		if err := json.Unmarshal(lines.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	if e := next(); e.Type != "account.created" || e.Account != "payments.a" {
		t.Fatalf("first event %+v", e)
	}
	// The stream is open and flushed; a new event must arrive on it.
	resp2, _ := f.do(t, "POST", "/v1/service-accounts", newAccount("payments.b", "payments"), "X-Request-Id", "req-follow")
	if resp2.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d", resp2.StatusCode)
	}
	if e := next(); e.Account != "payments.b" || e.RequestID != "req-follow" || e.Seq != 2 {
		t.Fatalf("followed event %+v", e)
	}
	cancel()
}

func TestEventsFollowEnds(t *testing.T) {
	f := newFixture(t, sampleapi.Options{FollowLimit: 20 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), streamTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"/v1/events?follow=1", nil)
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatalf("stream did not end cleanly at the follow limit: %v", err)
	}
}

func TestRequireAuth(t *testing.T) {
	const cred = "Bearer backend-token"
	f := newFixture(t, sampleapi.Options{RequireAuth: cred})

	for _, auth := range []string{"", "Bearer other", "bearer backend-token", cred + "x"} {
		resp, out := f.do(t, "GET", "/v1/service-accounts", nil, "Authorization", auth)
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" ||
			resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("Authorization %q: %d %v %s", auth, resp.StatusCode, resp.Header, out)
		}
	}
	if resp, _ := f.do(t, "GET", "/v1/service-accounts", nil, "Authorization", cred); resp.StatusCode != http.StatusOK {
		t.Errorf("with the credential: %d", resp.StatusCode)
	}
	if n := f.api.Requests(); n != 5 {
		t.Errorf("Requests() = %d, want 5", n)
	}
}

func TestDebugRequestAndLastRequest(t *testing.T) {
	f := newFixture(t, sampleapi.Options{})
	if f.api.LastRequest() != "" || f.api.Requests() != 0 {
		t.Fatal("fresh API has seen requests")
	}
	resp, out := f.do(t, "GET", "/v1/debug/request?x=1&x=2", nil,
		"Authorization", "Bearer upstream",
		"X-Forwarded-For", "203.0.113.7",
		"X-Forwarded-Host", "admin.example.com",
		"X-Forwarded-Proto", "https",
		"X-Custom", "yes")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	var d sampleapi.DebugRequest
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatal(err)
	}
	if d.Method != "GET" || d.Path != "/v1/debug/request" || d.RequestURI != "/v1/debug/request?x=1&x=2" ||
		d.Authorization != "Bearer upstream" || d.XForwardedFor != "203.0.113.7" ||
		d.XForwardedHost != "admin.example.com" || d.XForwardedProto != "https" ||
		len(d.Query["x"]) != 2 || d.Headers["X-Custom"][0] != "yes" {
		t.Errorf("debug = %+v", d)
	}

	_, out = f.do(t, "POST", "/v1/debug/request", `{"a":1}`)
	if err := json.Unmarshal(out, &d); err != nil || d.Method != "POST" || d.Body != `{"a":1}` {
		t.Errorf("debug POST = %+v (%v)", d, err)
	}

	f.do(t, "POST", "/v1/service-accounts/payments%2Fdeployer/suspend", nil)
	if got, want := f.api.LastRequest(), "POST /v1/service-accounts/payments%2Fdeployer/suspend"; got != want {
		t.Errorf("LastRequest() = %q, want %q", got, want)
	}
	if n := f.api.Requests(); n != 3 {
		t.Errorf("Requests() = %d, want 3", n)
	}
}

func TestRouting(t *testing.T) {
	f := newFixture(t, sampleapi.Options{})

	resp, out := f.do(t, "GET", "/healthz", nil)
	if resp.StatusCode != http.StatusOK || string(out) != "ok\n" {
		t.Errorf("healthz: %d %q", resp.StatusCode, out)
	}
	if id := resp.Header.Get("X-Sample-Request-Id"); id == "" {
		t.Error("no X-Sample-Request-Id")
	}
	resp, _ = f.do(t, "GET", "/healthz", nil, "X-Request-Id", "gw-123")
	if id := resp.Header.Get("X-Sample-Request-Id"); id != "gw-123" {
		t.Errorf("X-Sample-Request-Id = %q, want the echoed gw-123", id)
	}

	tests := []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/nope", http.StatusNotFound, ""},
		{"GET", "/v1/service-accounts/", http.StatusNotFound, ""},
		{"GET", "//v1/service-accounts", http.StatusNotFound, ""},
		{"GET", "/v1/service-accounts/a%2Fb/keys/x/y", http.StatusNotFound, ""},
		{"GET", "/v1/service-accounts/payments%2Fa", http.StatusNotFound, ""}, // one segment "payments/a": no such account
		{"PUT", "/v1/service-accounts", http.StatusMethodNotAllowed, "GET, POST"},
		{"PATCH", "/v1/bindings/x", http.StatusMethodNotAllowed, "DELETE"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			resp, out := rawRequest(t, f, tt.method+" "+tt.path+" HTTP/1.1\r\nHost: sample\r\nConnection: close\r\n\r\n")
			if got, want := f.api.LastRequest(), tt.method+" "+tt.path; got != want {
				t.Errorf("LastRequest() = %q, want %q", got, want)
			}
			if resp.StatusCode != tt.status || resp.Header.Get("Allow") != tt.allow ||
				resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("%d Allow=%q Content-Type=%q %s", resp.StatusCode, resp.Header.Get("Allow"), resp.Header.Get("Content-Type"), out)
			}
		})
	}
}

// rawRequest writes a request byte for byte, so that paths reach the API
// exactly as written, and reads the response.
func rawRequest(t *testing.T, f *fixture, raw string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", f.srv.Listener.Addr().String(), streamTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(streamTimeout)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, out
}

func TestConcurrentUse(t *testing.T) {
	f := newFixture(t, sampleapi.Options{})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			id := fmt.Sprintf("payments.svc-%d", i)
			resp, out, err := f.send("POST", "/v1/service-accounts", newAccount(id, "payments"))
			if err != nil || resp.StatusCode != http.StatusCreated {
				t.Errorf("create %s: %v %s", id, err, out)
				return
			}
			resp, out, err = f.send("POST", "/v1/service-accounts/"+id+"/keys", map[string]int{"ttl_seconds": 60})
			if err != nil || resp.StatusCode != http.StatusCreated {
				t.Errorf("key for %s: %v %s", id, err, out)
			}
			if _, _, err := f.send("GET", "/v1/events", nil); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := len(eventTypes(t, f, "/v1/events")); got != 40 {
		t.Errorf("%d events, want 40", got)
	}
}
