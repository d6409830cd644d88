package bundles

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/loader/filter"
)

// ReadFile reads a bundle tarball (.tar.gz) from disk. When vc is non-nil the
// bundle must carry a valid signature by its key covering every file. maxSize
// bounds the file and its uncompressed content; zero means DefaultMaxSize.
func ReadFile(file string, maxSize int64, vc *bundle.VerificationConfig) (*bundle.Bundle, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	raw, err := readLimited(file, maxSize)
	if err != nil {
		return nil, fmt.Errorf("bundles: read %s: %w", file, err)
	}
	b, err := readTarball(raw, maxSize, vc, "")
	if err != nil {
		return nil, fmt.Errorf("bundles: read %s: %w", file, err)
	}
	return b, nil
}

// ReadFileUnverified reads a bundle tarball without checking its
// signature, for display: the signature's claims are returned in
// Signatures but prove nothing.
func ReadFileUnverified(file string, maxSize int64) (*bundle.Bundle, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	raw, err := readLimited(file, maxSize)
	if err == nil {
		err = checkGzip(raw, maxSize)
	}
	if err != nil {
		return nil, fmt.Errorf("bundles: read %s: %w", file, err)
	}
	loader := &sortedLoader{inner: bundle.NewTarballLoaderWithBaseURL(bytes.NewReader(raw), "").WithSizeLimitBytes(maxSize)}
	rb, err := bundle.NewCustomReader(loader).
		WithSizeLimitBytes(maxSize).
		WithLazyLoadingMode(false).
		WithSkipBundleVerification(true).
		Read()
	if err != nil {
		return nil, fmt.Errorf("bundles: read %s: %w", file, err)
	}
	// A reader that skips verification drops the signatures file; read it
	// again, for display only.
	if rb.Signatures, err = signaturesFile(raw, maxSize); err != nil {
		return nil, fmt.Errorf("bundles: read %s: %w", file, err)
	}
	return checkSnapshot(&rb)
}

// ReadDir reads a directory in bundle layout, without its *_test.rego files.
// When vc is non-nil the directory must hold a valid .signatures.json.
func ReadDir(dir string, vc *bundle.VerificationConfig) (*bundle.Bundle, error) {
	b, err := readDir(dir, DefaultMaxSize, vc)
	if err != nil {
		return nil, fmt.Errorf("bundles: read %s: %w", dir, err)
	}
	return b, nil
}

func readLimited(file string, maxSize int64) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, err
	}
	if int64(len(raw)) > maxSize {
		return nil, fmt.Errorf("larger than the %d byte limit", maxSize)
	}
	return raw, nil
}

// readTarball reads a gzipped bundle tarball with OPA's bundle reader. The
// archive is checked to decompress completely within maxSize first, so a
// truncated download or a compression bomb fails before parsing, and its
// files are read in path order whatever their order in the archive, so the
// same files always give the same bundle (or the same error).
func readTarball(raw []byte, maxSize int64, vc *bundle.VerificationConfig, etag string) (*bundle.Bundle, error) {
	if err := checkGzip(raw, maxSize); err != nil {
		return nil, err
	}
	loader := &sortedLoader{inner: bundle.NewTarballLoaderWithBaseURL(bytes.NewReader(raw), "").WithSizeLimitBytes(maxSize)}
	r := bundle.NewCustomReader(loader).
		WithSizeLimitBytes(maxSize).
		WithLazyLoadingMode(false).
		WithBundleVerificationConfig(vc).
		WithBundleEtag(etag)
	b, err := r.Read()
	if err != nil {
		return nil, err
	}
	return checkSnapshot(&b)
}

func readDir(dir string, maxSize int64, vc *bundle.VerificationConfig) (*bundle.Bundle, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	loader := bundle.NewDirectoryLoader(dir).WithFilter(skipTests).WithSizeLimitBytes(maxSize)
	b, err := bundle.NewCustomReader(loader).
		WithSizeLimitBytes(maxSize).
		WithLazyLoadingMode(false).
		WithBundleVerificationConfig(vc).
		Read()
	if err != nil {
		return nil, err
	}
	return checkSnapshot(&b)
}

// signaturesFile decodes the .signatures.json of a gzipped tarball, if any.
func signaturesFile(raw []byte, maxSize int64) (bundle.SignaturesConfig, error) {
	var sc bundle.SignaturesConfig
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return sc, err
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return sc, nil
		}
		if err != nil {
			return sc, err
		}
		if h.Typeflag == tar.TypeReg && bundle.IsSignaturesFile(h.Name) {
			if err := json.NewDecoder(io.LimitReader(tr, maxSize)).Decode(&sc); err != nil {
				return sc, fmt.Errorf("%s: %w", h.Name, err)
			}
			return sc, nil
		}
	}
}

