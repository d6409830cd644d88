package authn

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"go.yaml.in/yaml/v3"
)

// Defaults and bounds applied by New.
const (
	// DefaultLeeway is the clock skew tolerated on exp, nbf and iat.
	DefaultLeeway = 30 * time.Second
	// MaxLeeway bounds jwt.leeway: a larger value would quietly turn
	// expired tokens back into valid ones.
	MaxLeeway = 5 * time.Minute
	// DefaultRefreshInterval is how often Run refetches a JWKS URL.
	DefaultRefreshInterval = 10 * time.Minute
	// MinRefetchInterval is the floor between two JWKS fetches. An unknown
	// kid triggers at most one fetch per interval, so a stream of forged
	// tokens cannot turn into a fetch storm against the identity provider.
	MinRefetchInterval = 30 * time.Second
	// DefaultTokenCacheSize and DefaultTokenCacheTTL bound the cache of
	// verified tokens when jwt.cache_size and jwt.cache_ttl are empty;
	// MaxTokenCacheTTL bounds jwt.cache_ttl.
	DefaultTokenCacheSize = 10000
	DefaultTokenCacheTTL  = 5 * time.Minute
	MaxTokenCacheTTL      = time.Hour
	// DefaultSubjectClaim and DefaultGroupsClaim name the claims read when
	// the config leaves them empty.
	DefaultSubjectClaim = "sub"
	DefaultGroupsClaim  = "groups"
)

// defaultAlgorithms are the JWS algorithms accepted when jwt.algorithms is
// empty.
var defaultAlgorithms = []string{"RS256", "ES256", "EdDSA"}

// supportedAlgorithms are the asymmetric JWS algorithms a key set can
// verify. Symmetric (HS*) algorithms and "none" are deliberately absent: a
// gateway that holds only public keys must never accept a MAC keyed with
// public material.
var supportedAlgorithms = map[string]jose.SignatureAlgorithm{
	"RS256": jose.RS256, "RS384": jose.RS384, "RS512": jose.RS512,
	"PS256": jose.PS256, "PS384": jose.PS384, "PS512": jose.PS512,
	"ES256": jose.ES256, "ES384": jose.ES384, "ES512": jose.ES512,
	"EdDSA": jose.EdDSA,
}

// Config is the authn section of the gateway's file config. The zero value
// is valid: callers without a credential are anonymous and every presented
// credential is rejected.
type Config struct {
	// APIKeyHeader names a request header that carries an API key secret,
	// e.g. "X-Api-Key". Default "": API keys are accepted only through
	// Authorization (Bearer or Basic).
	APIKeyHeader string `yaml:"api_key_header"`
	// APIKeys are the accepted API keys. Default none.
	APIKeys []APIKey `yaml:"api_keys"`
	// APIKeysFile is a YAML file holding a list of APIKey in the same
	// schema, merged with APIKeys; a relative path is resolved against
	// Options.BaseDir. Default "": no file. The file is read once by New.
	APIKeysFile string `yaml:"api_keys_file"`
	// JWT enables bearer JWT authentication. Default nil: JWTs are not
	// accepted, and a JWT-shaped bearer token is treated as an API key.
	JWT *JWTConfig `yaml:"jwt"`
}

// APIKey is one accepted API key. Only the hash of its secret is stored.
type APIKey struct {
	// ID identifies the key: it becomes identity.key_id and is the only
	// username accepted with this key's secret in Basic authentication.
	// Required, unique, without ':' or control characters.
	ID string `yaml:"id"`
	// Subject becomes identity.subject. Default "": the ID.
	Subject string `yaml:"subject"`
	// SHA256 is the hex SHA-256 of the secret (see HashKey), never the
	// secret itself. Required, unique.
	SHA256 string `yaml:"sha256"`
	// Groups become identity.groups. Default none (an empty list).
	Groups []string `yaml:"groups"`
}

