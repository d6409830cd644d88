package log

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// rotatedLayout stamps rotated files: decisions.jsonl becomes
// decisions-20250102T150405.000000000Z.jsonl, so a shell glob lists rotated
// files oldest first and before the live file.
const rotatedLayout = "20060102T150405.000000000Z"

// fileSink appends to a file, rotating it by size and age and keeping a
// bounded number of rotated files.
type fileSink struct {
	path     string
	maxSize  int64
	maxAge   time.Duration
	maxFiles int
	fsync    string
	fsyncInt time.Duration
	log      *slog.Logger
	m        *metrics
	now      func() time.Time

	f        *os.File
	w        *bufio.Writer
	size     int64     // bytes written to the file, buffered ones included
	good     int64     // bytes known to be in the file
	born     time.Time // time of the file's first line; zero while empty
	last     head
	cp       checkpoints
	dirty    bool // written since the last fsync
	syncedAt time.Time
}

func openFileSink(s *settings, sign *signer, clock func() time.Time, log *slog.Logger, m *metrics) (*fileSink, error) {
	now := clock()
	fs := &fileSink{
		path: s.path, maxSize: s.maxSize, maxAge: s.maxAge, maxFiles: s.maxFiles,
		fsync: s.fsync, fsyncInt: s.fsyncInterval, log: log, m: m, now: clock,
		cp: checkpoints{sign: sign}, syncedAt: time.Now(),
	}
	if err := fs.open(now); err != nil {
		return nil, err
	}
	// The chain continues from the newest event on disk: the live file's,
	// or the newest rotated file's when the live one is still empty.
	if fs.last.Seq == 0 {
		rotated, err := fs.rotated()
		if err != nil {
			fs.f.Close()
			return nil, err
		}
		for i := len(rotated) - 1; i >= 0 && fs.last.Seq == 0; i-- {
			h, err := lastEventInFile(rotated[i])
			if err != nil {
				fs.f.Close()
				return nil, err
			}
			fs.last = h
		}
	}
	fs.cp.seq = fs.last.Seq // what is already on disk is not re-checkpointed
	return fs, nil
}

// open opens the live file, repairs a torn last line and reads the file's
// last event and age.
func (fs *fileSink) open(now time.Time) error {
	f, err := os.OpenFile(fs.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("decision log: open %s: %w", fs.path, err)
	}
	size, err := repairTail(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("decision log: open %s: %w", fs.path, err)
	}
	fs.f, fs.size, fs.good = f, size, size
	fs.w = bufio.NewWriterSize(f, 64<<10)
	fs.born = time.Time{}
	if size > 0 {
		fs.born = firstLineTime(f, now)
		h, err := lastEvent(f, size)
		if err != nil {
			f.Close()
			return fmt.Errorf("decision log: open %s: %w", fs.path, err)
		}
		if h.Seq > 0 {
			fs.last = h
		}
	}
	return nil
}

func (fs *fileSink) name() string { return sinkFile }

func (fs *fileSink) head() head { return fs.last }

func (fs *fileSink) write(buf []byte, last head) error {
	if fs.maxSize <= 0 && fs.maxAge <= 0 {
		return fs.append(buf, last)
	}
	// Rotation may fall between two events of a batch.
	for len(buf) > 0 {
		i := bytes.IndexByte(buf, '\n')
		line := buf[:i+1]
		buf = buf[i+1:]
		h, ok := lineHead(line)
		if !ok {
			h = last
		}
		if err := fs.rotateIfDue(len(line)); err != nil {
			return err
		}
		if err := fs.append(line, h); err != nil {
			return err
		}
	}
	return nil
}

// checkpointReserve keeps room for the checkpoint that seals a file.
const checkpointReserve = 512

func (fs *fileSink) rotateIfDue(next int) error {
	if fs.size == 0 {
		return nil
	}
	now := fs.now()
	reserve := int64(0)
	if fs.cp.sign != nil {
		reserve = checkpointReserve
	}
	if (fs.maxSize > 0 && fs.size+int64(next)+reserve > fs.maxSize) ||
		(fs.maxAge > 0 && !fs.born.IsZero() && now.Sub(fs.born) >= fs.maxAge) {
		return fs.rotate(now)
	}
	return nil
}

func (fs *fileSink) append(buf []byte, last head) error {
	if _, err := fs.w.Write(buf); err != nil {
		return fs.fail(err)
	}
	if fs.born.IsZero() {
		fs.born = fs.now()
	}
	fs.size += int64(len(buf))
	fs.last = last
	return nil
}

