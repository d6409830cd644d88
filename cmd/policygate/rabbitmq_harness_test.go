package main

// RabbitMQ end-to-end test harness.
//
// startRabbitMQ boots a private, throw-away RabbitMQ node (Debian package
// rabbitmq-server 3.10.x, /usr/lib/rabbitmq/bin/rabbitmq-server) with the
// management plugin, bound to 127.0.0.1 on free ports, and tears it down in
// t.Cleanup. runRabbitmqadmin drives the real /usr/bin/rabbitmqadmin CLI.
//
// Both skip the test when the binaries are missing, unless
// POLICYGATE_REQUIRE_RABBITMQ=1 is set (CI), in which case they fail.
//
// Node layout (everything lives in one t.TempDir()):
//
//	home/              HOME (Erlang cookie)
//	mnesia/ log/       RABBITMQ_MNESIA_BASE / RABBITMQ_LOG_BASE
//	enabled_plugins    [rabbitmq_management].
//	rabbitmq.conf      listeners + management on 127.0.0.1, default admin user
//	rabbitmq-env.conf  empty; RABBITMQ_CONF_ENV_FILE points here so
//	                   /etc/rabbitmq/rabbitmq-env.conf is never read
//	server.out         stdout+stderr of rabbitmq-server
//	epmd.out           stdout+stderr of the private epmd
//
// epmd handling: by default the first Erlang node on a machine spawns
// "epmd -daemon" on 0.0.0.0:4369. That daemon double-forks into its own
// session, so it escapes the node's process group and outlives the node
// (verified here: after killing the node's process group, epmd kept running,
// re-parented to PID 1). To avoid both the leak and any clash with a system
// epmd, the harness starts its OWN epmd in the foreground
// ("epmd -port <free> -address 127.0.0.1", own process group, reaped by
// us), and starts the node with ERL_EPMD_PORT=<that port>,
// ERL_EPMD_ADDRESS=127.0.0.1 and the extra erl args "-start_epmd false"
// (the node never spawns an epmd itself) and
// "-kernel inet_dist_use_interface {127,0,0,1}" (the distribution port,
// RABBITMQ_DIST_PORT, is bound to loopback instead of 0.0.0.0).
// Shutdown order: SIGTERM to the node's process group, SIGKILL after a
// grace period, then the same for epmd. As a last safety net every process
// still carrying this instance's POLICYGATE_RMQ_INSTANCE=<id> environment
// entry (erl_child_setup, inet_gethost, ... run in their own sessions) is
// SIGKILLed by PID. Nothing outside the instance is ever signalled.
//
// Timing on the dev machine: ~4.6-5.7 s from exec to GET /api/overview ==
// 200; graceful stop after SIGTERM ~6 s (SIGKILL after rmqStopGrace).
//
// rabbitmqadmin 3.10.8 (Python 3 script, optparse) flags used here:
//
//	-H/--host HOST  -P/--port PORT  -u/--username USER  -p/--password PASS
//	-V/--vhost VHOST  -f/--format {raw_json,pretty_json,tsv,long,table,kvp,bash}
//	-q/--quiet (suppress "user declared" etc.)  -t/--request-timeout SECONDS
//	-c/--config FILE (default ~/.rabbitmqadmin.conf; $USERPROFILE is checked
//	before $HOME, so both are controlled by runRabbitmqadmin)
//
// Wire format observed with TestRabbitmqadminWire (Python http.client,
// HTTP/1.1, one connection per request). Every request carries exactly the
// headers Host, Accept-Encoding: identity, Content-Length (also "0" on
// GET/DELETE) and "Authorization: Basic base64(user:pass)"; there is no
// User-Agent. Content-Type: application/json is sent only when there is a
// body. JSON bodies use Python's json.dumps separators (", " and ": "),
// keys in the order shown. Path segments are escaped with
// urllib.parse.quote(v, safe=""), so the vhost "/" becomes %2F.
//
//	declare user name=ci-new password=x tags=
//	    PUT /api/users/ci-new
//	    {"name": "ci-new", "password": "x", "tags": "", "vhost": "/"}
//	declare user name=ci-admin password=s3cret tags=administrator
//	    PUT /api/users/ci-admin
//	    {"name": "ci-admin", "password": "s3cret", "tags": "administrator", "vhost": "/"}
//	declare user name=ci-ops password=y tags=administrator,management
//	    PUT /api/users/ci-ops
//	    {"name": "ci-ops", "password": "y", "tags": "administrator,management", "vhost": "/"}
//	  -> tags is ALWAYS a JSON string exactly as typed (comma separated, ""
//	     when tags= is empty), never a list; "tags" is mandatory on the CLI.
//	     A spurious "vhost" key (the -V value, default "/") is always added.
//	     RabbitMQ itself answers GET /api/users/<n> with "tags" as a LIST
//	     (["administrator","management"], [] when empty).
//	declare permission vhost=/ user=ci-new configure=.* write=.* read=.*
//	    PUT /api/permissions/%2F/ci-new
//	    {"vhost": "/", "user": "ci-new", "configure": ".*", "write": ".*", "read": ".*"}
//	declare permission vhost=payments user=ci-new configure=^ci-new\. write=^ci-new\. read=^ci-new\.
//	    PUT /api/permissions/payments/ci-new
//	    {"vhost": "payments", "user": "ci-new", "configure": "^ci-new\\.", "write": "^ci-new\\.", "read": "^ci-new\\."}
//	  -> vhost comes from the vhost= argument (-V is ignored for
//	     permissions); it is in both the path and the body.
//	declare vhost name=payments
//	    PUT /api/vhosts/payments      {"name": "payments", "vhost": "/"}
//	delete user name=ci-new
//	    DELETE /api/users/ci-new      (no body, Content-Length: 0)
//	delete permission vhost=payments user=ci-new
//	    DELETE /api/permissions/payments/ci-new
//	list users        GET /api/users
//	list vhosts       GET /api/vhosts?columns=name,messages
//	show overview     GET /api/overview?columns=rabbitmq_version,cluster_name,queue_totals.messages,object_totals.queues
//	-f raw_json list vhosts   GET /api/vhosts   (json formats send no columns=)
//
// Error reporting (all on stderr, stdout empty, exit status 1):
//
//	401 -> "*** Access refused: /api/users/denied-user"  (body ignored)
//	403 -> uncaught Python exception, a traceback ending in
//	       "Exception: Received response 403 Forbidden for path /api/users/denied-user"
//	       followed by the raw body as a Python bytes literal, e.g.
//	       b'{"error":"forbidden","decision_id":"dec-123"}'
//	       (the reason phrase is the server's status text)
//	404 -> "*** Not found: <path>"
//	400 -> "*** <reason>" taken from the JSON body's "reason" key (a 400
//	       without a JSON "reason" crashes with a traceback)
//	other >400 -> same traceback form as 403.
//
// Real RabbitMQ 3.10 answers a management user that lacks the
// administrator tag with 401 {"error":"not_authorized",...} for
// administrative writes, which rabbitmqadmin prints as "Access refused".

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	rmqServerBin     = "/usr/lib/rabbitmq/bin/rabbitmq-server"
	rmqAdminBin      = "/usr/bin/rabbitmqadmin"
	rmqRequireEnv    = "POLICYGATE_REQUIRE_RABBITMQ"
	rmqInstanceEnv   = "POLICYGATE_RMQ_INSTANCE"
	rmqStartTimeout  = 90 * time.Second
	rmqStopGrace     = 15 * time.Second
	rmqAdminTimeout  = 30 * time.Second
	rmqHTTPTimeout   = 10 * time.Second
	rmqEPMDWait      = 10 * time.Second
	rmqLogTailLines  = 80
	rmqDefaultVhost  = "/"
	rmqAdminUserName = "pg-admin"
)

