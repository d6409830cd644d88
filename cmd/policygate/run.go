package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/policygate/policygate/bundles"
	"github.com/policygate/policygate/decision"
	"github.com/policygate/policygate/decision/cache"
	decisionlog "github.com/policygate/policygate/decision/log"
	decisionmetrics "github.com/policygate/policygate/decision/metrics"
	"github.com/policygate/policygate/decision/rego"
	"github.com/policygate/policygate/gateway/authn"
	"github.com/policygate/policygate/gateway/forwardauth"
	"github.com/policygate/policygate/gateway/guard"
	"github.com/policygate/policygate/gateway/proxy"
	"github.com/policygate/policygate/gateway/ratelimit"
	rlredis "github.com/policygate/policygate/gateway/ratelimit/redis"
)

var (
	errUsage  = errors.New("usage")
	errFailed = errors.New("failed")
)

func exitCode(err error) int {
	if err == errUsage {
		return 2
	}
	return 1
}

const usage = `policygate — policy-as-code gateway for administrative APIs

Usage:
  policygate run   --config FILE     run the gateway
  policygate check --config FILE     validate the configuration and compile the policies
  policygate test  [-v] DIR...       run the Rego tests (test_ rules) in policy directories
  policygate logs verify FILE... [--public-key PUB]
                                     check decision logs: hash chain and signed checkpoints
  policygate report --logs FILE... [--since T] [--until T] [--format csv|json]
                                     access review: calls allowed and denied per identity
  policygate bundle build DIR -o FILE [--signing-key KEY] [--revision R]
                                     build (and sign) an OPA bundle
  policygate bundle inspect [--verification-key PUB] FILE
                                     show (and verify) a bundle
  policygate version                 print the version
`

// run is the whole program; main and the end-to-end tests call it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], stdout, stderr)
	case "check":
		return cmdCheck(ctx, args[1:], stdout, stderr)
	case "test":
		return cmdTest(ctx, args[1:], stdout, stderr)
	case "logs":
		return cmdLogs(ctx, args[1:], stdout, stderr)
	case "report":
		return cmdReport(ctx, args[1:], stdout, stderr)
	case "bundle":
		return cmdBundle(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "policygate", version())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprintf(stderr, "policygate: unknown command %q\n\n%s", args[0], usage)
		return errUsage
	}
}

// commit is set at build time by the Makefile
// (-ldflags "-X main.commit=<short hash>").
var commit string

func version() string {
	v := "dev"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	if commit != "" {
		v += " (" + commit + ")"
	}
	return v
}

func configFlag(name string, args []string, stderr io.Writer) (string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	if err := fs.Parse(args); err != nil {
		return "", errUsage
	}
	if *path == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "usage: policygate %s --config FILE\n", name)
		return "", errUsage
	}
	return *path, nil
}

func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	path, err := configFlag("check", args, stderr)
	if err != nil {
		return err
	}
	g, err := build(ctx, path, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return errFailed
	}
	g.close()
	if g.bundles != nil {
		what, err := checkBundles(ctx, g)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return errFailed
		}
		fmt.Fprintf(stdout, "%s: ok (%d routes, %s)\n", path, len(g.cfg.routes.Routes()), what)
		return nil
	}
	fmt.Fprintf(stdout, "%s: ok (%d routes, policy %s revision %s)\n", path, len(g.cfg.routes.Routes()), g.cfg.policyName, g.policy.Revision())
	return nil
}

func cmdTest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	verbose := fs.Bool("v", false, "report every test")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: policygate test [-v] DIR...")
		return errUsage
	}
	sum, err := rego.RunTests(ctx, stdout, *verbose, fs.Args()...)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return errFailed
	}
	if sum.Passed+sum.Failed+sum.Errored == 0 {
		fmt.Fprintln(stderr, "no tests found")
		return errFailed
	}
	if sum.Failed+sum.Errored > 0 {
		return errFailed
	}
	return nil
}

// gateway is everything built from one configuration.
type gateway struct {
	cfg     *config
	policy  *rego.Policy
	authn   *authn.Authenticator
	logger  *decisionlog.Logger
	engine  *decision.Engine
	guard   *guard.Guard
	redis   *rlredis.Limiter
	handler *proxy.Handler
	metrics *prometheus.Registry
	// bundles serves the policy from bundle sources; nil with policy.dir.
	bundles     *bundles.Manager
	activator   *engineActivator
	activatedAt time.Time // of policy.dir's policy
}

func (g *gateway) close() error {
	if g.redis != nil {
		_ = g.redis.Close()
	}
	if g.logger != nil {
		return g.logger.Close()
	}
	return nil
}

