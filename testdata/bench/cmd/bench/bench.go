package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

const (
	modulePath = "github.com/policygate/policygate"
	opaModule  = "github.com/open-policy-agent/opa"
	// policyRel is the reference RBAC policy bundle, relative to the
	// module root.
	policyRel = "testdata/bench/rbac"
	// rule is the decision every variant asks for.
	rule = "rbac/decision"
)

// bench is one run: its settings, work directory, binaries and every
// process it started.
type bench struct {
	s       settings
	log     io.Writer // progress and warnings
	goBin   string
	root    string // module root
	work    string // temporary directory: binaries, configs, keys, logs
	taskset string
	pin     bool
	// serverCPUList is BENCH_SERVER_CPUS parsed, when pinning;
	// pinnedCPUList adds BENCH_CLIENT_CPUS.
	serverCPUList, pinnedCPUList []int
	tick                         time.Duration // one /proc clock tick
	procs                        []*proc       // in start order

	policygate string // the binary under test
	opaBin     string
	opaVersion string
	policyDir  string

	backend    *proc
	backendURL string
	opa        *proc
	opaURL     string

	auth     *authSetup
	requests []request
	script   string // wrk Lua script
	roles    int    // roles in the policy's data
}

func newBench(ctx context.Context, s settings, log io.Writer) (*bench, error) {
	b := &bench{s: s, log: log, tick: clockTick(), goBin: envString("GO", "go")}
	var err error
	if b.root, err = moduleRoot(); err != nil {
		return nil, err
	}
	b.policyDir = filepath.Join(b.root, policyRel)
	if _, err := exec.LookPath("wrk"); err != nil {
		return nil, errors.New("wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk), then run again")
	}
	switch ts, err := exec.LookPath("taskset"); {
	case err != nil:
		fmt.Fprintln(log, "warning: taskset not found (util-linux): servers and wrk are not pinned and share every CPU")
	case runtime.NumCPU() < 2:
		fmt.Fprintln(log, "warning: one CPU available: servers and wrk share it, so the numbers understate every proxy")
	default:
		b.taskset, b.pin = ts, true
		if b.serverCPUList, err = parseCPUList(s.serverCPUs); err != nil {
			return nil, fmt.Errorf("BENCH_SERVER_CPUS: %w", err)
		}
		client, err := parseCPUList(s.clientCPUs)
		if err != nil {
			return nil, fmt.Errorf("BENCH_CLIENT_CPUS: %w", err)
		}
		b.pinnedCPUList = append(slices.Clone(b.serverCPUList), client...)
		slices.Sort(b.pinnedCPUList)
		b.pinnedCPUList = slices.Compact(b.pinnedCPUList)
	}
	if b.work, err = os.MkdirTemp("", "policygate-bench-"); err != nil {
		return nil, err
	}
	if err := os.Mkdir(b.path("bin"), 0o755); err != nil {
		return nil, err
	}
	return b, ctx.Err()
}

func (b *bench) path(name string) string { return filepath.Join(b.work, name) }

// close stops every process the bench started, newest first, each by its
// PID, and removes the work directory unless BENCH_KEEP=1.
func (b *bench) close() {
	for i := len(b.procs) - 1; i >= 0; i-- {
		b.procs[i].stop()
	}
	if b.s.keep {
		fmt.Fprintln(b.log, "work directory kept:", b.work)
		return
	}
	_ = os.RemoveAll(b.work)
}

// prepare builds the binaries, creates keys and tokens, starts the backend
// and the OPA server, and picks the requests the load sends.
func (b *bench) prepare(ctx context.Context) error {
	if _, err := os.Stat(b.policyDir); err != nil {
		return fmt.Errorf("reference policy: %w", err)
	}
	pkgs := []string{"./testdata/bench/backend", "./testdata/bench/plainproxy", "./testdata/bench/sidecar"}
	b.policygate = b.bin("policygate")
	if b.s.policygate == "" {
		pkgs = append(pkgs, "./cmd/policygate")
		fmt.Fprintln(b.log, "building policygate and the benchmark servers ...")
	} else {
		abs, err := filepath.Abs(b.s.policygate)
		if err != nil {
			return err
		}
		b.policygate = abs
		fmt.Fprintf(b.log, "building the benchmark servers (policygate: %s) ...\n", abs)
	}
	if err := b.goCmd(ctx, b.root, nil, append([]string{"build", "-o", b.path("bin") + string(filepath.Separator)}, pkgs...)...); err != nil {
		return err
	}
	if err := b.ensureOPA(ctx); err != nil {
		return err
	}
	auth, err := newAuth(b.path("jwks.json"))
	if err != nil {
		return err
	}
	b.auth = auth

	addr, err := freeAddr()
	if err != nil {
		return err
	}
	b.backendURL = "http://" + addr
	if b.backend, err = b.startProc("backend", nil, b.bin("backend"), "-addr", addr); err != nil {
		return err
	}
	if err := b.backend.waitReady(ctx, httpOK(b.backendURL+"/")); err != nil {
		return err
	}

	if addr, err = freeAddr(); err != nil {
		return err
	}
	b.opaURL = "http://" + addr
	args := []string{"run", "--server", "--addr", addr, "--bundle", "--ignore", "*_test.rego",
		"--log-level", "error", "--skip-version-check"}
	if b.s.opaLogs {
		args = append(args, "--set", "decision_logs.console=true")
	}
	if b.opa, err = b.startProc("opa", nil, b.opaBin, append(args, b.policyDir)...); err != nil {
		return err
	}
	if err := b.opa.waitReady(ctx, httpOK(b.opaURL+"/health")); err != nil {
		return err
	}

	if err := b.pickRequests(ctx); err != nil {
		return err
	}
	b.script = b.path("mix.lua")
	return os.WriteFile(b.script, luaScript(b.requests), 0o600)
}

func (b *bench) bin(name string) string { return filepath.Join(b.work, "bin", name) }

// ensureOPA provides bin/opa built from the OPA module version in go.mod,
// so the sidecar runs the same evaluator as policygate. A bin/opa of that
// version is reused.
func (b *bench) ensureOPA(ctx context.Context) error {
	out, err := b.goOutput(ctx, b.root, "list", "-m", "-f", "{{.Version}}", opaModule)
	if err != nil {
		return err
	}
	b.opaVersion = strings.TrimSpace(out)
	binDir := filepath.Join(b.root, "bin")
	b.opaBin = filepath.Join(binDir, "opa")
	if v, err := exec.CommandContext(ctx, b.opaBin, "version").Output(); err == nil {
		if strings.Contains(string(v), "Version: "+strings.TrimPrefix(b.opaVersion, "v")+"\n") {
			return nil
		}
	}
	fmt.Fprintf(b.log, "building opa %s into bin/ (once) ...\n", b.opaVersion)
	// Outside the module, so OPA builds with its own go.mod, exactly as
	// its release does.
	return b.goCmd(ctx, b.work, []string{"GOBIN=" + binDir}, "install", opaModule+"@"+b.opaVersion)
}

func (b *bench) goCmd(ctx context.Context, dir string, env []string, args ...string) error {
	cmd := exec.CommandContext(ctx, b.goBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return nil
}

func (b *bench) goOutput(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, b.goBin, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// moduleRoot finds the policygate module root from the working directory
// upwards.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if raw, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			for _, line := range strings.Split(string(raw), "\n") {
				if f := strings.Fields(line); len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == modulePath {
					return dir, nil
				}
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the policygate module (make bench)")
		}
		dir = parent
	}
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
