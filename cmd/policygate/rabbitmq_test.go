package main

import (
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
)

var (
	rmqCI      = demoKey{ID: "ci-payments", Secret: "rmq-ci-secret-8e21", Groups: `ci, "team:payments"`}
	rmqSec     = demoKey{ID: "sec-admin", Secret: "rmq-sec-secret-4b70", Groups: "security-admin"}
	rmqAuditor = demoKey{ID: "auditor", Secret: "rmq-auditor-secret-19", Groups: "auditors"}
)

// TestRabbitMQThroughGateway puts policygate in front of a real RabbitMQ
// management API and drives it with the real rabbitmqadmin CLI (Basic auth
// with an API key as the password). The gateway brokers RabbitMQ's own
// administrator credential; the shipped policies/rabbitmq decides. Querying
// RabbitMQ directly proves that denied changes never happened.
func TestRabbitMQThroughGateway(t *testing.T) {
	rmq := startRabbitMQ(t)
	rmq.CreateVhost(t, "payments")
	rmq.CreateVhost(t, "billing")

	cfg := fmt.Sprintf(`server:
  listen: 127.0.0.1:0
policy:
  dir: %s
authn:
  api_keys:
%s%s%sroutes:
  - name: rabbitmq
    path_prefix: /api
    upstream: %s
    policy: rabbitmq/decision
    allow_encoded_slash: true
    labels: {api: rabbitmq}
    upstream_auth:
      type: basic
      username: %s
      password_file: rabbitmq.pass
decision_log:
  output: file
  path: LOGFILE
  flush_interval: 5ms
`, repoPath(t, "policies"), rmqCI.yaml(), rmqSec.yaml(), rmqAuditor.yaml(), rmq.MgmtURL, rmq.AdminUser)
	g := startGateway(t, cfg, map[string]string{"rabbitmq.pass": rmq.AdminPass})
	u, err := url.Parse(g.URL)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())

	admin := func(t *testing.T, k demoKey, args ...string) (string, int) {
		t.Helper()
		out, errOut, err := runRabbitmqadmin(t, "127.0.0.1", port, k.ID, k.Secret, args...)
		return out + errOut, rmqExitCode(err)
	}
	mustSucceed := func(t *testing.T, k demoKey, args ...string) {
		t.Helper()
		if out, code := admin(t, k, args...); code != 0 {
			t.Fatalf("rabbitmqadmin %v as %s: exit %d:\n%s", args, k.ID, code, out)
		}
	}
	mustBeDenied := func(t *testing.T, k demoKey, args ...string) string {
		t.Helper()
		out, code := admin(t, k, args...)
		if code == 0 {
			t.Fatalf("rabbitmqadmin %v as %s succeeded, want a denial:\n%s", args, k.ID, out)
		}
		if !strings.Contains(out, "403") && !strings.Contains(out, "Access refused") {
			t.Fatalf("rabbitmqadmin %v as %s failed without a policy denial:\n%s", args, k.ID, out)
		}
		return out
	}

	const user = "payments-ci-new"
	const narrow = `^payments-ci-new\.`

	t.Run("ci declares a user without tags", func(t *testing.T) {
		mustSucceed(t, rmqCI, "declare", "user", "name="+user, "password=first-pass", "tags=")
		if !rmq.UserExists(t, user) {
			t.Fatal("user not created")
		}
		if tags := rmq.UserTags(t, user); len(tags) != 0 {
			t.Fatalf("tags %v", tags)
		}
	})
	t.Run("ci grants narrow permissions on its team vhost", func(t *testing.T) {
		mustSucceed(t, rmqCI, "declare", "permission", "vhost=payments", "user="+user,
			"configure="+narrow, "write="+narrow, "read="+narrow)
		c, w, r, ok := rmq.Permissions(t, "payments", user)
		if !ok || c != narrow || w != narrow || r != narrow {
			t.Fatalf("permissions %q %q %q ok=%v", c, w, r, ok)
		}
	})
	t.Run("ci may not delete users", func(t *testing.T) {
		mustBeDenied(t, rmqCI, "delete", "user", "name="+user)
		if !rmq.UserExists(t, user) {
			t.Fatal("denied delete removed the user")
		}
	})
	t.Run("ci may not grant the administrator tag", func(t *testing.T) {
		mustBeDenied(t, rmqCI, "declare", "user", "name=payments-ci-root", "password=x", "tags=administrator")
		if rmq.UserExists(t, "payments-ci-root") {
			t.Fatal("denied declare created the user")
		}
	})
	t.Run("ci may not grant wildcard permissions", func(t *testing.T) {
		out := mustBeDenied(t, rmqCI, "declare", "permission", "vhost=payments", "user="+user,
			"configure=.*", "write=.*", "read=.*")
		if !strings.Contains(out, "decision_id") {
			t.Errorf("denial output lacks the decision id:\n%s", out)
		}
		if c, w, r, _ := rmq.Permissions(t, "payments", user); c != narrow || w != narrow || r != narrow {
			t.Fatalf("denied grant changed permissions to %q %q %q", c, w, r)
		}
	})
	t.Run("ci may not grant on another team's or the default vhost", func(t *testing.T) {
		for _, vhost := range []string{"billing", "/"} {
			mustBeDenied(t, rmqCI, "declare", "permission", "vhost="+vhost, "user="+user,
				"configure="+narrow, "write="+narrow, "read="+narrow)
			if _, _, _, ok := rmq.Permissions(t, vhost, user); ok {
				t.Fatalf("denied grant created permissions on %q", vhost)
			}
		}
	})
	t.Run("ci may not reset another team's or an administrator's user", func(t *testing.T) {
		mustBeDenied(t, rmqCI, "declare", "user", "name="+rmq.AdminUser, "password=taken-over", "tags=")
		if tags := rmq.UserTags(t, rmq.AdminUser); len(tags) != 1 || tags[0] != "administrator" {
			t.Fatalf("administrator's tags now %v", tags)
		}
	})
	t.Run("auditors are read-only", func(t *testing.T) {
		mustSucceed(t, rmqAuditor, "list", "users")
		mustBeDenied(t, rmqAuditor, "declare", "user", "name=payments-audit-x", "password=x", "tags=")
		if rmq.UserExists(t, "payments-audit-x") {
			t.Fatal("auditor created a user")
		}
	})
	t.Run("wrong key is refused", func(t *testing.T) {
		out, code := admin(t, demoKey{ID: rmqCI.ID, Secret: "wrong"}, "list", "users")
		if code == 0 || !strings.Contains(out, "Access refused") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("security-admin deletes the user", func(t *testing.T) {
		mustSucceed(t, rmqSec, "delete", "user", "name="+user)
		if rmq.UserExists(t, user) {
			t.Fatal("user still exists")
		}
	})
	t.Run("decision log has every call and no secret", func(t *testing.T) {
		g.Stop(t)
		raw, err := os.ReadFile(g.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		log := string(raw)
		for _, s := range []string{rmqCI.Secret, rmqSec.Secret, rmqAuditor.Secret, rmq.AdminPass, "first-pass", "taken-over"} {
			if strings.Contains(log, s) {
				t.Errorf("decision log contains secret %q", s)
			}
		}
		allowed, denied := 0, 0
		for _, ev := range g.Events(t) {
			if ev["allowed"] == true {
				allowed++
			} else {
				denied++
			}
			if ev["route"] != "rabbitmq" {
				t.Errorf("event route %v", ev["route"])
			}
		}
		if allowed != 4 || denied != 8 { // the calls above: 4 allowed, 8 refused
			t.Errorf("events: %d allowed, %d denied; want 4 and 8", allowed, denied)
		}
		t.Logf("decision log: %d allowed, %d denied events", allowed, denied)
	})
}
