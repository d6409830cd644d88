package bundles

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/open-policy-agent/opa/v1/bundle"
)

// maxLocalRetry caps the delay before a failed reload of a file or
// directory is tried again without a new change.
const maxLocalRetry = 30 * time.Second

// localSource watches a bundle directory or tarball. Its state is owned by
// its goroutine.
type localSource struct {
	s *spec
	m *Manager
	// digest of the content currently served (or waiting for the first
	// activation); a change event with the same content is ignored.
	digest string
}

// run loads the bundle, then reloads it each time the watched path has been
// quiet for the debounce period after a change. Without a working file
// watcher it rescans periodically instead.
func (l *localSource) run(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		l.m.log.Warn("file watcher unavailable; rescanning periodically", "bundle", l.s.name, "err", err)
		w = nil
	} else {
		defer w.Close()
	}
	var events chan fsnotify.Event
	var errs chan error
	if w != nil {
		events, errs = w.Events, w.Errors
		l.watch(w)
	}

	// fire is the pending reload: after the debounce period, or a retry.
	fire := time.NewTimer(0)
	defer fire.Stop()
	var first time.Time // first change of the current burst
	retry := 0
	var rescan <-chan time.Time
	if w == nil {
		t := time.NewTicker(max(l.s.debounce, time.Second))
		defer t.Stop()
		rescan = t.C
	}
	schedule := func(d time.Duration) {
		if !fire.Stop() {
			select {
			case <-fire.C:
			default:
			}
		}
		fire.Reset(d)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if !l.relevant(ev) {
				continue
			}
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			// A path that never stays quiet is still reloaded, at most
			// ten debounce periods after its first change.
			if now.Sub(first) < 10*l.s.debounce {
				schedule(l.s.debounce)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// Typically an overflow: events were lost, so look again.
			l.m.log.Warn("file watcher error; reloading", "bundle", l.s.name, "err", err)
			schedule(l.s.debounce)
		case <-rescan:
			schedule(0)
		case <-fire.C:
			first = time.Time{}
			if w != nil {
				l.watch(w) // directories created since are watched too
			}
			if err := l.reload(ctx); err != nil && ctx.Err() == nil {
				schedule(min(l.s.debounce<<min(retry, 16), maxLocalRetry))
				retry++
			} else {
				retry = 0
			}
		}
	}
}

// watch adds the directory tree (Dir) or the file's directory (File) to w.
// Adding a watched path again is a no-op.
func (l *localSource) watch(w *fsnotify.Watcher) {
	if l.s.kind == kindFile {
		if err := w.Add(filepath.Dir(l.s.path)); err != nil {
			l.m.log.Warn("cannot watch bundle file's directory", "bundle", l.s.name, "err", err)
		}
		return
	}
	_ = filepath.WalkDir(l.s.path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if err := w.Add(p); err != nil {
			l.m.log.Warn("cannot watch bundle directory", "bundle", l.s.name, "dir", p, "err", err)
		}
		return nil
	})
}

// relevant reports whether ev may change the bundle. For a tarball, its
// directory is watched so that replacing the file by rename is seen;
// Kubernetes-style "..data" symlink swaps count too.
func (l *localSource) relevant(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	if l.s.kind == kindDir {
		return true
	}
	return filepath.Clean(ev.Name) == l.s.path || strings.HasPrefix(filepath.Base(ev.Name), "..")
}

// reload reads the bundle and offers it when its content changed.
func (l *localSource) reload(ctx context.Context) error {
	b, err := l.read()
	var digest string
	if err == nil {
		digest, err = Digest(b)
	}
	if err != nil {
		l.m.fail(l.s.name, stageRead, err)
		return err
	}
	if digest == l.digest {
		return nil
	}
	at := l.m.now()
	l.m.downloaded(l.s.name, at)
	if err := l.m.offer(ctx, l.s.name, &candidate{b: b, digest: digest, downloadedAt: at}); err != nil {
		return err
	}
	l.digest = digest
	return nil
}

func (l *localSource) read() (*bundle.Bundle, error) {
	if l.s.kind == kindDir {
		return readDir(l.s.path, l.s.maxSize, l.s.verify.config())
	}
	raw, err := readLimited(l.s.path, l.s.maxSize)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errors.New("bundle file is missing")
		}
		return nil, err
	}
	return readTarball(raw, l.s.maxSize, l.s.verify.config(), "")
}