// fail drops what may have been half written, so the file always ends with
// a whole line, and returns err.
func (fs *fileSink) fail(err error) error {
	fs.w.Reset(fs.f)
	if terr := fs.f.Truncate(fs.good); terr != nil {
		fs.log.Error("decision log: cannot truncate a failed write", "path", fs.path, "err", terr)
	}
	fs.size = fs.good
	return fmt.Errorf("decision log: write %s: %w", fs.path, err)
}

func (fs *fileSink) flush(sync bool) error {
	if err := fs.w.Flush(); err != nil {
		return fs.fail(err)
	}
	if fs.good != fs.size {
		fs.good, fs.dirty = fs.size, true
	}
	if fs.dirty && fs.fsync != FsyncNever && (sync || fs.fsync == FsyncAlways) {
		return fs.sync()
	}
	return nil
}

// sync fsyncs the live file. fsync_interval runs on real time, not on the
// injected clock (which only stamps checkpoints and drives rotation).
func (fs *fileSink) sync() error {
	if err := fs.f.Sync(); err != nil {
		return fmt.Errorf("decision log: fsync %s: %w", fs.path, err)
	}
	fs.dirty, fs.syncedAt = false, time.Now()
	return nil
}

func (fs *fileSink) checkpoint(now time.Time, force bool) error {
	if !fs.cp.due(fs.last, now, force) {
		return nil
	}
	line := fs.cp.line(fs.last, now)
	if _, err := fs.w.Write(line); err != nil {
		return fs.fail(err)
	}
	fs.size += int64(len(line))
	fs.m.checkpoints.Inc()
	return nil
}

func (fs *fileSink) tick(now time.Time) error {
	if fs.maxAge > 0 && !fs.born.IsZero() && now.Sub(fs.born) >= fs.maxAge {
		if err := fs.rotate(now); err != nil {
			return err
		}
	}
	if err := fs.checkpoint(now, false); err != nil {
		return err
	}
	if err := fs.flush(false); err != nil {
		return err
	}
	if fs.dirty && fs.fsync == FsyncInterval && time.Since(fs.syncedAt) >= fs.fsyncInt {
		return fs.sync()
	}
	return nil
}

// rotate seals the live file with a checkpoint, renames it with a UTC
// timestamp and starts an empty one. The chain simply continues.
func (fs *fileSink) rotate(now time.Time) error {
	if err := fs.checkpoint(now, true); err != nil {
		return err
	}
	if err := fs.flush(false); err != nil {
		return err
	}
	if fs.fsync != FsyncNever {
		if err := fs.sync(); err != nil {
			return err
		}
	}
	if err := fs.f.Close(); err != nil {
		return fmt.Errorf("decision log: rotate %s: %w", fs.path, err)
	}
	target := fs.rotatedName(now)
	if err := os.Rename(fs.path, target); err != nil {
		// Keep writing to the live file rather than lose events.
		if oerr := fs.open(now); oerr != nil {
			return errors.Join(fmt.Errorf("decision log: rotate %s: %w", fs.path, err), oerr)
		}
		return fmt.Errorf("decision log: rotate %s: %w", fs.path, err)
	}
	if err := fs.open(now); err != nil {
		return err
	}
	if fs.fsync != FsyncNever {
		syncDir(filepath.Dir(fs.path))
	}
	fs.m.rotations.Inc()
	fs.log.Info("decision log rotated", "path", fs.path, "rotated", target)
	fs.prune()
	return nil
}

func (fs *fileSink) split() (dir, base, ext string) {
	dir, name := filepath.Split(fs.path)
	ext = filepath.Ext(name)
	return dir, strings.TrimSuffix(name, ext), ext
}

func (fs *fileSink) rotatedName(now time.Time) string {
	dir, base, ext := fs.split()
	stamp := now.UTC().Format(rotatedLayout)
	name := filepath.Join(dir, base+"-"+stamp+ext)
	for i := 1; ; i++ {
		if _, err := os.Lstat(name); errors.Is(err, os.ErrNotExist) {
			return name
		}
		name = filepath.Join(dir, base+"-"+stamp+"-"+strconv.Itoa(i)+ext)
	}
}

