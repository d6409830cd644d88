package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/policygate/policygate/bundles"
	"github.com/policygate/policygate/decision/cache"
	decisionlog "github.com/policygate/policygate/decision/log"
	"github.com/policygate/policygate/gateway/authn"
	"github.com/policygate/policygate/gateway/ratelimit"
	"github.com/policygate/policygate/gateway/route"
	"github.com/policygate/policygate/xds"
)

// fileConfig is the configuration file. Each section is the Config of the
// package that owns it; this file only composes them. See the README for
// every key.
type fileConfig struct {
	Server      serverConfig       `yaml:"server"`
	Admin       adminConfig        `yaml:"admin"`
	Policy      policyConfig       `yaml:"policy"`
	Authn       authn.Config       `yaml:"authn"`
	Routes      []route.Config     `yaml:"routes"`
	DecisionLog decisionlog.Config `yaml:"decision_log"`
	RateLimit   ratelimit.Config   `yaml:"rate_limit"`
	ForwardAuth *forwardAuthConfig `yaml:"forward_auth"`
	ExtAuthz    *extAuthzConfig    `yaml:"ext_authz"`
	// XDS serves Envoy its configuration over xDS. Optional.
	XDS *xds.Config `yaml:"xds"`
	// Bundles (top-level keys bundles and persistence_dir) distribute the
	// policy as OPA bundles instead of policy.dir.
	Bundles bundles.Config `yaml:",inline"`
	// DecisionCache keeps decisions between requests (see the README).
	// Absent or size 0 (the default): no cache, every request is evaluated.
	DecisionCache cache.Config `yaml:"decision_cache"`
}

type serverConfig struct {
	// Listen is the plain HTTP address. Empty disables it (TLS must be set).
	Listen string `yaml:"listen"`
	// TLS configures the HTTPS listener. Optional.
	TLS *tlsConfig `yaml:"tls"`
	// TrustedProxies lists CIDRs (or single addresses) of proxies whose
	// forwarding headers are believed. Empty: none.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// ReadHeaderTimeout, IdleTimeout and ShutdownGrace are Go durations;
	// empty means 10s, 120s and 15s.
	ReadHeaderTimeout string `yaml:"read_header_timeout"`
	IdleTimeout       string `yaml:"idle_timeout"`
	ShutdownGrace     string `yaml:"shutdown_grace"`
	// MaxHeaderBytes bounds request headers. Zero means 64 KiB.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
}

