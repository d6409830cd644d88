package bundles

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/bundle"
)

// BuildOptions control Build.
type BuildOptions struct {
	// Revision replaces the manifest's revision. Empty keeps it.
	Revision string
	// SigningKey is a PEM private key file (or an HMAC secret file for
	// HS*). Empty builds an unsigned bundle.
	SigningKey string
	// SigningAlg is the JWS algorithm. Empty means "RS256".
	SigningAlg string
	// KeyID names the signing key in the signature. Empty means "default",
	// as `opa build` does.
	KeyID string
	// ClaimsFile is a JSON file of extra signature claims (e.g. "scope").
	// Optional.
	ClaimsFile string
}

// Build reads dir (bundle layout, *_test.rego excluded) into a bundle the
// way `opa build -b` does, sets the revision and signs it when a signing key
// is given. Module paths are relative to dir, so where dir sits does not
// leak into the bundle. The bundle is not compiled here: compile it before
// shipping.
func Build(dir string, opts BuildOptions) (*bundle.Bundle, error) {
	st, err := os.Stat(dir)
	if err == nil && !st.IsDir() {
		err = errors.New("not a directory")
	}
	if err != nil {
		return nil, fmt.Errorf("bundles: build %s: %w", dir, err)
	}
	// A signature left in the directory by an earlier build is replaced,
	// not verified.
	rb, err := bundle.NewCustomReader(bundle.NewDirectoryLoader(dir).WithFilter(skipTests)).
		WithLazyLoadingMode(false).
		WithSkipBundleVerification(true).
		Read()
	if err != nil {
		return nil, fmt.Errorf("bundles: build %s: %w", dir, err)
	}
	b, err := checkSnapshot(&rb)
	if err != nil {
		return nil, fmt.Errorf("bundles: build %s: %w", dir, err)
	}
	b.Signatures = bundle.SignaturesConfig{}
	for i := range b.Modules {
		b.Modules[i].URL = b.Modules[i].Path
	}
	if opts.Revision != "" {
		b.Manifest.Revision = opts.Revision
	}
	if opts.SigningKey != "" {
		if err := Sign(b, opts); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// Sign signs b with opts' key, replacing any signature it had.
func Sign(b *bundle.Bundle, opts BuildOptions) error {
	if opts.SigningKey == "" {
		return errors.New("bundles: sign: no signing key")
	}
	if _, err := os.Stat(opts.SigningKey); err != nil {
		// OPA would take a missing path as the key itself.
		return fmt.Errorf("bundles: sign: signing key: %w", err)
	}
	alg := opts.SigningAlg
	if alg == "" {
		alg = DefaultAlg
	}
	keyID := opts.KeyID
	if keyID == "" {
		keyID = DefaultKeyID
	}
	sc := bundle.NewSigningConfig(opts.SigningKey, alg, opts.ClaimsFile)
	b.Signatures = bundle.SignaturesConfig{}
	if err := b.GenerateSignature(sc, keyID, false); err != nil {
		return fmt.Errorf("bundles: sign: %w", err)
	}
	return nil
}

// Write writes b as a gzipped tarball in OPA's bundle format.
func Write(w io.Writer, b *bundle.Bundle) error {
	if err := bundle.NewWriter(w).Write(*b); err != nil {
		return fmt.Errorf("bundles: write: %w", err)
	}
	return nil
}

// Encode returns b as a gzipped tarball.
func Encode(b *bundle.Bundle) ([]byte, error) {
	var buf bytes.Buffer
	if err := Write(&buf, b); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteFileAtomic writes data to path so that readers see either the old
// file or the new one, never a part: a temporary file in the same directory
// is written, synced, and renamed over path; then the directory is synced so
// the rename survives a crash.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("bundles: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, perm)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("bundles: write %s: %w", path, err)
	}
	if d, derr := os.Open(dir); derr == nil {
		derr = d.Sync()
		_ = d.Close()
		if derr != nil {
			return fmt.Errorf("bundles: sync %s: %w", dir, derr)
		}
	}
	return nil
}

// Info describes a bundle for `policygate bundle inspect`.
type Info struct {
	Revision  string         `json:"revision,omitempty"`
	Roots     []string       `json:"roots"`
	Metadata  map[string]any `json:"metadata,omitempty"`
	Digest    string         `json:"digest"`
	Modules   []string       `json:"modules"`
	Packages  []string       `json:"packages"`
	DataKeys  []string       `json:"data_keys"`
	Signed    bool           `json:"signed"`
	Signature *SignatureInfo `json:"signature,omitempty"`
	// Verified is true when the signature was checked against a key.
	Verified bool `json:"verified"`
}

// SignatureInfo is the unverified content of a bundle signature: what it
// claims, for display only.
type SignatureInfo struct {
	Algorithm string   `json:"algorithm,omitempty"`
	KeyID     string   `json:"key_id,omitempty"`
	Scope     string   `json:"scope,omitempty"`
	Files     []string `json:"files"`
}

// Inspect describes b. verified says whether b was read with a
// verification key.
func Inspect(b *bundle.Bundle, verified bool) (*Info, error) {
	digest, err := Digest(b)
	if err != nil {
		return nil, err
	}
	in := &Info{Revision: b.Manifest.Revision, Metadata: b.Manifest.Metadata, Digest: digest, Verified: verified, Modules: []string{}, Packages: []string{}, DataKeys: []string{}}
	if b.Manifest.Roots != nil {
		in.Roots = slices.Clone(*b.Manifest.Roots)
	}
	pkgs := map[string]bool{}
	for _, m := range b.Modules {
		in.Modules = append(in.Modules, cleanPath(m.Path))
		if m.Parsed != nil {
			pkgs[m.Parsed.Package.Path.String()] = true
		}
	}
	for p := range pkgs {
		in.Packages = append(in.Packages, p)
	}
	for k := range b.Data {
		in.DataKeys = append(in.DataKeys, k)
	}
	slices.Sort(in.Modules)
	slices.Sort(in.Packages)
	slices.Sort(in.DataKeys)
	if len(b.Signatures.Signatures) > 0 {
		in.Signed = true
		in.Signature = decodeSignature(b.Signatures.Signatures[0])
	}
	return in, nil
}

// decodeSignature reads a signature's header and claims without verifying
// them.
func decodeSignature(token string) *SignatureInfo {
	si := &SignatureInfo{Files: []string{}}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return si
	}
	var hdr struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if raw, err := base64.RawURLEncoding.DecodeString(parts[0]); err == nil {
		_ = json.Unmarshal(raw, &hdr)
	}
	var claims struct {
		Files []struct {
			Name string `json:"name"`
		} `json:"files"`
		Scope string `json:"scope"`
		KeyID string `json:"keyid"`
	}
	if raw, err := base64.RawURLEncoding.DecodeString(parts[1]); err == nil {
		_ = json.Unmarshal(raw, &claims)
	}
	si.Algorithm, si.KeyID, si.Scope = hdr.Alg, hdr.Kid, claims.Scope
	if si.KeyID == "" {
		si.KeyID = claims.KeyID
	}
	for _, f := range claims.Files {
		si.Files = append(si.Files, f.Name)
	}
	slices.Sort(si.Files)
	return si
}