var rmqInstanceSeq atomic.Int64

// rabbitMQ is a running private RabbitMQ node.
type rabbitMQ struct {
	MgmtURL   string // http://127.0.0.1:<MgmtPort>
	AdminUser string
	AdminPass string
	AMQPPort  int
	MgmtPort  int
	DistPort  int
	EPMDPort  int
	NodeName  string
	Dir       string
	// StartupTime is the time from exec to the first 200 from /api/overview.
	StartupTime time.Duration

	httpClient *http.Client
}

// rmqMissing skips (or, with POLICYGATE_REQUIRE_RABBITMQ=1, fails) the test.
func rmqMissing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(rmqRequireEnv) == "1" {
		t.Fatalf("%s (%s=1, so this is an error; run .ci/install-deps)", msg, rmqRequireEnv)
	}
	t.Skipf("%s; skipping (set %s=1 to make this a failure)", msg, rmqRequireEnv)
}

func rmqRequireExecutable(t testing.TB, path string) {
	t.Helper()
	if runtime.GOOS != "linux" {
		rmqMissing(t, "RabbitMQ harness only supports linux (GOOS=%s)", runtime.GOOS)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		rmqMissing(t, "%s not found or not executable (install the Debian package rabbitmq-server)", path)
	}
}

func rmqFindEPMD() string {
	if p, err := exec.LookPath("epmd"); err == nil {
		return p
	}
	for _, pattern := range []string{"/usr/lib/erlang/bin/epmd", "/usr/lib/erlang/erts-*/bin/epmd", "/usr/local/lib/erlang/erts-*/bin/epmd"} {
		matches, _ := filepath.Glob(pattern)
		for _, m := range matches {
			if fi, err := os.Stat(m); err == nil && fi.Mode()&0o111 != 0 {
				return m
			}
		}
	}
	return ""
}

// rmqFreePorts returns n distinct currently free TCP ports on 127.0.0.1.
func rmqFreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("rabbitmq harness: pick free port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// rmqCleanEnv is os.Environ() without anything that could redirect
// RabbitMQ/Erlang/rabbitmqadmin to other configuration.
func rmqCleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "RABBITMQ_"), strings.HasPrefix(k, "ERL_"),
			k == "HOME", k == "USERPROFILE", k == rmqInstanceEnv:
			continue
		}
		env = append(env, kv)
	}
	return env
}

func rmqRandomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("rabbitmq harness: random: %v", err)
	}
	return hex.EncodeToString(b)
}

