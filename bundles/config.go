package bundles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"
)

// Config lists the bundle sources and where the last good bundle of each
// remote source is kept. In the policygate configuration file both keys sit
// at the top level.
type Config struct {
	// Bundles are the sources, served together. Their roots must not
	// overlap. Empty: no bundles.
	Bundles []SourceConfig `yaml:"bundles"`
	// PersistenceDir keeps the last good bundle of each HTTP source, so that
	// a restart while the bundle server is down serves it. Empty disables
	// persistence.
	PersistenceDir string `yaml:"persistence_dir"`
}

// SourceConfig is one bundle: exactly one of URL, File and Dir.
type SourceConfig struct {
	// Name labels the bundle in decision logs, status and metrics, and names
	// its persisted copy. Required; unique; letters, digits, '.', '_', '-'.
	Name string `yaml:"name"`
	// URL is a bundle on an HTTP(S) server speaking OPA's bundle protocol.
	URL string `yaml:"url"`
	// File is a bundle tarball (.tar.gz) on disk, reloaded when it changes.
	File string `yaml:"file"`
	// Dir is a directory in bundle layout, reloaded when it changes.
	// *_test.rego files are not served.
	Dir string `yaml:"dir"`
	// Polling sets the delay between downloads (URL only).
	Polling PollingConfig `yaml:"polling"`
	// LongPollingTimeout enables long polling (URL only): once the server
	// answers with Content-Type application/vnd.openpolicyagent.bundles, each
	// request asks it to hold the answer up to this long ("Prefer: wait=N",
	// whole seconds). Empty disables long polling.
	LongPollingTimeout string `yaml:"long_polling_timeout"`
	// Timeout bounds one download, headers and body (URL only). Empty means
	// "30s". Long polls get the long-polling timeout on top.
	Timeout string `yaml:"timeout"`
	// Debounce is how long a file or directory must stay quiet after a change
	// before it is reloaded (File and Dir only). Empty means "250ms".
	Debounce string `yaml:"debounce"`
	// Credentials authenticate to the bundle server (URL only).
	Credentials CredentialsConfig `yaml:"credentials"`
	// MaxSize bounds a download and the bundle's uncompressed size:
	// bytes, or with a unit (KiB, MiB, GiB, KB, MB, GB). Empty means "64MiB".
	MaxSize string `yaml:"max_size"`
	// Signing requires every revision of this bundle to be signed by the
	// configured key. Nil: signatures are not required (a signed bundle is
	// still rejected, as OPA does, because it cannot be verified).
	Signing *SigningConfig `yaml:"signing"`
}

// PollingConfig is the delay between two downloads: uniformly random in
// [MinDelay, MaxDelay], so that replicas do not poll in step.
type PollingConfig struct {
	// MinDelay is a Go duration. Empty means "60s".
	MinDelay string `yaml:"min_delay"`
	// MaxDelay is a Go duration, at least MinDelay. Empty means "120s", or
	// MinDelay when that is larger. It also caps the retry backoff.
	MaxDelay string `yaml:"max_delay"`
}

// CredentialsConfig authenticates policygate to a bundle server.
type CredentialsConfig struct {
	// BearerTokenFile holds a token sent as "Authorization: Bearer". It is
	// re-read for every download, so it can rotate. Requires an https URL
	// (or a loopback host).
	BearerTokenFile string `yaml:"bearer_token_file"`
	// ClientCertFile and ClientKeyFile are a PEM client certificate and key
	// for mTLS, re-read on every TLS handshake. Both or neither.
	ClientCertFile string `yaml:"client_cert_file"`
	ClientKeyFile  string `yaml:"client_key_file"`
	// CAFile holds PEM CA certificates that verify the server instead of the
	// system roots.
	CAFile string `yaml:"ca_file"`
}