type tlsConfig struct {
	// Listen is the HTTPS address. Required.
	Listen string `yaml:"listen"`
	// CertFile and KeyFile are PEM files. Required.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

type adminConfig struct {
	// Listen serves /healthz and /ready. Empty disables it.
	Listen string `yaml:"listen"`
}

type policyConfig struct {
	// Dir is a policy directory in OPA bundle layout, loaded once at start.
	// Required unless bundles is set; not both.
	Dir string `yaml:"dir"`
	// Name labels the bundle in decision logs. Empty means the directory's
	// base name.
	Name string `yaml:"name"`
	// Timeout bounds one evaluation (Go duration). Empty means "1s".
	Timeout string `yaml:"timeout"`
}

// config is the validated, parsed configuration.
type config struct {
	file              fileConfig
	baseDir           string
	trusted           []netip.Prefix
	tls               *tls.Config
	extAuthzTLS       *tls.Config
	readHeaderTimeout time.Duration
	idleTimeout       time.Duration
	shutdownGrace     time.Duration
	maxHeaderBytes    int
	policyDir         string
	policyName        string
	policyTimeout     time.Duration
	routes            *route.Table
	rateLimit         *ratelimit.Settings
	authnCfg          authn.Config
	logCfg            decisionlog.Config
	xds               *xdsSetup // nil without an xds section
}

var unknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type \S+`)

// decodeConfig reads the file strictly: unknown keys and a second document
// are errors naming file:line.
func decodeConfig(path string) (*fileConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var fc fileConfig
	if err := dec.Decode(&fc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty configuration", path)
		}
		msg := strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n")
		msg = unknownField.ReplaceAllString(msg, path+":$1: unknown key \"$2\"")
		msg = strings.ReplaceAll(msg, "\n  ", "\n")
		msg = strings.TrimSpace(strings.ReplaceAll(msg, "yaml: line ", path+":"))
		if !strings.HasPrefix(msg, path) {
			msg = path + ": " + msg
		}
		return nil, errors.New(msg)
	}
	var extra any
	// Anything after the first document is an error, a malformed one too.
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: more than one YAML document", path)
	}
	return &fc, nil
}

// loadConfig decodes and validates path; every error names its key.
func loadConfig(path string) (*config, error) {
	fc, err := decodeConfig(path)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	c := &config{file: *fc, baseDir: filepath.Dir(abs)}
	var errs []error
	add := func(key string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
		}
	}
	s := fc.Server
	if s.Listen == "" && s.TLS == nil {
		errs = append(errs, errors.New("server.listen: required unless server.tls is set"))
	}
	if s.Listen != "" {
		add("server.listen", checkAddr(s.Listen))
	}
	if s.TLS != nil {
		add("server.tls.listen", checkAddr(s.TLS.Listen))
		if s.TLS.CertFile == "" || s.TLS.KeyFile == "" {
			errs = append(errs, errors.New("server.tls.cert_file: cert_file and key_file are required"))
		} else {
			cert, err := tls.LoadX509KeyPair(c.resolve(s.TLS.CertFile), c.resolve(s.TLS.KeyFile))
			add("server.tls.cert_file", err)
			c.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
	}
	for i, p := range s.TrustedProxies {
		pfx, err := parsePrefix(p)
		add(fmt.Sprintf("server.trusted_proxies[%d]", i), err)
		c.trusted = append(c.trusted, pfx)
	}
	c.readHeaderTimeout = duration(s.ReadHeaderTimeout, 10*time.Second, "server.read_header_timeout", add)
	c.idleTimeout = duration(s.IdleTimeout, 120*time.Second, "server.idle_timeout", add)
	c.shutdownGrace = duration(s.ShutdownGrace, 15*time.Second, "server.shutdown_grace", add)
	c.maxHeaderBytes = s.MaxHeaderBytes
	if c.maxHeaderBytes == 0 {
		c.maxHeaderBytes = 64 << 10
	} else if c.maxHeaderBytes < 4096 {
		errs = append(errs, errors.New("server.max_header_bytes: must be at least 4096"))
	}
	if fc.Admin.Listen != "" {
		add("admin.listen", checkAddr(fc.Admin.Listen))
	}
	c.validateFrontDoors(add)
	if rl, err := ratelimit.ParseConfig(fc.RateLimit, ratelimit.ParseOptions{BaseDir: c.baseDir}); err != nil {
		errs = append(errs, err) // already named rate_limit.…
	} else {
		c.rateLimit = rl
	}

	switch {
	case fc.Policy.Dir == "" && len(fc.Bundles.Bundles) == 0:
		errs = append(errs, errors.New("policy.dir: required unless bundles is set"))
	case fc.Policy.Dir != "" && len(fc.Bundles.Bundles) > 0:
		errs = append(errs, errors.New("policy.dir: set policy.dir or bundles, not both"))
	case fc.Policy.Dir == "":
		if fc.Policy.Name != "" {
			errs = append(errs, errors.New("policy.name: only applies to policy.dir (bundles are named in bundles[].name)"))
		}
	default:
		c.policyDir = c.resolve(fc.Policy.Dir)
		if st, err := os.Stat(c.policyDir); err != nil {
			add("policy.dir", err)
		} else if !st.IsDir() {
			errs = append(errs, fmt.Errorf("policy.dir: %s is not a directory", c.policyDir))
		}
	}
	c.policyName = fc.Policy.Name
	if c.policyName == "" {
		c.policyName = filepath.Base(c.policyDir)
	}
	c.policyTimeout = duration(fc.Policy.Timeout, time.Second, "policy.timeout", add)

	routes, err := route.New(fc.Routes, route.Options{BaseDir: c.baseDir})
	if err != nil {
		errs = append(errs, err)
	}
	c.routes = routes
	if err := c.validateXDS(); err != nil {
		errs = append(errs, err)
	}

	c.authnCfg = fc.Authn
	if fc.DecisionLog.Path != "" {
		fc.DecisionLog.Path = c.resolve(fc.DecisionLog.Path)
	}
	c.logCfg = fc.DecisionLog
	add("decision_log", c.logCfg.Validate())
	add("decision_cache", fc.DecisionCache.Validate())
	return c, errors.Join(errs...)
}

func (c *config) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.baseDir, p)
}

func checkAddr(addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	return nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

func duration(s string, def time.Duration, key string, add func(string, error)) time.Duration {
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err == nil && d <= 0 {
		err = fmt.Errorf("%q must be positive", s)
	}
	add(key, err)
	return d
}

// policyPaths lists the rule paths every route needs.
func (c *config) policyPaths() []string {
	if c.routes == nil {
		return nil
	}
	return c.routes.Policies()
}