// skipTests excludes *_test.rego files: tests are run by `policygate test`,
// not served.
func skipTests(_ string, info fs.FileInfo, _ int) bool {
	return !info.IsDir() && strings.HasSuffix(info.Name(), "_test.rego")
}

var _ filter.LoaderFilter = skipTests

func checkSnapshot(b *bundle.Bundle) (*bundle.Bundle, error) {
	if b.Type() != bundle.SnapshotBundleType {
		return nil, errors.New("delta bundles are not supported")
	}
	if len(b.WasmModules) > 0 || len(b.PlanModules) > 0 {
		return nil, errors.New("wasm and plan bundles are not supported: build with the rego target")
	}
	if b.Data == nil {
		b.Data = map[string]any{}
	}
	return b, nil
}

// checkGzip decompresses raw without keeping it: a stream that is not gzip,
// is truncated, or inflates beyond maxSize is an error.
func checkGzip(raw []byte, maxSize int64) error {
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("not a gzipped tarball: %w", err)
	}
	n, err := io.Copy(io.Discard, io.LimitReader(zr, maxSize+1))
	if err != nil {
		return fmt.Errorf("corrupt or truncated archive: %w", err)
	}
	if n > maxSize {
		return fmt.Errorf("uncompressed bundle larger than the %d byte limit", maxSize)
	}
	return nil
}

// sortedLoader hands OPA's reader the files of a tarball in path order and
// rejects an archive that holds the same path twice, which OPA would
// otherwise resolve by archive order.
type sortedLoader struct {
	inner bundle.DirectoryLoader
	files []*bundle.Descriptor
	idx   int
	ready bool
}

var _ bundle.DirectoryLoader = (*sortedLoader)(nil)

func (l *sortedLoader) NextFile() (*bundle.Descriptor, error) {
	if !l.ready {
		l.ready = true
		for {
			d, err := l.inner.NextFile()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				l.closeAll()
				return nil, err
			}
			l.files = append(l.files, d)
		}
		slices.SortStableFunc(l.files, func(a, b *bundle.Descriptor) int { return strings.Compare(cleanPath(a.Path()), cleanPath(b.Path())) })
		for i := 1; i < len(l.files); i++ {
			if p := cleanPath(l.files[i].Path()); p == cleanPath(l.files[i-1].Path()) {
				l.closeAll()
				return nil, fmt.Errorf("archive holds %s more than once", p)
			}
		}
	}
	if l.idx >= len(l.files) {
		return nil, io.EOF
	}
	d := l.files[l.idx]
	l.idx++
	return d, nil
}

func (l *sortedLoader) closeAll() {
	for _, d := range l.files {
		_ = d.Close()
	}
	l.files = nil
}

func cleanPath(p string) string { return path.Clean("/" + strings.ReplaceAll(p, "\\", "/")) }

func (l *sortedLoader) WithFilter(f filter.LoaderFilter) bundle.DirectoryLoader {
	l.inner = l.inner.WithFilter(f)
	return l
}

func (l *sortedLoader) WithPathFormat(p bundle.PathFormat) bundle.DirectoryLoader {
	l.inner = l.inner.WithPathFormat(p)
	return l
}

func (l *sortedLoader) WithSizeLimitBytes(n int64) bundle.DirectoryLoader {
	l.inner = l.inner.WithSizeLimitBytes(n)
	return l
}

func (l *sortedLoader) WithFollowSymlinks(yes bool) bundle.DirectoryLoader {
	l.inner = l.inner.WithFollowSymlinks(yes)
	return l
}

// Digest identifies a bundle's content: its modules (by path), data and
// manifest. Equal content read from a directory, a file or a download has
// the same digest.
func Digest(b *bundle.Bundle) (string, error) {
	h := sha256.New()
	mods := slices.Clone(b.Modules)
	slices.SortFunc(mods, func(x, y bundle.ModuleFile) int { return strings.Compare(x.Path, y.Path) })
	for _, m := range mods {
		fmt.Fprintf(h, "m\x00%s\x00%d\x00", cleanPath(m.Path), len(m.Raw))
		h.Write(m.Raw)
	}
	data, err := json.Marshal(b.Data) // encoding/json sorts map keys
	if err != nil {
		return "", fmt.Errorf("digest data: %w", err)
	}
	fmt.Fprintf(h, "d\x00%d\x00", len(data))
	h.Write(data)
	manifest, err := json.Marshal(b.Manifest)
	if err != nil {
		return "", fmt.Errorf("digest manifest: %w", err)
	}
	fmt.Fprintf(h, "f\x00%d\x00", len(manifest))
	h.Write(manifest)
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