// SigningConfig is the public key every revision of a bundle must be signed
// with (OPA's bundle signature format, .signatures.json).
type SigningConfig struct {
	// PublicKeyFile is a PEM public key (or, for HS256/384/512, the shared
	// secret). Required.
	PublicKeyFile string `yaml:"public_key_file"`
	// KeyID names the key. Empty means "default", as `opa build` signs.
	// The configured key verifies every signature whatever key id it names.
	KeyID string `yaml:"key_id"`
	// Algorithm is the JWS algorithm. Empty means "RS256".
	Algorithm string `yaml:"algorithm"`
	// Scope, when set, must equal the signature's scope claim.
	Scope string `yaml:"scope"`
	// ExcludeFiles are glob patterns of bundle files not covered by the
	// signature. Empty: every file must be signed.
	ExcludeFiles []string `yaml:"exclude_files"`
}

// Defaults.
const (
	DefaultMinDelay = 60 * time.Second
	DefaultMaxDelay = 120 * time.Second
	DefaultTimeout  = 30 * time.Second
	DefaultDebounce = 250 * time.Millisecond
	DefaultMaxSize  = 64 << 20
	DefaultKeyID    = "default"
	DefaultAlg      = "RS256"
)

type sourceKind int

const (
	kindHTTP sourceKind = iota
	kindFile
	kindDir
)

func (k sourceKind) String() string {
	switch k {
	case kindHTTP:
		return "url"
	case kindFile:
		return "file"
	default:
		return "dir"
	}
}

// spec is one validated source in runtime types.
type spec struct {
	name     string
	kind     sourceKind
	url      *url.URL
	path     string // file or dir, absolute
	location string // what status shows: the URL or the path
	minDelay time.Duration
	maxDelay time.Duration
	longPoll time.Duration
	timeout  time.Duration
	debounce time.Duration
	maxSize  int64
	token    string // bearer token file
	tls      *tls.Config
	verify   *verification
}

// verification builds a fresh OPA VerificationConfig for each read.
type verification struct {
	key     string
	keyID   string
	alg     string
	scope   string
	exclude []string
}

func (v *verification) config() *bundle.VerificationConfig {
	if v == nil {
		return nil
	}
	keys := map[string]*bundle.KeyConfig{v.keyID: {Key: v.key, Algorithm: v.alg, Scope: v.scope}}
	return bundle.NewVerificationConfig(keys, v.keyID, v.scope, append([]string(nil), v.exclude...))
}

// Verification returns OPA's verification configuration for s, reading the
// key file (relative paths are resolved against baseDir).
func (s *SigningConfig) Verification(baseDir string) (*bundle.VerificationConfig, error) {
	v, err := s.parse(baseDir)
	if err != nil {
		return nil, err
	}
	return v.config(), nil
}

var algorithms = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true,
	"HS256": true, "HS384": true, "HS512": true,
}

