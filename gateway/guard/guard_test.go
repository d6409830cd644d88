package guard

import (
	"context"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/gateway/route"
)

// fakeDecider answers every request with result.
type fakeDecider struct{ result decision.Result }

func (f fakeDecider) Decide(_ context.Context, path string, in *decision.Input, _ ...decision.DecideOption) *decision.Decision {
	return &decision.Decision{ID: in.Request.ID, Path: path, Input: in, Result: f.result}
}
func (fakeDecider) Record(context.Context, *decision.Decision, decision.Completion) error { return nil }
func (fakeDecider) Commit(context.Context, *decision.Decision) error                      { return nil }

type anonymous struct{}

func (anonymous) Authenticate(context.Context, http.Header) (decision.Identity, error) {
	return decision.Anonymous(), nil
}
func (anonymous) CredentialHeaders() []string { return nil }

func newTestGuard(t *testing.T, res decision.Result) *Guard {
	t.Helper()
	tbl, err := route.New([]route.Config{{Name: "r", PathPrefix: "/", Upstream: "http://127.0.0.1:1", Policy: "p/allow"}}, route.Options{})
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Config{Routes: tbl, Decider: fakeDecider{res}, Authenticator: anonymous{}})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func get(target string) *Request {
	return &Request{Method: "GET", Target: target, Host: "api.test", Header: http.Header{},
		Peer: netip.MustParseAddr("127.0.0.1"), Start: time.Now(), FrontDoor: "test"}
}

// A limit the policy asks for must never be skipped: without an enforcer
// the request is denied, not let through unlimited.
func TestDecisionLimitWithoutEnforcerDenies(t *testing.T) {
	g := newTestGuard(t, decision.Result{Allow: true, Outcome: decision.OutcomeAllow,
		RateLimits: []decision.RateLimit{{Key: "k", Limit: 1, Period: time.Minute, Burst: 1, Cost: 1}}})
	v := g.Check(context.Background(), get("/x"))
	if v.Allowed || v.Status != http.StatusServiceUnavailable || v.Code != "rate_limit_unavailable" {
		t.Fatalf("verdict allowed=%v status=%d code=%q", v.Allowed, v.Status, v.Code)
	}
	g = newTestGuard(t, decision.Result{Allow: true, Outcome: decision.OutcomeAllow})
	if v := g.Check(context.Background(), get("/x")); !v.Allowed {
		t.Fatalf("no limits asked: denied %d %s", v.Status, v.Code)
	}
}

// The input always carries route labels as an object, and a refused
// request's input never carries its query.
func TestInputShape(t *testing.T) {
	g := newTestGuard(t, decision.Result{Allow: true, Outcome: decision.OutcomeAllow})
	v := g.Check(context.Background(), get("/x?access_token=s"))
	if v.Decision.Input.Route.Labels == nil {
		t.Fatal("route labels nil")
	}
	r := g.Refuse(get("/y?access_token=s"), http.StatusBadRequest, "bad", nil)
	if r.Allowed || r.Decision.Input.Request.RawPath != "/y" || r.Decision.Input.Request.RemoteAddr != "127.0.0.1" {
		t.Fatalf("refused input %+v", r.Decision.Input.Request)
	}
}
