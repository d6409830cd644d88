package bundles

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// store keeps the last good tarball of each remote bundle:
// <dir>/<name>.tar.gz, exactly as downloaded (so its signature can be
// verified again on load), and <dir>/<name>.json with what the download
// was. Each file is replaced atomically; the tarball is written first, so
// a crash between the two leaves at worst an ETag that no longer matches,
// which costs one full download.
type store struct {
	dir string
}

// persisted describes a persisted tarball.
type persisted struct {
	URL          string    `json:"url"`
	ETag         string    `json:"etag,omitempty"`
	Revision     string    `json:"revision,omitempty"`
	Digest       string    `json:"digest,omitempty"`
	DownloadedAt time.Time `json:"downloaded_at"`
}

func (s *store) paths(name string) (tarball, meta string) {
	return filepath.Join(s.dir, name+".tar.gz"), filepath.Join(s.dir, name+".json")
}

func (s *store) save(name string, raw []byte, meta persisted) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("bundles: persist %s: %w", name, err)
	}
	mj, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("bundles: persist %s: %w", name, err)
	}
	tp, mp := s.paths(name)
	if err := WriteFileAtomic(tp, raw, 0o600); err != nil {
		return err
	}
	return WriteFileAtomic(mp, mj, 0o600)
}

// load returns the persisted tarball of name; an error wrapping
// os.ErrNotExist when there is none.
func (s *store) load(name string) ([]byte, persisted, error) {
	var meta persisted
	tp, mp := s.paths(name)
	mj, err := os.ReadFile(mp)
	if err != nil {
		return nil, meta, err
	}
	if err := json.Unmarshal(mj, &meta); err != nil {
		return nil, meta, fmt.Errorf("%s: %w", mp, err)
	}
	raw, err := os.ReadFile(tp)
	if err != nil {
		return nil, meta, err
	}
	return raw, meta, nil
}

func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