// JWTConfig configures bearer JWT verification.
type JWTConfig struct {
	// JWKSFile is a JSON Web Key Set file holding the public verification
	// keys; a relative path is resolved against Options.BaseDir. Read once
	// by New. Exactly one of JWKSFile and JWKSURL is required.
	JWKSFile string `yaml:"jwks_file"`
	// JWKSURL is fetched on first use and then refreshed by Run. It must be
	// https, or http to a loopback host. Exactly one of JWKSFile and JWKSURL
	// is required.
	JWKSURL string `yaml:"jwks_url"`
	// Issuer must equal the token's iss claim. Required.
	Issuer string `yaml:"issuer"`
	// Audiences lists the accepted audiences; the token's aud claim must
	// contain at least one. Required.
	Audiences []string `yaml:"audiences"`
	// Leeway is the clock skew tolerated on exp, nbf and iat, as a Go
	// duration. Default "" means 30s; "0s" means none; at most 5m.
	Leeway string `yaml:"leeway"`
	// RefreshInterval is how often Run refetches JWKSURL, as a Go duration.
	// Default "" means 10m; at least 30s. Only valid with JWKSURL.
	RefreshInterval string `yaml:"refresh_interval"`
	// Algorithms lists the accepted JWS algorithms (RS256, RS384, RS512,
	// PS256, PS384, PS512, ES256, ES384, ES512, EdDSA). Default empty means
	// RS256, ES256 and EdDSA. "none" and HS* are never accepted.
	Algorithms []string `yaml:"algorithms"`
	// SubjectClaim names the claim that becomes identity.subject; it must
	// be a non-empty string in every token. Default "" means "sub".
	SubjectClaim string `yaml:"subject_claim"`
	// GroupsClaim names the claim that becomes identity.groups: an array of
	// strings or one space-separated string; absent means no groups.
	// Default "" means "groups".
	GroupsClaim string `yaml:"groups_claim"`
	// CacheSize bounds how many verified tokens are remembered, so that a
	// caller reusing its token is not verified again on every request (see
	// CacheTTL). Default 0 means 10000; negative is an error.
	CacheSize int `yaml:"cache_size"`
	// CacheTTL is the longest a verified token is reused without verifying
	// it again, as a Go duration; never past the token's exp, and never
	// after the key set changed. Default "" means 5m; "0s" turns the cache
	// off; at most 1h.
	CacheTTL string `yaml:"cache_ttl"`
}

// apiKey is a validated APIKey.
type apiKey struct {
	id      string
	subject string
	hash    [sha256.Size]byte
	groups  []string
}

// jwtSettings is a validated JWTConfig with its durations parsed.
type jwtSettings struct {
	issuer       string
	audiences    []string
	leeway       time.Duration
	refresh      time.Duration
	algorithms   []jose.SignatureAlgorithm
	subjectClaim string
	groupsClaim  string
	jwksFile     string
	jwksURL      *url.URL
	cacheSize    int           // verified tokens remembered
	cacheTTL     time.Duration // 0: no cache
}

// validated is everything New derives from a Config before it builds the
// runtime key sets.
type validated struct {
	header string
	keys   []apiKey
	jwt    *jwtSettings
	static *keySet // from jwt.jwks_file
}

// validate checks cfg, injects defaults and loads the files it names. Every
// problem is reported, each prefixed with its key.
func validate(cfg Config, baseDir string) (*validated, error) {
	var errs []error
	v := &validated{}

	if cfg.APIKeyHeader != "" {
		name := textproto.CanonicalMIMEHeaderKey(cfg.APIKeyHeader)
		switch {
		case !validHeaderName(cfg.APIKeyHeader):
			errs = append(errs, fmt.Errorf("api_key_header: %q is not a valid header name", cfg.APIKeyHeader))
		case name == "Authorization" || name == "Proxy-Authorization":
			errs = append(errs, fmt.Errorf("api_key_header: %q is reserved", cfg.APIKeyHeader))
		default:
			v.header = name
		}
	}

	ids := make(map[string]string)               // id → where it was first seen
	hashes := make(map[[sha256.Size]byte]string) // hash → where it was first seen
	add := func(where string, k APIKey) {
		key, kerrs := validateKey(where, k)
		errs = append(errs, kerrs...)
		if key == nil {
			return
		}
		bad := false
		if first, ok := ids[key.id]; ok {
			errs = append(errs, fmt.Errorf("%s.id: duplicate key id %q (first in %s)", where, key.id, first))
			bad = true
		}
		if first, ok := hashes[key.hash]; ok {
			errs = append(errs, fmt.Errorf("%s.sha256: duplicate hash (first in %s)", where, first))
			bad = true
		}
		if bad {
			return
		}
		ids[key.id] = where
		hashes[key.hash] = where
		v.keys = append(v.keys, *key)
	}
	for i, k := range cfg.APIKeys {
		add(fmt.Sprintf("api_keys[%d]", i), k)
	}
	if cfg.APIKeysFile != "" {
		path := resolve(baseDir, cfg.APIKeysFile)
		fileKeys, err := readKeysFile(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("api_keys_file: %w", err))
		}
		for i, k := range fileKeys {
			add(fmt.Sprintf("api_keys_file[%d]", i), k)
		}
	}

	if cfg.JWT != nil {
		s, static, jerrs := validateJWT(*cfg.JWT, baseDir)
		errs = append(errs, jerrs...)
		if len(jerrs) == 0 {
			v.jwt = s
			v.static = static
		}
	}

	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return v, nil
}

