package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func forwardAuthTestConfig(policies, upstream string, trusted bool) string {
	tp := ""
	if trusted {
		tp = "  trusted_proxies: [127.0.0.1/32]\n"
	}
	return fmt.Sprintf(`server:
  listen: 127.0.0.1:0
%sforward_auth:
  listen: 127.0.0.1:0
policy:
  dir: %s
authn:
  api_key_header: X-Api-Key
  api_keys:
%s%s%sroutes:
  - name: sampleapi
    path_prefix: /
    upstream: %s
    policy: sampleapi/decision
decision_log:
  output: file
  path: LOGFILE
  flush_interval: 5ms
`, tp, policies, saAdmin.yaml(), saLead.yaml(), saAuditor.yaml(), upstream)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startNginx runs a private nginx in the foreground with conf, stopped by
// its PID at cleanup. It skips when nginx is missing unless
// POLICYGATE_REQUIRE_NGINX=1.
func startNginx(t *testing.T, conf func(dir string) string, port int) {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr == nil {
			bin = "/usr/sbin/nginx"
		} else if os.Getenv("POLICYGATE_REQUIRE_NGINX") == "1" {
			t.Fatal("nginx not installed (run .ci/install-deps)")
		} else {
			t.Skip("nginx not installed; run .ci/install-deps or set POLICYGATE_REQUIRE_NGINX=1 to fail")
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf(dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if out, err := exec.Command(bin, "-t", "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log")).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGQUIT)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
	t.Fatalf("nginx did not start:\n%s", b)
}

// TestForwardAuthWithNginx puts a real nginx with auth_request in front of
// the sample admin API, asking policygate's forward-auth endpoint: allowed
// calls reach the backend with the identity headers nginx copied, denied
// calls never do, and the decision log has each call.
func TestForwardAuthWithNginx(t *testing.T) {
	e := startSampleEnv(t)
	g := startGateway(t, forwardAuthTestConfig(repoPath(t, "policies"), e.backend.URL, true), nil)
	port := freePort(t)
	fa := strings.TrimPrefix(g.ForwardAuthURL, "http://")
	backend := strings.TrimPrefix(e.backend.URL, "http://")
	startNginx(t, func(dir string) string {
		return fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
events { worker_connections 64; }
http {
  access_log %[1]s/access.log;
  client_body_temp_path %[1]s/client_body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  server {
    listen 127.0.0.1:%[2]d;
    location / {
      auth_request /_policygate;
      auth_request_set $pg_subject $upstream_http_x_policygate_subject;
      auth_request_set $pg_decision $upstream_http_x_policygate_decision_id;
      proxy_set_header X-Policygate-Subject $pg_subject;
      proxy_set_header X-Policygate-Decision-Id $pg_decision;
      proxy_set_header Authorization "Bearer %[3]s";
      proxy_set_header X-Api-Key "";
      proxy_pass http://%[4]s;
    }
    location = /_policygate {
      internal;
      proxy_pass http://%[5]s;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-For $remote_addr;
    }
  }
}
`, dir, port, backendToken, backend, fa)
	}, port)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	cases := []struct {
		name, method, path string
		h                  map[string]string
		status             int
		reaches            bool
	}{
		{"auditor reads", "GET", "/v1/service-accounts", bearer(saAuditor), 200, true},
		{"lead suspends own team", "POST", "/v1/service-accounts/payments.deployer/suspend", map[string]string{"X-Api-Key": saLead.Secret}, 200, true},
		{"auditor deletes", "DELETE", "/v1/service-accounts/payments.deployer", bearer(saAuditor), 403, false},
		{"lead deletes other team", "DELETE", "/v1/service-accounts/billing.exporter", bearer(saLead), 403, false},
		{"unauthenticated", "GET", "/v1/service-accounts", nil, 401, false},
		{"spoofed original URI", "DELETE", "/v1/service-accounts/billing.exporter", map[string]string{
			"Authorization": "Bearer " + saLead.Secret, "X-Original-URI": "/v1/service-accounts", "X-Original-Method": "GET"}, 403, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.api.Requests()
			resp, body := e.do(t, base, tc.method, tc.path, tc.h, "")
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if reached := e.api.Requests() > before; reached != tc.reaches {
				t.Fatalf("backend reached: %v, want %v", reached, tc.reaches)
			}
		})
	}
	t.Run("backend saw the identity nginx copied", func(t *testing.T) {
		resp, body := e.do(t, base, "GET", "/v1/debug/request", bearer(saAdmin), "")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		s := string(body)
		if !strings.Contains(s, `"X-Policygate-Subject":["alice"]`) || strings.Contains(s, saAdmin.Secret) {
			t.Fatalf("backend request: %s", s)
		}
	})
}

// TestForwardAuthUntrustedCaller checks that the original-request headers
// are ignored from a caller that is not a trusted proxy.
func TestForwardAuthUntrustedCaller(t *testing.T) {
	e := startSampleEnv(t)
	g := startGateway(t, forwardAuthTestConfig(repoPath(t, "policies"), e.backend.URL, false), nil)
	req, _ := http.NewRequest("GET", g.ForwardAuthURL+"/", nil)
	req.Header.Set("X-Original-URI", "/healthz")
	req.Header.Set("X-Original-Method", "GET")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(body), "untrusted_proxy") {
		t.Fatalf("status %d body %s", resp.StatusCode, body)
	}
	ev := g.WaitEvent(t, resp.Header.Get("X-Decision-Id"))
	if ev["reason"] != "untrusted_proxy" {
		t.Fatalf("event %v", ev)
	}
}