// rotated lists the rotated files of this log, oldest first.
func (fs *fileSink) rotated() ([]string, error) {
	dir, base, ext := fs.split()
	matches, err := filepath.Glob(filepath.Join(dir, globEscape(base)+"-*"+globEscape(ext)))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range matches {
		stamp := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(m), base+"-"), ext)
		if i := strings.IndexByte(stamp, '-'); i >= 0 {
			stamp = stamp[:i]
		}
		if _, err := time.Parse(rotatedLayout, stamp); err == nil {
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out, nil
}

func (fs *fileSink) prune() {
	if fs.maxFiles <= 0 {
		return
	}
	rotated, err := fs.rotated()
	if err != nil {
		fs.log.Warn("decision log: list rotated files", "err", err)
		return
	}
	for len(rotated) > fs.maxFiles {
		if err := os.Remove(rotated[0]); err != nil {
			fs.log.Warn("decision log: remove rotated file", "path", rotated[0], "err", err)
		}
		rotated = rotated[1:]
	}
}

func (fs *fileSink) close(now time.Time) error {
	err := fs.checkpoint(now, true)
	if ferr := fs.flush(false); err == nil {
		err = ferr
	}
	if fs.fsync != FsyncNever {
		if serr := fs.sync(); err == nil {
			err = serr
		}
	}
	if cerr := fs.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("decision log: close %s: %w", fs.path, cerr)
	}
	return err
}

func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`).Replace(s)
}

// repairTail truncates f after its last newline, so that a line torn by a
// crash never glues onto the next one, and returns the resulting size.
func repairTail(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	if size == 0 {
		return 0, nil
	}
	var last [1]byte
	if _, err := f.ReadAt(last[:], size-1); err != nil {
		return 0, err
	}
	if last[0] == '\n' {
		return size, nil
	}
	keep := int64(0)
	err = reverseLines(f, size, func(_ []byte, start int64) bool {
		keep = start
		return false
	})
	if err != nil {
		return 0, err
	}
	// reverseLines reports the torn fragment first; the cut is at its start.
	if err := f.Truncate(keep); err != nil {
		return 0, err
	}
	return keep, nil
}

// reverseLines calls fn with each line of the first size bytes of f (without
// its newline) and its offset, last line first, until fn returns false. A
// last line without a newline (torn by a crash) is reported first.
func reverseLines(f *os.File, size int64, fn func(line []byte, start int64) bool) error {
	const chunk = 64 << 10
	end := size
	if size > 0 {
		var last [1]byte
		if _, err := f.ReadAt(last[:], size-1); err != nil {
			return err
		}
		if last[0] == '\n' {
			end = size - 1
		}
	}
	var buf []byte // the bytes [pos, end) not reported yet
	pos := end
	for {
		if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
			if !fn(buf[i+1:], pos+int64(i)+1) {
				return nil
			}
			buf = buf[:i]
			continue
		}
		if pos == 0 {
			fn(buf, 0)
			return nil
		}
		n := min(int64(chunk), pos)
		pos -= n
		next := make([]byte, int(n)+len(buf))
		if _, err := f.ReadAt(next[:n], pos); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		copy(next[n:], buf)
		buf = next
	}
}

// lastEvent finds the last chained event in the first size bytes of f,
// skipping checkpoints.
func lastEvent(f *os.File, size int64) (h head, err error) {
	err = reverseLines(f, size, func(line []byte, _ int64) bool {
		if lh, ok := lineHead(line); ok {
			h = lh
			return false
		}
		return true
	})
	return h, err
}

func lastEventInFile(path string) (head, error) {
	f, err := os.Open(path)
	if err != nil {
		return head{}, fmt.Errorf("decision log: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return head{}, fmt.Errorf("decision log: %w", err)
	}
	return lastEvent(f, st.Size())
}

// firstLineTime is the timestamp of the file's first line (an event's or a
// checkpoint's), so age rotation survives restarts; now when unreadable.
func firstLineTime(f *os.File, now time.Time) time.Time {
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, 1<<20), 64<<10)
	line, err := r.ReadSlice('\n')
	if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
		return now
	}
	var v struct {
		Timestamp  time.Time `json:"timestamp"`
		Checkpoint *struct {
			Timestamp time.Time `json:"timestamp"`
		} `json:"checkpoint"`
	}
	if json.Unmarshal(line, &v) != nil {
		return now
	}
	if v.Checkpoint != nil && !v.Checkpoint.Timestamp.IsZero() {
		return v.Checkpoint.Timestamp
	}
	if v.Timestamp.IsZero() {
		return now
	}
	return v.Timestamp
}

// syncDir makes a rename or a new file in dir durable. Errors are ignored:
// some file systems cannot fsync a directory.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