// validateKey checks one API key; where names it ("api_keys[2]").
func validateKey(where string, k APIKey) (*apiKey, []error) {
	var errs []error
	switch {
	case k.ID == "":
		errs = append(errs, fmt.Errorf("%s.id: required", where))
	case strings.Contains(k.ID, ":"):
		// Basic authentication splits user-id and password at the first
		// colon, so such an ID could never be presented.
		errs = append(errs, fmt.Errorf("%s.id: must not contain ':'", where))
	case hasControl(k.ID):
		errs = append(errs, fmt.Errorf("%s.id: must not contain control characters", where))
	}
	var sum [sha256.Size]byte
	if len(k.SHA256) != hex.EncodedLen(sha256.Size) {
		errs = append(errs, fmt.Errorf("%s.sha256: not %d hex characters", where, hex.EncodedLen(sha256.Size)))
	} else if _, err := hex.Decode(sum[:], []byte(k.SHA256)); err != nil {
		errs = append(errs, fmt.Errorf("%s.sha256: not %d hex characters", where, hex.EncodedLen(sha256.Size)))
	}
	for i, g := range k.Groups {
		if g == "" {
			errs = append(errs, fmt.Errorf("%s.groups[%d]: empty group name", where, i))
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	subject := k.Subject
	if subject == "" {
		subject = k.ID
	}
	groups := make([]string, len(k.Groups))
	copy(groups, k.Groups)
	return &apiKey{id: k.ID, subject: subject, hash: sum, groups: groups}, nil
}

// readKeysFile strictly decodes a YAML list of APIKey. An empty file is an
// empty list, so every key can be revoked without deleting the setting.
func readKeysFile(path string) ([]APIKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var keys []APIKey
	if err := dec.Decode(&keys); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// validateJWT checks the jwt section.
func validateJWT(c JWTConfig, baseDir string) (*jwtSettings, *keySet, []error) {
	var errs []error
	s := &jwtSettings{
		issuer:       c.Issuer,
		leeway:       DefaultLeeway,
		refresh:      DefaultRefreshInterval,
		subjectClaim: c.SubjectClaim,
		groupsClaim:  c.GroupsClaim,
		cacheSize:    DefaultTokenCacheSize,
		cacheTTL:     DefaultTokenCacheTTL,
	}
	switch {
	case c.CacheSize < 0:
		errs = append(errs, fmt.Errorf("jwt.cache_size: %d is negative", c.CacheSize))
	case c.CacheSize > 0:
		s.cacheSize = c.CacheSize
	}
	if c.CacheTTL != "" {
		d, err := time.ParseDuration(c.CacheTTL)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("jwt.cache_ttl: %w", err))
		case d < 0:
			errs = append(errs, fmt.Errorf("jwt.cache_ttl: %s is negative", c.CacheTTL))
		case d > MaxTokenCacheTTL:
			errs = append(errs, fmt.Errorf("jwt.cache_ttl: %s exceeds the maximum of %s", c.CacheTTL, MaxTokenCacheTTL))
		default:
			s.cacheTTL = d
		}
	}
	if s.subjectClaim == "" {
		s.subjectClaim = DefaultSubjectClaim
	}
	if s.groupsClaim == "" {
		s.groupsClaim = DefaultGroupsClaim
	}

	if c.Issuer == "" {
		errs = append(errs, errors.New("jwt.issuer: required"))
	}
	if len(c.Audiences) == 0 {
		errs = append(errs, errors.New("jwt.audiences: required"))
	}
	for i, aud := range c.Audiences {
		if aud == "" {
			errs = append(errs, fmt.Errorf("jwt.audiences[%d]: empty", i))
		}
	}
	s.audiences = append([]string(nil), c.Audiences...)

	if c.Leeway != "" {
		d, err := time.ParseDuration(c.Leeway)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("jwt.leeway: %w", err))
		case d < 0:
			errs = append(errs, fmt.Errorf("jwt.leeway: %s is negative", c.Leeway))
		case d > MaxLeeway:
			errs = append(errs, fmt.Errorf("jwt.leeway: %s exceeds the maximum of %s", c.Leeway, MaxLeeway))
		default:
			s.leeway = d
		}
	}

	algs := c.Algorithms
	if len(algs) == 0 {
		algs = defaultAlgorithms
	}
	seen := make(map[jose.SignatureAlgorithm]bool)
	for i, name := range algs {
		alg, ok := supportedAlgorithms[name]
		switch {
		case ok && !seen[alg]:
			seen[alg] = true
			s.algorithms = append(s.algorithms, alg)
		case ok:
		case strings.EqualFold(name, "none"), strings.HasPrefix(strings.ToUpper(name), "HS"):
			errs = append(errs, fmt.Errorf("jwt.algorithms[%d]: %q is not allowed: only asymmetric signatures are accepted", i, name))
		default:
			errs = append(errs, fmt.Errorf("jwt.algorithms[%d]: unsupported algorithm %q", i, name))
		}
	}

	var static *keySet
	switch {
	case c.JWKSFile != "" && c.JWKSURL != "":
		errs = append(errs, errors.New("jwt: jwks_file and jwks_url are mutually exclusive"))
	case c.JWKSFile == "" && c.JWKSURL == "":
		errs = append(errs, errors.New("jwt: one of jwks_file or jwks_url is required"))
	case c.JWKSURL != "":
		u, err := parseJWKSURL(c.JWKSURL)
		if err != nil {
			errs = append(errs, fmt.Errorf("jwt.jwks_url: %w", err))
		}
		s.jwksURL = u
		if c.RefreshInterval != "" {
			d, err := time.ParseDuration(c.RefreshInterval)
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("jwt.refresh_interval: %w", err))
			case d < MinRefetchInterval:
				errs = append(errs, fmt.Errorf("jwt.refresh_interval: %s is below the minimum of %s", c.RefreshInterval, MinRefetchInterval))
			default:
				s.refresh = d
			}
		}
	default:
		if c.RefreshInterval != "" {
			errs = append(errs, errors.New("jwt.refresh_interval: only valid with jwks_url"))
		}
		s.jwksFile = resolve(baseDir, c.JWKSFile)
		data, err := os.ReadFile(s.jwksFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("jwt.jwks_file: %w", err))
			break
		}
		if len(errs) > 0 {
			// Without valid algorithms the key set cannot be judged.
			break
		}
		ks, skipped, err := parseJWKS(data, s.algorithms)
		if len(skipped) > 0 {
			// A key file is written by the operator: any key that cannot be
			// used is a mistake worth reporting, not skipping.
			err = errors.Join(append(skipped, err)...)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("jwt.jwks_file: %s: %w", s.jwksFile, err))
			break
		}
		static = ks
	}
	return s, static, errs
}

// parseJWKSURL accepts https anywhere and plain http only to a loopback
// host: key material fetched over an untrusted network without TLS would let
// anyone on the path mint identities.
func parseJWKSURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%q has no host", raw)
	}
	switch u.Scheme {
	case "https":
		return u, nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
			return u, nil
		}
		return nil, fmt.Errorf("%s: http is only allowed to a loopback host; use https", u.Redacted())
	default:
		return nil, fmt.Errorf("%s: unsupported scheme %q", u.Redacted(), u.Scheme)
	}
}

func resolve(baseDir, path string) string {
	if filepath.IsAbs(path) || baseDir == "" {
		return path
	}
	return filepath.Join(baseDir, path)
}

// validHeaderName reports whether s is an RFC 9110 token.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}
