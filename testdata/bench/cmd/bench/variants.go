package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// baseline is the variant every ratio is relative to.
const baseline = "plain"

// variant is one row of the table. Adding one is an entry here and,
// usually, a pgOptions.
type variant struct {
	name  string // row name and key of the bench: line
	about string
	ratio bool // reported on the bench: line
	start func(ctx context.Context, b *bench) (*target, error)
}

// variants in table and run order. The bench: line lists the ratio
// variants in this order.
var variants = []variant{
	{name: "backend", about: "the sample backend alone, no proxy", start: startBackend},
	{name: "plain", about: "tuned httputil.ReverseProxy", ratio: true, start: startPlain},
	{name: "cached", about: "policygate, RBAC policy, decision cache on", ratio: true,
		start: startPolicygate(pgOptions{
			name:        "cached",
			top:         "decision_cache:\n  size: 100000\n",
			route:       "    cache_ttl: 30s\n",
			newKeys:     []string{"decision_cache", "cache_ttl"},
			unavailable: "decision cache not available yet",
		})},
	{name: "uncached", about: "policygate, RBAC policy, no decision cache", ratio: true,
		start: startPolicygate(pgOptions{name: "uncached"})},
	{name: "sidecar", about: "reverse proxy + JWT check + opa run --server over REST", ratio: true, start: startSidecar},
	{name: "ratelimited", about: "policygate uncached + a route rate limit checked in a private redis-server", ratio: true, start: startRateLimited},
}

// target is a started variant: where the load goes and which processes
// serve it.
type target struct {
	url   string
	procs []*proc  // every server process a request passes through, the backend last
	logs  []string // decision logs, truncated before every measured run
}

// unavailable marks a variant that cannot run because a feature it needs
// is not there (yet); it is reported as n/a without failing the bench.
type unavailable struct{ reason string }

func (u *unavailable) Error() string { return u.reason }

func startBackend(_ context.Context, b *bench) (*target, error) {
	return &target{url: b.backendURL, procs: []*proc{b.backend}}, nil
}

func startPlain(ctx context.Context, b *bench) (*target, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	p, err := b.startProc("plain", nil, b.bin("plainproxy"), "-addr", addr, "-upstream", b.backendURL, "-idle", strconv.Itoa(b.idle()))
	if err != nil {
		return nil, err
	}
	if err := p.waitReady(ctx, accepting(addr)); err != nil {
		return nil, err
	}
	return &target{url: "http://" + addr, procs: []*proc{p, b.backend}}, nil
}

func startSidecar(ctx context.Context, b *bench) (*target, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	p, err := b.startProc("sidecar", nil, b.bin("sidecar"), "-addr", addr, "-upstream", b.backendURL,
		"-opa", b.opaURL, "-rule", rule, "-jwks", b.auth.jwks, "-issuer", issuer, "-audience", audience,
		"-idle", strconv.Itoa(b.idle()))
	if err != nil {
		return nil, err
	}
	if err := p.waitReady(ctx, accepting(addr)); err != nil {
		return nil, err
	}
	t := &target{url: "http://" + addr, procs: []*proc{p, b.opa, b.backend}}
	if b.s.opaLogs {
		t.logs = []string{b.opa.log} // OPA's console decision log is its stdout
	}
	return t, nil
}

// rateLimitPerMinute is the ratelimited variant's limit per caller: far
// above what any run can send, so that every request is allowed and what
// is measured is the cost of checking a limit, not of rejecting.
const rateLimitPerMinute = 100_000_000

// startRateLimited starts a private redis-server (loopback, no
// persistence, pinned with the other servers) and policygate without the
// decision cache, its route limited per caller through that Redis and
// failing closed, as a production route would be. Redis does part of the
// limit's work, so its CPU counts as the variant's: ratelimited minus
// uncached is the server CPU rate limiting adds to a request.
func startRateLimited(ctx context.Context, b *bench) (*target, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, &unavailable{reason: "redis-server not found (Debian: apt-get install -y redis-server)"}
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	redis, err := b.startProc("redis", nil, bin, "--bind", host, "--port", port,
		"--save", "", "--appendonly", "no", "--dir", b.work)
	if err != nil {
		return nil, err
	}
	if err := redis.waitReady(ctx, redisPing(addr)); err != nil {
		return nil, err
	}
	// The check timeout is raised from its 50ms default so that a busy
	// machine measures the allow path: a timed-out check fails closed, a
	// cheaper 503 answer.
	t, err := startPolicygate(pgOptions{
		name: "ratelimited",
		top:  fmt.Sprintf("rate_limit:\n  backend: redis\n  timeout: 1s\n  redis:\n    addrs: [%q]\n", addr),
		route: fmt.Sprintf("    rate_limit:\n      limits: [{key: \"caller:{subject}\", limit: %d, period: 1m}]\n      failure_mode: fail_closed\n",
			rateLimitPerMinute),
		newKeys:     []string{"rate_limit"},
		unavailable: "rate limits not available yet",
	})(ctx, b)
	if err != nil {
		return nil, err
	}
	t.procs = []*proc{t.procs[0], redis, b.backend}
	return t, nil
}