// rateLimits builds the rate-limit enforcer: in memory, or through Redis
// with the configured failure modes. A Redis that is down at start is not
// fatal: the routes' failure modes apply until it answers.
func (g *gateway) rateLimits(ctx context.Context, log *slog.Logger) (*ratelimit.Enforcer, error) {
	s := g.cfg.rateLimit
	var remote ratelimit.Limiter
	if s.Backend == ratelimit.BackendRedis {
		rlredis.SetLogger(log.With("component", "redis"))
		r, err := rlredis.Open(s)
		if err != nil {
			return nil, fmt.Errorf("rate_limit.redis: %w", err)
		}
		g.redis = r
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := r.Load(lctx); err != nil {
			log.Warn("rate limit: Redis not reachable at start; failure modes apply", "err", err)
		}
		cancel()
		remote = r
	}
	return ratelimit.NewEnforcer(s, remote, ratelimit.Options{Log: log, Registerer: g.metrics})
}

// build validates the configuration, compiles the policy and wires the
// decision path. check and run share it, so check fails exactly when run
// would refuse to start. A nil logOut (check) validates the decision log
// and loads its files without opening it: a running gateway may hold it.
func build(ctx context.Context, path string, log *slog.Logger, logOut io.Writer) (*gateway, error) {
	cfg, err := loadConfig(path)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	if cfg == nil {
		return nil, err
	}
	g := &gateway{cfg: cfg, metrics: prometheus.NewRegistry()}
	g.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a, aerr := authn.New(cfg.authnCfg, authn.Options{BaseDir: cfg.baseDir, Log: log})
	if aerr != nil {
		errs = append(errs, prefixed("authn", aerr))
	}
	g.authn = a
	if cfg.policyDir != "" && cfg.routes != nil {
		p, perr := rego.LoadDir(ctx, cfg.policyDir, cfg.policyName, cfg.policyPaths())
		if perr != nil {
			errs = append(errs, fmt.Errorf("policy: %w", perr))
		}
		g.policy = p
	}
	if len(cfg.file.Bundles.Bundles) > 0 {
		g.activator = &engineActivator{paths: cfg.policyPaths()}
		m, berr := bundles.New(cfg.file.Bundles, g.activator, bundles.Options{
			BaseDir:    cfg.baseDir,
			Log:        log.With("component", "bundles"),
			Registerer: g.metrics,
			UserAgent:  "policygate/" + version(),
		})
		if berr != nil {
			errs = append(errs, berr)
		}
		g.bundles = m
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	g.logger, err = decisionlog.New(cfg.logCfg, decisionlog.Options{
		Stdout:            logOut,
		CredentialHeaders: a.CredentialHeaders(),
		Log:               log.With("component", "decision_log"),
		BaseDir:           cfg.baseDir,
		Registerer:        g.metrics,
		CheckOnly:         logOut == nil,
	})
	if err != nil {
		return nil, fmt.Errorf("decision_log: %w", err)
	}
	engineCfg := decision.Config{Timeout: cfg.policyTimeout, Logger: g.logger, Log: log.With("component", "engine")}
	mcfg := decisionmetrics.Config{Registerer: g.metrics}
	if size := cfg.file.DecisionCache.Size; size > 0 {
		c, err := cache.New[decision.CacheKey, decision.Result](cfg.file.DecisionCache, cache.Options{})
		if err != nil {
			g.close()
			return nil, fmt.Errorf("decision_cache: %w", err)
		}
		engineCfg.Cache, mcfg.Cache = c, c
	}
	if engineCfg.Metrics, err = decisionmetrics.New(mcfg); err != nil {
		g.close()
		return nil, err
	}
	g.engine = decision.NewEngine(engineCfg)
	if g.policy != nil {
		g.engine.Activate(g.policy)
		g.activatedAt = time.Now()
	}
	if g.activator != nil {
		// Bundles activate once Run has them; until then the engine is not
		// ready and denies.
		g.activator.engine = g.engine
	}
	limits, err := g.rateLimits(ctx, log.With("component", "ratelimit"))
	if err != nil {
		g.close()
		return nil, err
	}
	g.guard, err = guard.New(guard.Config{
		RateLimits:     limits,
		Routes:         cfg.routes,
		Decider:        g.engine,
		Authenticator:  a,
		TrustedProxies: cfg.trusted,
		Registerer:     g.metrics,
		Log:            log.With("component", "guard"),
	})
	if err != nil {
		g.close()
		return nil, err
	}
	g.handler, err = proxy.New(proxy.Config{Guard: g.guard, Log: log.With("component", "proxy"), BodyTimeout: cfg.readHeaderTimeout})
	if err != nil {
		g.close()
		return nil, err
	}
	return g, nil
}

// prefixed prefixes every joined error with key.
func prefixed(key string, err error) error {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		var out []error
		for _, e := range joined.Unwrap() {
			out = append(out, fmt.Errorf("%s.%w", key, e))
		}
		return errors.Join(out...)
	}
	return fmt.Errorf("%s.%w", key, err)
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	path, err := configFlag("run", args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	g, err := build(ctx, path, log, stdout)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return errFailed
	}
	cfg := g.cfg
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = g.authn.Run(runCtx) // refreshes remote key sets until runCtx ends
	}()
	if g.bundles != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.bundles.Run(runCtx); err != nil {
				log.Error("bundles stopped", "err", err)
			}
		}()
	}

	type listener struct {
		name string
		srv  *http.Server
		ln   net.Listener
		tls  bool
	}
	var lns []listener
	newServer := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: cfg.readHeaderTimeout,
			IdleTimeout:       cfg.idleTimeout,
			MaxHeaderBytes:    cfg.maxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
			BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		}
	}
	listen := func(name, addr string, h http.Handler, useTLS bool) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s: listen %s: %w", name, addr, err)
		}
		srv := newServer(h)
		if useTLS {
			srv.TLSConfig = cfg.tls
		}
		lns = append(lns, listener{name: name, srv: srv, ln: ln, tls: useTLS})
		return nil
	}
	closeAll := func() {
		for _, l := range lns {
			l.ln.Close()
		}
	}
	if s := cfg.file.Server; s.Listen != "" {
		if err := listen("http", s.Listen, g.handler, false); err != nil {
			closeAll()
			g.close()
			return err
		}
	}
	if t := cfg.file.Server.TLS; t != nil {
		if err := listen("https", t.Listen, g.handler, true); err != nil {
			closeAll()
			g.close()
			return err
		}
	}
	if a := cfg.file.Admin.Listen; a != "" {
		if err := listen("admin", a, adminHandler(g), false); err != nil {
			closeAll()
			g.close()
			return err
		}
	}
	if fa := cfg.file.ForwardAuth; fa != nil {
		if err := listen("forward_auth", fa.Listen, forwardauth.New(g.guard), false); err != nil {
			closeAll()
			g.close()
			return err
		}
	}
	var stopExtAuthz func(context.Context)
	if cfg.file.ExtAuthz != nil {
		addr, stop, err := startExtAuthz(g, log.With("component", "ext_authz"))
		if err != nil {
			closeAll()
			g.close()
			return err
		}
		stopExtAuthz = stop
		log.Info("listening", "listener", "ext_authz", "addr", addr)
	}
	stopXDS, err := startXDS(g, log)
	if err != nil {
		if stopExtAuthz != nil {
			stopExtAuthz(ctx)
		}
		closeAll()
		g.close()
		return err
	}

	errc := make(chan error, len(lns))
	for _, l := range lns {
		log.Info("listening", "listener", l.name, "addr", l.ln.Addr().String())
		go func() {
			var err error
			if l.tls {
				err = l.srv.ServeTLS(l.ln, "", "")
			} else {
				err = l.srv.Serve(l.ln)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", l.name, err)
			}
		}()
	}
	if g.bundles != nil {
		log.Info("policygate started", "routes", len(cfg.routes.Routes()), "bundles", len(cfg.file.Bundles.Bundles), "ready", g.engine.Ready())
	} else {
		log.Info("policygate started", "routes", len(cfg.routes.Routes()), "policy", cfg.policyName, "revision", g.policy.Revision())
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "grace", cfg.shutdownGrace)
	case runErr = <-errc:
		log.Error("listener failed", "err", runErr)
	}
	// In-flight requests finish (and log) within the grace period; then the
	// decision log drains and flushes.
	shutCtx, shutCancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownGrace)
	defer shutCancel()
	var swg sync.WaitGroup
	for _, l := range lns {
		swg.Add(1)
		go func() {
			defer swg.Done()
			if err := l.srv.Shutdown(shutCtx); err != nil {
				log.Warn("shutdown incomplete", "listener", l.name, "err", err)
				l.srv.Close()
			}
		}()
	}
	if stopExtAuthz != nil {
		swg.Add(1)
		go func() { defer swg.Done(); stopExtAuthz(shutCtx) }()
	}
	swg.Add(1)
	go func() { defer swg.Done(); stopXDS(shutCtx) }()
	swg.Wait()
	cancel()
	wg.Wait()
	if err := g.close(); err != nil {
		log.Error("decision log close", "err", err)
		if runErr == nil {
			runErr = err
		}
	}
	written, failed := g.logger.Stats()
	log.Info("stopped", "decision_events_written", written, "decision_events_failed", failed)
	return runErr
}

func adminHandler(g *gateway) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g.metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		if !g.engine.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "no policy activated\n")
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /v1/status", statusHandler(g, g.activatedAt))
	return mux
}