func (s *SigningConfig) parse(baseDir string) (*verification, error) {
	v := &verification{keyID: s.KeyID, alg: s.Algorithm, scope: s.Scope, exclude: s.ExcludeFiles}
	if v.keyID == "" {
		v.keyID = DefaultKeyID
	}
	if v.alg == "" {
		v.alg = DefaultAlg
	}
	var errs []error
	if !algorithms[v.alg] {
		errs = append(errs, fmt.Errorf("algorithm: %q is not a supported JWS algorithm", v.alg))
	}
	for i, p := range s.ExcludeFiles {
		if _, err := filepath.Match(p, ""); err != nil {
			errs = append(errs, fmt.Errorf("exclude_files[%d]: %w", i, err))
		}
	}
	if s.PublicKeyFile == "" {
		errs = append(errs, errors.New("public_key_file: required"))
	} else {
		raw, err := os.ReadFile(resolve(baseDir, s.PublicKeyFile))
		if err != nil {
			errs = append(errs, fmt.Errorf("public_key_file: %w", err))
		}
		v.key = string(raw)
		if err == nil && !strings.HasPrefix(v.alg, "HS") && !strings.Contains(v.key, "-----BEGIN") {
			errs = append(errs, errors.New("public_key_file: not a PEM key"))
		}
	}
	return v, errors.Join(errs...)
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// parse validates c and turns it into runtime specs. Every error names its
// key ("bundles[1].url: ...").
func (c Config) parse(baseDir string) ([]*spec, error) {
	var errs []error
	seen := map[string]bool{}
	specs := make([]*spec, 0, len(c.Bundles))
	for i, sc := range c.Bundles {
		key := fmt.Sprintf("bundles[%d]", i)
		s, err := sc.parse(baseDir)
		if err != nil {
			var joined interface{ Unwrap() []error }
			if errors.As(err, &joined) {
				for _, e := range joined.Unwrap() {
					errs = append(errs, fmt.Errorf("%s.%w", key, e))
				}
			} else {
				errs = append(errs, fmt.Errorf("%s.%w", key, err))
			}
		}
		if sc.Name != "" && seen[sc.Name] {
			errs = append(errs, fmt.Errorf("%s.name: %q is used twice", key, sc.Name))
		}
		seen[sc.Name] = true
		specs = append(specs, s)
	}
	if c.PersistenceDir != "" {
		dir := resolve(baseDir, c.PersistenceDir)
		if st, err := os.Stat(dir); err == nil && !st.IsDir() {
			errs = append(errs, fmt.Errorf("persistence_dir: %s is not a directory", dir))
		} else if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("persistence_dir: %w", err))
		}
	}
	return specs, errors.Join(errs...)
}

func (sc SourceConfig) parse(baseDir string) (*spec, error) {
	s := &spec{name: sc.Name}
	var errs []error
	add := func(key string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
		}
	}
	if !nameRE.MatchString(sc.Name) {
		if sc.Name == "" {
			add("name", errors.New("required"))
		} else {
			add("name", fmt.Errorf("%q must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", sc.Name))
		}
	}
	n := 0
	for _, v := range []string{sc.URL, sc.File, sc.Dir} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		add("url", errors.New("exactly one of url, file and dir is required"))
	}
	var err error
	s.maxSize, err = parseSize(sc.MaxSize, DefaultMaxSize)
	add("max_size", err)

	switch {
	case sc.URL != "":
		s.kind = kindHTTP
		s.url, err = parseURL(sc.URL)
		add("url", err)
		s.location = sc.URL
		s.minDelay = duration(sc.Polling.MinDelay, DefaultMinDelay, "polling.min_delay", add)
		defMax := DefaultMaxDelay
		if s.minDelay > defMax {
			defMax = s.minDelay
		}
		s.maxDelay = duration(sc.Polling.MaxDelay, defMax, "polling.max_delay", add)
		if s.maxDelay < s.minDelay {
			add("polling.max_delay", fmt.Errorf("%s is less than min_delay %s", s.maxDelay, s.minDelay))
		}
		if sc.LongPollingTimeout != "" {
			s.longPoll = duration(sc.LongPollingTimeout, 0, "long_polling_timeout", add)
			if s.longPoll > 0 && s.longPoll < time.Second {
				add("long_polling_timeout", errors.New("must be at least 1s (Prefer: wait counts whole seconds)"))
			}
		}
		s.timeout = duration(sc.Timeout, DefaultTimeout, "timeout", add)
		if sc.Debounce != "" {
			add("debounce", errors.New("only applies to file and dir sources"))
		}
		s.tls, s.token, err = sc.Credentials.parse(baseDir, s.url)
		if err != nil {
			var joined interface{ Unwrap() []error }
			if errors.As(err, &joined) {
				for _, e := range joined.Unwrap() {
					add("credentials", e)
				}
			} else {
				add("credentials", err)
			}
		}
	default:
		s.kind, s.path = kindDir, resolve(baseDir, sc.Dir)
		if sc.File != "" {
			s.kind, s.path = kindFile, resolve(baseDir, sc.File)
		}
		s.location = s.path
		s.debounce = duration(sc.Debounce, DefaultDebounce, "debounce", add)
		if sc.Polling != (PollingConfig{}) || sc.LongPollingTimeout != "" || sc.Timeout != "" {
			add("polling", errors.New("polling, long_polling_timeout and timeout only apply to url sources"))
		}
		if sc.Credentials != (CredentialsConfig{}) {
			add("credentials", errors.New("only applies to url sources"))
		}
		if n == 1 {
			st, err := os.Stat(s.path)
			switch {
			case err != nil:
				add(s.kind.String(), err)
			case s.kind == kindDir && !st.IsDir():
				add("dir", fmt.Errorf("%s is not a directory", s.path))
			case s.kind == kindFile && st.IsDir():
				add("file", fmt.Errorf("%s is a directory (use dir)", s.path))
			}
		}
	}
	if sc.Signing != nil {
		s.verify, err = sc.Signing.parse(baseDir)
		if err != nil {
			var joined interface{ Unwrap() []error }
			if errors.As(err, &joined) {
				for _, e := range joined.Unwrap() {
					errs = append(errs, fmt.Errorf("signing.%w", e))
				}
			} else {
				errs = append(errs, fmt.Errorf("signing.%w", err))
			}
		}
	}
	return s, errors.Join(errs...)
}

func parseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q: scheme must be http or https", raw)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%q: host required", raw)
	}
	if u.User != nil {
		return nil, errors.New("credentials in the URL are not accepted (they would show in status and logs): use credentials.bearer_token_file")
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("%q: fragment not allowed", raw)
	}
	return u, nil
}

func (c CredentialsConfig) parse(baseDir string, u *url.URL) (*tls.Config, string, error) {
	var errs []error
	var cfg *tls.Config
	if c.CAFile != "" || c.ClientCertFile != "" || c.ClientKeyFile != "" {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		if u != nil && u.Scheme != "https" {
			errs = append(errs, errors.New("ca_file, client_cert_file and client_key_file need an https url"))
		}
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(resolve(baseDir, c.CAFile))
		if err != nil {
			errs = append(errs, fmt.Errorf("ca_file: %w", err))
		} else {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				errs = append(errs, fmt.Errorf("ca_file: no PEM certificate in %s", c.CAFile))
			}
			cfg.RootCAs = pool
		}
	}
	switch {
	case (c.ClientCertFile == "") != (c.ClientKeyFile == ""):
		errs = append(errs, errors.New("client_cert_file: client_cert_file and client_key_file go together"))
	case c.ClientCertFile != "":
		certFile, keyFile := resolve(baseDir, c.ClientCertFile), resolve(baseDir, c.ClientKeyFile)
		if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
			errs = append(errs, fmt.Errorf("client_cert_file: %w", err))
		}
		// Re-read on every handshake, so a rotated certificate is used
		// without a restart.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, fmt.Errorf("bundles: client certificate: %w", err)
			}
			return &cert, nil
		}
	}
	token := ""
	if c.BearerTokenFile != "" {
		token = resolve(baseDir, c.BearerTokenFile)
		if _, err := readToken(token); err != nil {
			errs = append(errs, fmt.Errorf("bearer_token_file: %w", err))
		}
		if u != nil && u.Scheme != "https" && !isLoopback(u.Hostname()) {
			errs = append(errs, errors.New("bearer_token_file: a bearer token is only sent over https (or to a loopback host)"))
		}
	}
	return cfg, token, errors.Join(errs...)
}

func readToken(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(raw))
	if tok == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	if strings.ContainsAny(tok, "\r\n") {
		return "", fmt.Errorf("%s holds more than one line", path)
	}
	return tok, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func resolve(baseDir, p string) string {
	if p == "" || filepath.IsAbs(p) || baseDir == "" {
		return p
	}
	return filepath.Join(baseDir, p)
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

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"B", 1},
}

// parseSize reads "1048576", "64MiB", "10MB".
func parseSize(s string, def int64) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return def, nil
	}
	mult := int64(1)
	num := s
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			mult, num = u.mult, strings.TrimSpace(strings.TrimSuffix(s, u.suffix))
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive size (bytes, or with KiB, MiB, GiB, KB, MB, GB)", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}