// redisPing is a readiness check: the Redis server at addr answers PING.
func redisPing(addr string) func(context.Context) bool {
	return func(ctx context.Context) bool {
		c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := io.WriteString(c, "*1\r\n$4\r\nPING\r\n"); err != nil {
			return false
		}
		buf := make([]byte, 7)
		_, err = io.ReadFull(c, buf)
		return err == nil && string(buf) == "+PONG\r\n"
	}
}

// pgOptions describes one policygate variant: its name and what its
// configuration adds to the common one.
type pgOptions struct {
	name  string
	top   string // top-level YAML appended to the configuration
	route string // YAML appended to the route, indented by four spaces
	// newKeys are configuration keys of a feature that may not be in the
	// build under test yet. When `policygate check` rejects one of them as
	// unknown, the variant is reported n/a with the reason unavailable
	// instead of failing the bench.
	newKeys     []string
	unavailable string
}

func startPolicygate(o pgOptions) func(context.Context, *bench) (*target, error) {
	return func(ctx context.Context, b *bench) (*target, error) {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		admin, err := freeAddr()
		if err != nil {
			return nil, err
		}
		cfgPath := b.path("policygate-" + o.name + ".yaml")
		logPath := b.path("decisions-" + o.name + ".jsonl")
		cfg := fmt.Sprintf(`# policygate %s, generated by make bench.
server:
  listen: %s
admin:
  listen: %s
policy:
  dir: %q
  name: rbac
authn:
  jwt:
    jwks_file: %q
    issuer: %s
    audiences: [%s]
    algorithms: [%s]
routes:
  - name: bench
    path_prefix: /
    upstream: %s
    policy: %s
%sdecision_log:
  output: file
  path: %q
%s`, o.name, addr, admin, b.policyDir, b.auth.jwks, issuer, audience, jwtAlg, b.backendURL, rule, o.route, logPath, o.top)
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			return nil, err
		}
		var out bytes.Buffer
		check := exec.CommandContext(ctx, b.policygate, "check", "--config", cfgPath)
		check.Stdout, check.Stderr = &out, &out
		if err := check.Run(); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			msg := strings.TrimSpace(out.String())
			for _, k := range o.newKeys {
				if strings.Contains(msg, fmt.Sprintf("unknown key %q", k)) {
					return nil, &unavailable{reason: fmt.Sprintf("%s (policygate check: unknown key %q)", o.unavailable, k)}
				}
			}
			return nil, fmt.Errorf("policygate check --config %s: %v\n%s", cfgPath, err, msg)
		}
		p, err := b.startProc(o.name, nil, b.policygate, "run", "--config", cfgPath)
		if err != nil {
			return nil, err
		}
		if err := p.waitReady(ctx, httpOK("http://"+admin+"/ready")); err != nil {
			return nil, err
		}
		return &target{url: "http://" + addr, procs: []*proc{p, b.backend}, logs: []string{logPath}}, nil
	}
}

// idle is the keep-alive pool the bench's proxies keep per upstream: at
// least the connections of the load.
func (b *bench) idle() int { return max(256, b.s.conns) }

// arm is a variant in this run: started, or why not, and its samples.
type arm struct {
	v       variant
	t       *target
	err     error    // why it has no (complete) results
	runs    []sample // throughput runs
	lat     []sample // one-connection runs
	anomaly []string // runs with errors or non-2xx answers
	retried int      // runs repeated because other work disturbed them
}

func (a *arm) ok() bool { return a.t != nil && a.err == nil }

// startVariants starts every selected variant and checks that it allows
// every request of the mix. A variant that fails is reported, not fatal.
func (b *bench) startVariants(ctx context.Context, vs []variant) []*arm {
	var arms []*arm
	for _, v := range vs {
		if b.s.only != nil && !b.s.only[v.name] {
			continue
		}
		a := &arm{v: v}
		arms = append(arms, a)
		if ctx.Err() != nil {
			a.err = ctx.Err()
			continue
		}
		fmt.Fprintf(b.log, "starting %s ...\n", v.name)
		t, err := v.start(ctx, b)
		if err == nil {
			err = b.preflight(ctx, t)
		}
		if err != nil {
			a.err = err
			var u *unavailable
			if !errors.As(err, &u) {
				fmt.Fprintf(b.log, "%s: %v\n", v.name, err)
			}
			continue
		}
		a.t = t
	}
	return arms
}

// preflight sends every distinct request of the mix once and requires a
// 2xx answer, so that no variant is measured on a faster deny path; and
// checks that the variant's decision log is being written.
func (b *bench) preflight(ctx context.Context, t *target) error {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	for _, r := range b.requests {
		var body io.Reader
		if r.body != "" {
			body = strings.NewReader(r.body)
		}
		req, err := http.NewRequestWithContext(ctx, r.method, t.url+r.path, body)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+r.who.token)
		req.Header.Set("User-Agent", userAgent)
		req.Header.Set("Accept", accept)
		if r.body != "" {
			req.Header.Set("Content-Type", postContentType)
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("preflight %s: %w", r, err)
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("preflight %s: status %d: %s", r, resp.StatusCode, strings.TrimSpace(string(msg)))
		}
	}
	// Decision logs are flushed on an interval; give them a moment.
	deadline := time.Now().Add(5 * time.Second)
	for _, path := range t.logs {
		for {
			if st, err := os.Stat(path); err == nil && st.Size() > 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("preflight: decision log %s stays empty", path)
			}
			if err := sleep(ctx, 50*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