// rmqProc is a child started in its own process group.
type rmqProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func rmqStartProc(name string, cmd *exec.Cmd) (*rmqProc, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &rmqProc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *rmqProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after grace.
// It returns how long the group took to go away and whether it was killed.
func (p *rmqProc) stop(grace time.Duration) (took time.Duration, killed bool) {
	start := time.Now()
	pgid := p.cmd.Process.Pid // Setpgid: pgid == pid of the leader
	if p.exited() {
		// The leader is gone; still sweep the group for leftovers.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return 0, false
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		killed = true
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// Members of the group that outlived the leader.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	return time.Since(start), killed
}

// rmqKillTagged SIGKILLs every process whose environment contains the exact
// entry rmqInstanceEnv=id (i.e. processes spawned by this instance only).
func rmqKillTagged(id string) []int {
	want := []byte(rmqInstanceEnv + "=" + id)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var killed []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || len(data) == 0 {
			continue
		}
		for _, kv := range bytes.Split(data, []byte{0}) {
			if bytes.Equal(kv, want) {
				if syscall.Kill(pid, syscall.SIGKILL) == nil {
					killed = append(killed, pid)
				}
				break
			}
		}
	}
	return killed
}

func rmqTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func rmqWaitTCP(addr string, timeout time.Duration, stop <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting connections after %v: %w", addr, timeout, err)
		}
		select {
		case <-stop:
			return fmt.Errorf("process exited before %s accepted connections", addr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startRabbitMQ starts a private RabbitMQ node with the management plugin
// and returns once GET /api/overview answers 200 for the admin user. The
// node, its epmd and all their children are stopped in t.Cleanup.
func startRabbitMQ(t *testing.T) *rabbitMQ {
	t.Helper()
	rmqRequireExecutable(t, rmqServerBin)
	epmdBin := rmqFindEPMD()
	if epmdBin == "" {
		rmqMissing(t, "epmd (Erlang port mapper) not found")
	}

	dir := t.TempDir()
	ports := rmqFreePorts(t, 4)
	r := &rabbitMQ{
		AdminUser:  rmqAdminUserName,
		AdminPass:  rmqRandomHex(t, 12),
		AMQPPort:   ports[0],
		MgmtPort:   ports[1],
		DistPort:   ports[2],
		EPMDPort:   ports[3],
		NodeName:   fmt.Sprintf("pgtest-%d-%d@localhost", os.Getpid(), rmqInstanceSeq.Add(1)),
		Dir:        dir,
		httpClient: &http.Client{Timeout: rmqHTTPTimeout},
	}
	r.MgmtURL = fmt.Sprintf("http://127.0.0.1:%d", r.MgmtPort)
	instanceID := fmt.Sprintf("%d-%s", os.Getpid(), rmqRandomHex(t, 6))

	for _, d := range []string{"home", "mnesia", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatalf("rabbitmq harness: %v", err)
		}
	}
	conf := fmt.Sprintf(`listeners.tcp.default = 127.0.0.1:%d
management.tcp.ip = 127.0.0.1
management.tcp.port = %d
default_user = %s
default_pass = %s
default_vhost = /
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.write = .*
default_permissions.read = .*
log.file.level = info
`, r.AMQPPort, r.MgmtPort, r.AdminUser, r.AdminPass)
	files := map[string]string{
		"enabled_plugins":   "[rabbitmq_management].\n",
		"rabbitmq.conf":     conf,
		"rabbitmq-env.conf": "",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatalf("rabbitmq harness: %v", err)
		}
	}

	baseEnv := append(rmqCleanEnv(),
		"HOME="+filepath.Join(dir, "home"),
		rmqInstanceEnv+"="+instanceID,
		"ERL_EPMD_ADDRESS=127.0.0.1",
		fmt.Sprintf("ERL_EPMD_PORT=%d", r.EPMDPort),
	)

	// 1. Private epmd, foreground, own process group.
	epmdOut, err := os.Create(filepath.Join(dir, "epmd.out"))
	if err != nil {
		t.Fatalf("rabbitmq harness: %v", err)
	}
	defer epmdOut.Close()
	epmdCmd := exec.Command(epmdBin, "-port", strconv.Itoa(r.EPMDPort), "-address", "127.0.0.1")
	epmdCmd.Env = baseEnv
	epmdCmd.Dir = dir
	epmdCmd.Stdout, epmdCmd.Stderr = epmdOut, epmdOut
	epmd, err := rmqStartProc("epmd", epmdCmd)
	if err != nil {
		t.Fatalf("rabbitmq harness: %v", err)
	}

	var server *rmqProc
	t.Cleanup(func() {
		if server != nil {
			took, killed := server.stop(rmqStopGrace)
			t.Logf("rabbitmq harness: node %s stopped in %v (SIGKILL needed: %v)", r.NodeName, took.Round(time.Millisecond), killed)
		}
		epmd.stop(5 * time.Second)
		if pids := rmqKillTagged(instanceID); len(pids) > 0 {
			t.Logf("rabbitmq harness: killed leftover processes %v", pids)
		}
		if t.Failed() {
			t.Logf("rabbitmq harness: tail of %s/server.out:\n%s", dir, rmqTail(filepath.Join(dir, "server.out"), rmqLogTailLines))
			t.Logf("rabbitmq harness: tail of node log:\n%s", rmqTail(filepath.Join(dir, "log", r.NodeName+".log"), rmqLogTailLines))
			t.Logf("rabbitmq harness: epmd.out:\n%s", rmqTail(filepath.Join(dir, "epmd.out"), rmqLogTailLines))
		}
	})
	if err := rmqWaitTCP(fmt.Sprintf("127.0.0.1:%d", r.EPMDPort), rmqEPMDWait, epmd.done); err != nil {
		t.Fatalf("rabbitmq harness: epmd: %v", err)
	}

	// 2. The node itself.
	serverOut, err := os.Create(filepath.Join(dir, "server.out"))
	if err != nil {
		t.Fatalf("rabbitmq harness: %v", err)
	}
	defer serverOut.Close()
	cmd := exec.Command(rmqServerBin)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = serverOut, serverOut
	cmd.Env = append(baseEnv,
		"RABBITMQ_NODENAME="+r.NodeName,
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq"),                 // without .conf
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(dir, "advanced.config"), // absent on purpose
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		fmt.Sprintf("RABBITMQ_DIST_PORT=%d", r.DistPort),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}",
	)
	start := time.Now()
	server, err = rmqStartProc("rabbitmq-server", cmd)
	if err != nil {
		t.Fatalf("rabbitmq harness: %v", err)
	}

	// 3. Wait for the management API.
	deadline := start.Add(rmqStartTimeout)
	var last string
	for {
		status, body, err := r.do(context.Background(), http.MethodGet, "/api/overview", nil, 2*time.Second)
		if err == nil && status == http.StatusOK {
			break
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("HTTP %d: %.200s", status, body)
		}
		if server.exited() {
			t.Fatalf("rabbitmq harness: rabbitmq-server exited during startup (%v); last probe: %s", server.err, last)
		}
		if time.Now().After(deadline) {
			t.Fatalf("rabbitmq harness: management API not ready after %v; last probe: %s", rmqStartTimeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.StartupTime = time.Since(start)
	t.Logf("rabbitmq harness: node %s ready in %v (amqp 127.0.0.1:%d, mgmt %s, dist %d, epmd %d, dir %s)",
		r.NodeName, r.StartupTime.Round(time.Millisecond), r.AMQPPort, r.MgmtURL, r.DistPort, r.EPMDPort, dir)
	return r
}

// rmqAPIPath turns "users" / "/users" / "/api/users" into "/api/users".
func rmqAPIPath(path string) string {
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	if path == "/api" || strings.HasPrefix(path, "/api/") || strings.HasPrefix(path, "/api?") {
		return path
	}
	return "/api" + path
}

// rmqSeg escapes one path segment the way the management API expects
// ("/" -> "%2F").
func rmqSeg(s string) string { return url.PathEscape(s) }

func (r *rabbitMQ) do(ctx context.Context, method, path string, body []byte, timeout time.Duration) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.MgmtURL+rmqAPIPath(path), rd)
	if err != nil {
		return 0, nil, err
	}
	req.SetBasicAuth(r.AdminUser, r.AdminPass)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := r.httpClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// Do sends a request DIRECTLY to the management API with the admin
// credentials. body may be nil, []byte, string or any JSON-marshalable value.
// path is relative to MgmtURL; "/api" is prepended when missing.
func (r *rabbitMQ) Do(t testing.TB, method, path string, body any) (int, []byte) {
	t.Helper()
	var raw []byte
	switch b := body.(type) {
	case nil:
	case []byte:
		raw = b
	case string:
		raw = []byte(b)
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			t.Fatalf("rabbitmq harness: marshal body: %v", err)
		}
	}
	status, data, err := r.do(context.Background(), method, path, raw, rmqHTTPTimeout)
	if err != nil {
		t.Fatalf("rabbitmq harness: %s %s: %v", method, rmqAPIPath(path), err)
	}
	return status, data
}

// Get queries the management API directly (bypassing any gateway) with the
// admin credentials, e.g. r.Get(t, "/api/users/ci-new").
func (r *rabbitMQ) Get(t testing.TB, path string) (status int, body []byte) {
	t.Helper()
	return r.Do(t, http.MethodGet, path, nil)
}

// UserExists reports whether the user exists (direct API).
func (r *rabbitMQ) UserExists(t testing.TB, name string) bool {
	t.Helper()
	status, body := r.Get(t, "/api/users/"+rmqSeg(name))
	switch status {
	case http.StatusOK:
		return true
	case http.StatusNotFound:
		return false
	}
	t.Fatalf("rabbitmq harness: GET user %q: HTTP %d: %s", name, status, body)
	return false
}

// UserTags returns the user's tags (direct API); fails the test if the user
// does not exist. Accepts both the list form RabbitMQ 3.10 returns and the
// legacy comma-separated string form. Never nil.
func (r *rabbitMQ) UserTags(t testing.TB, name string) []string {
	t.Helper()
	status, body := r.Get(t, "/api/users/"+rmqSeg(name))
	if status != http.StatusOK {
		t.Fatalf("rabbitmq harness: GET user %q: HTTP %d: %s", name, status, body)
	}
	var u struct {
		Tags json.RawMessage `json:"tags"`
	}
	if err := json.Unmarshal(body, &u); err != nil {
		t.Fatalf("rabbitmq harness: decode user %q: %v: %s", name, err, body)
	}
	tags := []string{}
	var list []string
	var str string
	switch {
	case len(u.Tags) == 0 || string(u.Tags) == "null":
	case json.Unmarshal(u.Tags, &list) == nil:
		for _, tag := range list {
			if tag = strings.TrimSpace(tag); tag != "" {
				tags = append(tags, tag)
			}
		}
	case json.Unmarshal(u.Tags, &str) == nil:
		for _, tag := range strings.Split(str, ",") {
			if tag = strings.TrimSpace(tag); tag != "" {
				tags = append(tags, tag)
			}
		}
	default:
		t.Fatalf("rabbitmq harness: user %q: unexpected tags %s", name, u.Tags)
	}
	return tags
}

// Permissions returns the user's permissions in vhost (direct API);
// ok is false when none are set (or the user/vhost does not exist).
func (r *rabbitMQ) Permissions(t testing.TB, vhost, user string) (configure, write, read string, ok bool) {
	t.Helper()
	status, body := r.Get(t, "/api/permissions/"+rmqSeg(vhost)+"/"+rmqSeg(user))
	switch status {
	case http.StatusNotFound:
		return "", "", "", false
	case http.StatusOK:
	default:
		t.Fatalf("rabbitmq harness: GET permissions %q/%q: HTTP %d: %s", vhost, user, status, body)
	}
	var p struct {
		Configure string `json:"configure"`
		Write     string `json:"write"`
		Read      string `json:"read"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("rabbitmq harness: decode permissions %q/%q: %v: %s", vhost, user, err, body)
	}
	return p.Configure, p.Write, p.Read, true
}

// VhostExists reports whether the vhost exists (direct API).
func (r *rabbitMQ) VhostExists(t testing.TB, name string) bool {
	t.Helper()
	status, body := r.Get(t, "/api/vhosts/"+rmqSeg(name))
	switch status {
	case http.StatusOK:
		return true
	case http.StatusNotFound:
		return false
	}
	t.Fatalf("rabbitmq harness: GET vhost %q: HTTP %d: %s", name, status, body)
	return false
}

func (r *rabbitMQ) mustWrite(t testing.TB, method, path string, body any) {
	t.Helper()
	status, data := r.Do(t, method, path, body)
	if status < 200 || status > 299 {
		t.Fatalf("rabbitmq harness: %s %s: HTTP %d: %s", method, rmqAPIPath(path), status, data)
	}
}

// CreateVhost creates (or keeps) a vhost directly via the API.
func (r *rabbitMQ) CreateVhost(t testing.TB, name string) {
	t.Helper()
	r.mustWrite(t, http.MethodPut, "/api/vhosts/"+rmqSeg(name), map[string]any{})
}

// CreateUser creates or updates a user directly via the API; tags is a
// comma-separated list ("" for none), as rabbitmqadmin sends it.
func (r *rabbitMQ) CreateUser(t testing.TB, name, pass, tags string) {
	t.Helper()
	r.mustWrite(t, http.MethodPut, "/api/users/"+rmqSeg(name), map[string]any{"password": pass, "tags": tags})
}

// SetPermissions sets a user's permissions in a vhost directly via the API.
func (r *rabbitMQ) SetPermissions(t testing.TB, vhost, user, configure, write, read string) {
	t.Helper()
	r.mustWrite(t, http.MethodPut, "/api/permissions/"+rmqSeg(vhost)+"/"+rmqSeg(user),
		map[string]string{"configure": configure, "write": write, "read": read})
}

// runRabbitmqadmin runs the real rabbitmqadmin CLI against host:port with
// the given credentials ("-H host -P port -u user -p pass args..."), with a
// 30 s timeout and a private empty HOME (no ~/.rabbitmqadmin.conf). err is
// an *exec.ExitError on a non-zero exit (rabbitmqadmin exits 1 for 401,
// 403, 404, 400 and connection errors); see rmqExitCode.
func runRabbitmqadmin(t *testing.T, host string, port int, user, pass string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	rmqRequireExecutable(t, rmqAdminBin)
	ctx, cancel := context.WithTimeout(context.Background(), rmqAdminTimeout)
	defer cancel()
	full := append([]string{"-H", host, "-P", strconv.Itoa(port), "-u", user, "-p", pass}, args...)
	cmd := exec.CommandContext(ctx, rmqAdminBin, full...)
	cmd.Env = append(rmqCleanEnv(), "HOME="+t.TempDir(), "PYTHONIOENCODING=utf-8")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("rabbitmqadmin %s: timed out after %v: %w", strings.Join(args, " "), rmqAdminTimeout, err)
	}
	t.Logf("rabbitmqadmin -H %s -P %d -u %s %s -> exit %d", host, port, user, strings.Join(args, " "), rmqExitCode(err))
	return so.String(), se.String(), err
}

// rmqExitCode returns the process exit code: 0 for nil, -1 if unknown.
func rmqExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

func TestRabbitMQHarness(t *testing.T) {
	r := startRabbitMQ(t)
	t.Logf("startup time: %v", r.StartupTime)

	admin := func(args ...string) (string, string) {
		t.Helper()
		stdout, stderr, err := runRabbitmqadmin(t, "127.0.0.1", r.MgmtPort, r.AdminUser, r.AdminPass, args...)
		if err != nil {
			t.Fatalf("rabbitmqadmin %v: %v\nstdout: %s\nstderr: %s", args, err, stdout, stderr)
		}
		return stdout, stderr
	}

	r.CreateVhost(t, "payments")
	if !r.VhostExists(t, "payments") {
		t.Fatal("vhost payments not created")
	}
	if r.UserExists(t, "ci-new") {
		t.Fatal("ci-new exists before the test")
	}
	if _, _, _, ok := r.Permissions(t, "payments", "ci-new"); ok {
		t.Fatal("permissions for ci-new exist before the test")
	}
	if tags := r.UserTags(t, r.AdminUser); len(tags) != 1 || tags[0] != "administrator" {
		t.Fatalf("admin tags = %q, want [administrator]", tags)
	}

	out, _ := admin("declare", "user", "name=ci-new", "password=x", "tags=")
	if strings.TrimSpace(out) != "user declared" {
		t.Errorf("declare user stdout = %q, want %q", out, "user declared")
	}
	if !r.UserExists(t, "ci-new") {
		t.Fatal("ci-new not created")
	}
	if tags := r.UserTags(t, "ci-new"); len(tags) != 0 {
		t.Errorf("ci-new tags = %q, want none", tags)
	}
	if status, body := r.Get(t, "/api/users/ci-new"); status != http.StatusOK || !bytes.Contains(body, []byte(`"tags":[]`)) {
		t.Errorf("GET /api/users/ci-new = %d %s, want tags as empty list", status, body)
	}

	out, _ = admin("declare", "permission", "vhost=payments", "user=ci-new",
		`configure=^ci-new\.`, `write=^ci-new\.`, `read=^ci-new\.`)
	if strings.TrimSpace(out) != "permission declared" {
		t.Errorf("declare permission stdout = %q", out)
	}
	c, w, rd, ok := r.Permissions(t, "payments", "ci-new")
	if !ok || c != `^ci-new\.` || w != `^ci-new\.` || rd != `^ci-new\.` {
		t.Fatalf("permissions payments/ci-new = %q %q %q %v", c, w, rd, ok)
	}
	if _, _, _, ok := r.Permissions(t, "/", "ci-new"); ok {
		t.Error("ci-new unexpectedly has permissions in /")
	}

	// The default vhost "/" travels as %2F.
	admin("declare", "permission", "vhost=/", "user=ci-new", "configure=", "write=", "read=^amq\\.")
	if c, w, rd, ok := r.Permissions(t, "/", "ci-new"); !ok || c != "" || w != "" || rd != `^amq\.` {
		t.Errorf("permissions //ci-new = %q %q %q %v", c, w, rd, ok)
	}

	// Table output.
	out, _ = admin("list", "users")
	if !strings.Contains(out, "| ci-new ") || !strings.Contains(out, "| "+r.AdminUser+" ") {
		t.Errorf("list users table lacks ci-new/%s:\n%s", r.AdminUser, out)
	}
	// JSON output.
	out, _ = admin("-f", "raw_json", "list", "users")
	var users []struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal([]byte(out), &users); err != nil {
		t.Fatalf("list users raw_json: %v: %s", err, out)
	}
	names := map[string][]string{}
	for _, u := range users {
		names[u.Name] = u.Tags
	}
	if _, ok := names["ci-new"]; !ok || len(names) != 2 {
		t.Errorf("list users = %v, want ci-new and %s", names, r.AdminUser)
	}
	out, _ = admin("list", "vhosts")
	if !strings.Contains(out, "| payments ") {
		t.Errorf("list vhosts lacks payments:\n%s", out)
	}
	out, _ = admin("show", "overview")
	if !strings.Contains(out, "3.") || !strings.Contains(out, "rabbitmq_version") {
		t.Errorf("show overview:\n%s", out)
	}

	// A comma-separated tags string is split by the server.
	admin("declare", "user", "name=ci-ops", "password=y", "tags=administrator,management")
	if tags := r.UserTags(t, "ci-ops"); strings.Join(tags, ",") != "administrator,management" {
		t.Errorf("ci-ops tags = %q", tags)
	}

	out, _ = admin("delete", "user", "name=ci-new")
	if strings.TrimSpace(out) != "user deleted" {
		t.Errorf("delete user stdout = %q", out)
	}
	if r.UserExists(t, "ci-new") {
		t.Fatal("ci-new still exists after delete")
	}
	if _, _, _, ok := r.Permissions(t, "payments", "ci-new"); ok {
		t.Error("permissions of deleted user still present")
	}

	// How real RabbitMQ denials look through rabbitmqadmin.
	t.Run("denials", func(t *testing.T) {
		// Wrong password -> 401.
		stdout, stderr, err := runRabbitmqadmin(t, "127.0.0.1", r.MgmtPort, r.AdminUser, "wrong", "list", "users")
		if rmqExitCode(err) != 1 || stdout != "" || !strings.Contains(stderr, "*** Access refused: /api/users") {
			t.Errorf("wrong password: exit %d stdout %q stderr %q", rmqExitCode(err), stdout, stderr)
		}
		// Management (non-admin) user trying an admin write.
		r.CreateUser(t, "ci-viewer", "v", "management")
		stdout, stderr, err = runRabbitmqadmin(t, "127.0.0.1", r.MgmtPort, "ci-viewer", "v",
			"declare", "user", "name=ci-evil", "password=e", "tags=administrator")
		t.Logf("non-admin declare user: exit %d stdout %q stderr %q", rmqExitCode(err), stdout, stderr)
		if rmqExitCode(err) != 1 {
			t.Errorf("non-admin declare user: exit %d, want 1", rmqExitCode(err))
		}
		if r.UserExists(t, "ci-evil") {
			t.Error("non-admin managed to create ci-evil")
		}
	})
}

// rmqWireRequest is one request as seen by the fake management API.
type rmqWireRequest struct {
	Method     string
	RequestURI string
	Host       string
	Header     http.Header
	Body       string
}

func TestRabbitmqadminWire(t *testing.T) {
	rmqRequireExecutable(t, rmqAdminBin)

	const user, pass = "wire-user", "wire-pass"
	wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))

	var mu sync.Mutex
	var reqs []rmqWireRequest
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		mu.Lock()
		reqs = append(reqs, rmqWireRequest{Method: req.Method, RequestURI: req.RequestURI, Host: req.Host, Header: req.Header.Clone(), Body: string(body)})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if req.Header.Get("Authorization") != wantAuth {
			w.Header().Set("WWW-Authenticate", `Basic realm="RabbitMQ Management"`)
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"not_authorized","reason":"Login failed"}`)
			return
		}
		if strings.Contains(req.URL.Path, "/denied-") {
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"error":"forbidden","decision_id":"dec-123"}`)
			return
		}
		switch req.Method {
		case http.MethodPut:
			w.WriteHeader(http.StatusCreated)
		case http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		case http.MethodGet:
			switch req.URL.Path {
			case "/api/users":
				io.WriteString(w, `[{"name":"guest","password_hash":"x","hashing_algorithm":"rabbit_password_hashing_sha256","tags":["administrator"],"limits":{}}]`)
			case "/api/vhosts":
				io.WriteString(w, `[{"name":"/","messages":0},{"name":"payments","messages":0}]`)
			case "/api/overview":
				io.WriteString(w, `{"rabbitmq_version":"3.10.8","cluster_name":"wire","queue_totals":{"messages":0},"object_totals":{"queues":0}}`)
			default:
				w.WriteHeader(http.StatusNotFound)
				io.WriteString(w, `{"error":"Object Not Found","reason":"Not Found"}`)
			}
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	type want struct {
		method, uri string
		body        map[string]any // nil: no body expected
		stdout      string         // substring
	}
	cases := []struct {
		name string
		args []string
		want want
	}{
		{"declare user no tags", []string{"declare", "user", "name=ci-new", "password=x", "tags="},
			want{"PUT", "/api/users/ci-new", map[string]any{"name": "ci-new", "password": "x", "tags": "", "vhost": "/"}, "user declared"}},
		{"declare user admin tag", []string{"declare", "user", "name=ci-admin", "password=s3cret", "tags=administrator"},
			want{"PUT", "/api/users/ci-admin", map[string]any{"name": "ci-admin", "password": "s3cret", "tags": "administrator", "vhost": "/"}, "user declared"}},
		{"declare user two tags", []string{"declare", "user", "name=ci-ops", "password=y", "tags=administrator,management"},
			want{"PUT", "/api/users/ci-ops", map[string]any{"name": "ci-ops", "password": "y", "tags": "administrator,management", "vhost": "/"}, "user declared"}},
		{"declare permission default vhost", []string{"declare", "permission", "vhost=/", "user=ci-new", "configure=.*", "write=.*", "read=.*"},
			want{"PUT", "/api/permissions/%2F/ci-new", map[string]any{"vhost": "/", "user": "ci-new", "configure": ".*", "write": ".*", "read": ".*"}, "permission declared"}},
		{"declare permission named vhost", []string{"declare", "permission", "vhost=payments", "user=ci-new", `configure=^ci-new\.`, `write=^ci-new\.`, `read=^ci-new\.`},
			want{"PUT", "/api/permissions/payments/ci-new", map[string]any{"vhost": "payments", "user": "ci-new", "configure": `^ci-new\.`, "write": `^ci-new\.`, "read": `^ci-new\.`}, "permission declared"}},
		{"declare vhost", []string{"declare", "vhost", "name=payments"},
			want{"PUT", "/api/vhosts/payments", map[string]any{"name": "payments", "vhost": "/"}, "vhost declared"}},
		{"delete user", []string{"delete", "user", "name=ci-new"},
			want{"DELETE", "/api/users/ci-new", nil, "user deleted"}},
		{"delete permission", []string{"delete", "permission", "vhost=payments", "user=ci-new"},
			want{"DELETE", "/api/permissions/payments/ci-new", nil, "permission deleted"}},
		{"list users", []string{"list", "users"},
			want{"GET", "/api/users", nil, "| guest "}},
		{"list vhosts", []string{"list", "vhosts"},
			want{"GET", "/api/vhosts?columns=name,messages", nil, "| payments "}},
		{"list vhosts raw_json", []string{"-f", "raw_json", "list", "vhosts"},
			want{"GET", "/api/vhosts", nil, `"payments"`}},
		{"show overview", []string{"show", "overview"},
			want{"GET", "/api/overview?columns=rabbitmq_version,cluster_name,queue_totals.messages,object_totals.queues", nil, "3.10.8"}},
	}

	last := func() rmqWireRequest {
		mu.Lock()
		defer mu.Unlock()
		if len(reqs) == 0 {
			t.Fatal("no request recorded")
		}
		return reqs[len(reqs)-1]
	}
	reset := func() {
		mu.Lock()
		reqs = nil
		mu.Unlock()
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reset()
			stdout, stderr, err := runRabbitmqadmin(t, "127.0.0.1", port, user, pass, tc.args...)
			if err != nil {
				t.Fatalf("rabbitmqadmin: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
			}
			mu.Lock()
			n := len(reqs)
			mu.Unlock()
			if n != 1 {
				t.Errorf("%d requests recorded, want 1", n)
			}
			got := last()
			t.Logf("%s %s headers=%v body=%s", got.Method, got.RequestURI, got.Header, got.Body)
			if got.Method != tc.want.method || got.RequestURI != tc.want.uri {
				t.Errorf("request = %s %s, want %s %s", got.Method, got.RequestURI, tc.want.method, tc.want.uri)
			}
			if a := got.Header.Get("Authorization"); a != wantAuth {
				t.Errorf("Authorization = %q, want %q", a, wantAuth)
			}
			if want := fmt.Sprintf("127.0.0.1:%d", port); got.Host != want {
				t.Errorf("Host = %q, want %q", got.Host, want)
			}
			// Exactly these headers, nothing else (no User-Agent, no Accept).
			wantHeaders := []string{"Accept-Encoding", "Authorization", "Content-Length"}
			if tc.want.body != nil {
				wantHeaders = append(wantHeaders, "Content-Type")
			}
			var gotHeaders []string
			for k := range got.Header {
				gotHeaders = append(gotHeaders, k)
			}
			sort.Strings(gotHeaders)
			if strings.Join(gotHeaders, ",") != strings.Join(wantHeaders, ",") {
				t.Errorf("headers = %v, want %v", gotHeaders, wantHeaders)
			}
			if got.Header.Get("Accept-Encoding") != "identity" {
				t.Errorf("Accept-Encoding = %q", got.Header.Get("Accept-Encoding"))
			}
			if cl := got.Header.Get("Content-Length"); cl != strconv.Itoa(len(got.Body)) {
				t.Errorf("Content-Length = %q, body is %d bytes", cl, len(got.Body))
			}
			if tc.want.body == nil {
				if got.Body != "" {
					t.Errorf("body = %q, want none", got.Body)
				}
				if ct := got.Header.Get("Content-Type"); ct != "" {
					t.Errorf("Content-Type = %q on a bodiless request", ct)
				}
			} else {
				if ct := got.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type = %q, want application/json", ct)
				}
				var gotBody map[string]any
				if err := json.Unmarshal([]byte(got.Body), &gotBody); err != nil {
					t.Fatalf("body %q: %v", got.Body, err)
				}
				gb, _ := json.Marshal(gotBody)
				wb, _ := json.Marshal(tc.want.body)
				if !bytes.Equal(gb, wb) {
					t.Errorf("body = %s\n want %s", got.Body, wb)
				}
			}
			if !strings.Contains(stdout, tc.want.stdout) {
				t.Errorf("stdout lacks %q:\n%s", tc.want.stdout, stdout)
			}
		})
	}

	t.Run("403 with JSON body", func(t *testing.T) {
		reset()
		stdout, stderr, err := runRabbitmqadmin(t, "127.0.0.1", port, user, pass,
			"declare", "user", "name=denied-user", "password=x", "tags=administrator")
		t.Logf("exit=%d stdout=%q stderr=%q", rmqExitCode(err), stdout, stderr)
		if rmqExitCode(err) != 1 {
			t.Errorf("exit code = %d, want 1", rmqExitCode(err))
		}
		if stdout != "" {
			t.Errorf("stdout = %q, want empty", stdout)
		}
		for _, s := range []string{
			"Traceback (most recent call last)",
			"Exception: Received response 403 Forbidden for path /api/users/denied-user",
			`b'{"error":"forbidden","decision_id":"dec-123"}'`,
		} {
			if !strings.Contains(stderr, s) {
				t.Errorf("stderr lacks %q", s)
			}
		}
		if got := last(); got.Method != "PUT" || got.RequestURI != "/api/users/denied-user" {
			t.Errorf("request = %s %s", got.Method, got.RequestURI)
		}
	})

	t.Run("401", func(t *testing.T) {
		reset()
		stdout, stderr, err := runRabbitmqadmin(t, "127.0.0.1", port, user, "wrong",
			"declare", "user", "name=denied-user", "password=x", "tags=administrator")
		t.Logf("exit=%d stdout=%q stderr=%q", rmqExitCode(err), stdout, stderr)
		if rmqExitCode(err) != 1 {
			t.Errorf("exit code = %d, want 1", rmqExitCode(err))
		}
		if stdout != "" {
			t.Errorf("stdout = %q, want empty", stdout)
		}
		if strings.TrimSpace(stderr) != "*** Access refused: /api/users/denied-user" {
			t.Errorf("stderr = %q", stderr)
		}
		wrongAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":wrong"))
		if got := last(); got.Header.Get("Authorization") != wrongAuth {
			t.Errorf("Authorization = %q, want %q", got.Header.Get("Authorization"), wrongAuth)
		}
	})

	t.Run("404", func(t *testing.T) {
		reset()
		_, stderr, err := runRabbitmqadmin(t, "127.0.0.1", port, user, pass, "list", "nodes")
		if rmqExitCode(err) != 1 || strings.TrimSpace(stderr) != "*** Not found: /api/nodes?columns=name,type,mem_used" {
			t.Errorf("exit=%d stderr=%q", rmqExitCode(err), stderr)
		}
	})
}
