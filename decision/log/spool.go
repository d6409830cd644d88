package log

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The spool (delivery: durable) is a write-ahead journal of chained lines in
// spool_dir:
//
//	lock                  held (flock) by the one process using the directory
//	seg-<first seq>.jsonl segments of chained lines, exactly as the sinks get them
//	cursor-<sink>.json    each sink's last delivered event {"seq","hash"}
//	chain.json            the chain head at the last clean stop
//
// The log's writer appends each batch of events with one write(2) (group
// commit) and acknowledges the events only after it; with fsync: always it
// also fsyncs first. A process killed at any point loses nothing that was
// acknowledged: the page cache outlives the process. Power loss keeps what
// was fsynced (fsync: always → every acknowledged event; interval → all but
// the last fsync_interval). A torn last line (a write cut by a crash) is
// truncated on start; it was never acknowledged.
//
// Each sink reads the journal from its own cursor, delivers, and advances
// the cursor; a segment is deleted when every sink is past it. A sink that
// is down simply falls behind: the journal grows (up to spool_max_size) and
// the sink replays from its cursor when it returns, after a restart too.
// Delivery is at least once: after a crash a sink may repeat the events
// between its last persisted cursor and the crash (the file sink does not:
// it resumes after the last event in its file).

const (
	segmentPrefix = "seg-"
	segmentExt    = ".jsonl"
	stateFileName = "chain.json"
	lockFileName  = "lock"
	// maxSegment bounds a segment; smaller spools use smaller segments so
	// that delivered ones can be deleted well before the limit.
	maxSegment = 16 << 20
	minSegment = 64 << 10
)

var errSpoolFull = errors.New("decision log: spool full")

type segment struct {
	first uint64 // seq of its first event: its name
	last  uint64 // seq of its last event; 0 while empty
	size  int64  // bytes committed
	path  string
}

type journal struct {
	dir      string
	max      int64
	segMax   int64
	fsync    string
	fsyncInt time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	segs    []*segment // ascending; the last is the active one
	total   int64
	head    head
	closed  bool
	wake    chan struct{} // closed and replaced at every commit and at close
	readers []*reader

	// Owned by the committer (the log's writer goroutine); active.size is
	// written under mu and may be read by the committer without it.
	active   *segment
	f        *os.File
	dirty    bool
	syncedAt time.Time
}

func openJournal(s *settings, log *slog.Logger, now time.Time) (*journal, error) {
	j := &journal{
		dir: s.spoolDir, max: s.spoolMax, fsync: s.fsync, fsyncInt: s.fsyncInterval, log: log,
		wake: make(chan struct{}), syncedAt: now, head: genesis(),
	}
	j.segMax = min(maxSegment, max(minSegment, j.max/8))
	entries, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("spool_dir: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		num, ok := strings.CutPrefix(name, segmentPrefix)
		if !ok || !strings.HasSuffix(num, segmentExt) || !e.Type().IsRegular() {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(num, segmentExt), 10, 64)
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("spool_dir: %w", err)
		}
		path := filepath.Join(j.dir, name)
		if info.Size() == 0 {
			_ = os.Remove(path)
			continue
		}
		j.segs = append(j.segs, &segment{first: first, size: info.Size(), path: path})
	}
	sort.Slice(j.segs, func(a, b int) bool { return j.segs[a].first < j.segs[b].first })
	for i := 0; i+1 < len(j.segs); i++ {
		j.segs[i].last = j.segs[i+1].first - 1
	}
	if n := len(j.segs); n > 0 {
		last := j.segs[n-1]
		h, err := j.recover(last)
		if err != nil {
			return nil, err
		}
		if h.Seq > 0 {
			j.head, last.last = h, h.Seq
		}
		j.f, err = os.OpenFile(last.path, os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("spool_dir: %w", err)
		}
		j.active = last
	}
	for _, sg := range j.segs {
		j.total += sg.size
	}
	return j, nil
}

// recover checks every line of the active segment and truncates whatever
// follows the last valid one: a write cut short by a crash.
func (j *journal) recover(sg *segment) (head, error) {
	data, err := os.ReadFile(sg.path)
	if err != nil {
		return head{}, fmt.Errorf("spool_dir: %w", err)
	}
	var h head
	validEnd, off := 0, 0
	for off < len(data) {
		i := bytes.IndexByte(data[off:], '\n')
		if i < 0 {
			break
		}
		line := data[off : off+i+1]
		off += i + 1
		c, err := parseChained(line)
		if err != nil || c.Seq <= h.Seq {
			j.log.Error("decision log: invalid line in the spool", "segment", sg.path, "offset", off-len(line), "err", err)
			continue
		}
		h, validEnd = head{Seq: c.Seq, Hash: c.Hash}, off
	}
	if validEnd < len(data) {
		j.log.Warn("decision log: truncating the unacknowledged tail of the spool", "segment", sg.path, "bytes", len(data)-validEnd)
		if err := os.Truncate(sg.path, int64(validEnd)); err != nil {
			return head{}, fmt.Errorf("spool_dir: %w", err)
		}
		sg.size = int64(validEnd)
	}
	return h, nil
}

// appendBatch writes buf (whole chained lines, seqs first..last.Seq) as one
// write. wrote reports whether the lines are in the spool: then the chain
// has advanced even when err reports a failed fsync.
func (j *journal) appendBatch(buf []byte, first uint64, last head, sync bool, now time.Time) (wrote bool, err error) {
	n := int64(len(buf))
	if j.used()+n > j.max {
		// Everything delivered may still sit in the active segment: seal
		// it so that it can go, then look again.
		if j.active != nil && j.active.size > 0 && j.minDelivered() >= j.active.last {
			if err := j.roll(first, now); err != nil {
				return false, err
			}
			j.trim()
		}
		if j.used()+n > j.max {
			return false, errSpoolFull
		}
	}
	if j.active == nil || (j.active.size > 0 && j.active.size+n > j.segMax) {
		if err := j.roll(first, now); err != nil {
			return false, err
		}
	}
	if _, err := j.f.Write(buf); err != nil {
		_ = j.f.Truncate(j.active.size)
		return false, fmt.Errorf("decision log: spool write: %w", err)
	}
	j.mu.Lock()
	j.active.size += n
	j.active.last = last.Seq
	j.total += n
	j.head = last
	close(j.wake)
	j.wake = make(chan struct{})
	j.mu.Unlock()
	j.dirty = true
	if j.fsync == FsyncAlways || (sync && j.fsync != FsyncNever) {
		if err := j.sync(now); err != nil {
			return true, err
		}
	}
	return true, nil
}

func (j *journal) used() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.total
}

// roll starts a new segment whose first event is first.
func (j *journal) roll(first uint64, now time.Time) error {
	if j.f != nil {
		if j.fsync != FsyncNever && j.dirty {
			if err := j.sync(now); err != nil {
				return err
			}
		}
		if err := j.f.Close(); err != nil {
			return fmt.Errorf("decision log: spool: %w", err)
		}
		j.f = nil
	}
	path := filepath.Join(j.dir, fmt.Sprintf("%s%020d%s", segmentPrefix, first, segmentExt))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("decision log: spool: %w", err)
	}
	if j.fsync != FsyncNever {
		syncDir(j.dir)
	}
	sg := &segment{first: first, path: path}
	j.mu.Lock()
	j.segs = append(j.segs, sg)
	j.active = sg
	j.mu.Unlock()
	j.f = f
	return nil
}

func (j *journal) sync(now time.Time) error {
	if j.f == nil {
		return nil
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("decision log: spool fsync: %w", err)
	}
	j.dirty, j.syncedAt = false, now
	return nil
}

// tick fsyncs on fsync: interval.
func (j *journal) tick(now time.Time) error {
	if j.dirty && j.fsync == FsyncInterval && now.Sub(j.syncedAt) >= j.fsyncInt {
		return j.sync(now)
	}
	return nil
}

func (j *journal) minDelivered() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	m := uint64(math.MaxUint64)
	for _, r := range j.readers {
		m = min(m, r.delivered.Seq)
	}
	return m
}

// trim deletes the sealed segments every reader has delivered.
func (j *journal) trim() {
	var remove []string
	j.mu.Lock()
	m := uint64(math.MaxUint64)
	for _, r := range j.readers {
		m = min(m, r.delivered.Seq)
	}
	for len(j.segs) > 1 && j.segs[0] != j.active && j.segs[0].last <= m {
		remove = append(remove, j.segs[0].path)
		j.total -= j.segs[0].size
		j.segs = j.segs[1:]
	}
	j.mu.Unlock()
	for _, p := range remove {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			j.log.Warn("decision log: remove delivered spool segment", "path", p, "err", err)
		}
	}
}

// stopWriting wakes the readers for the last time: once they reach the
// head, next returns io.EOF.
func (j *journal) stopWriting() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.closed {
		j.closed = true
		close(j.wake)
	}
}

// close syncs and closes the active segment.
func (j *journal) close(now time.Time) error {
	if j.f == nil {
		return nil
	}
	var err error
	if j.fsync != FsyncNever && j.dirty {
		err = j.sync(now)
	}
	if cerr := j.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("decision log: spool: %w", cerr)
	}
	j.f = nil
	return err
}

// backlog is how many events the named reader has yet to deliver
// (approximate across a restart that skipped seqs).
func (j *journal) backlog(r *reader) float64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.head.Seq <= r.delivered.Seq {
		return 0
	}
	return float64(j.head.Seq - r.delivered.Seq)
}

// reader is one sink's position in the journal. Its methods are called
// from the sink's consumer goroutine only.
type reader struct {
	j    *journal
	name string
	skip uint64   // lines up to this seq were delivered before a restart
	seg  *segment // the segment being read; nil before the first exists
	f    *os.File
	off  int64

	delivered head // guarded by j.mu
}

// newReader positions a reader after from: the sink's last delivered event.
func (j *journal) newReader(name string, from head) *reader {
	r := &reader{j: j, name: name, skip: from.Seq, delivered: from}
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, sg := range j.segs {
		if sg.first <= from.Seq+1 {
			r.seg = sg
		}
	}
	if r.seg == nil && len(j.segs) > 0 {
		r.seg = j.segs[0]
	}
	j.readers = append(j.readers, r)
	return r
}

// next returns the next chained lines (at most maxLines, about maxBytes),
// waiting up to wait for one to be committed. It returns no lines and no
// error when wait passed, io.EOF once the journal stopped and every line was
// returned. The lines stay valid until the caller drops them.
func (r *reader) next(ctx context.Context, maxLines, maxBytes int, wait time.Duration) ([][]byte, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		j := r.j
		j.mu.Lock()
		if r.seg == nil && len(j.segs) > 0 {
			r.seg = j.segs[0]
		}
		var committed int64
		var following *segment
		if r.seg != nil {
			committed = r.seg.size
			for _, sg := range j.segs {
				if sg.first > r.seg.first {
					following = sg
					break
				}
			}
		}
		wake, closed := j.wake, j.closed
		j.mu.Unlock()

		if r.seg != nil && r.off < committed {
			lines, err := r.read(committed, maxLines, maxBytes)
			if err != nil || len(lines) > 0 {
				return lines, err
			}
			continue // every line read was delivered before a restart
		}
		if following != nil { // the current segment is sealed and read
			r.closeFile()
			r.seg, r.off = following, 0
			continue
		}
		if closed {
			return nil, io.EOF
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			return nil, nil
		}
	}
}

func (r *reader) read(committed int64, maxLines, maxBytes int) ([][]byte, error) {
	if r.f == nil {
		f, err := os.Open(r.seg.path)
		if err != nil {
			return nil, fmt.Errorf("decision log: spool: %w", err)
		}
		r.f = f
	}
	avail := committed - r.off
	n := min(avail, int64(maxBytes))
	var buf []byte
	for {
		buf = make([]byte, n)
		if _, err := r.f.ReadAt(buf, r.off); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("decision log: spool: %w", err)
		}
		if bytes.IndexByte(buf, '\n') >= 0 || n == avail {
			break
		}
		n = min(avail, 2*n) // one event larger than maxBytes
	}
	var lines [][]byte
	consumed := 0
	for len(lines) < maxLines {
		i := bytes.IndexByte(buf[consumed:], '\n')
		if i < 0 {
			break
		}
		line := buf[consumed : consumed+i+1]
		consumed += i + 1
		if h, ok := lineHead(line); ok && h.Seq <= r.skip {
			continue
		}
		lines = append(lines, line)
	}
	r.off += int64(consumed)
	return lines, nil
}

// ack records that every line up to last was delivered.
func (r *reader) ack(last []byte) {
	h, ok := lineHead(last)
	if !ok {
		return
	}
	r.j.mu.Lock()
	r.delivered = h
	r.j.mu.Unlock()
}

func (r *reader) position() head {
	r.j.mu.Lock()
	defer r.j.mu.Unlock()
	return r.delivered
}

func (r *reader) closeFile() {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
}

// cursorPath is where a sink's position is kept.
func cursorPath(dir, sink string) string {
	return filepath.Join(dir, "cursor-"+sink+".json")
}

// chainState is the content of chain.json.
type chainState struct {
	Seq   uint64 `json:"seq"`
	Hash  string `json:"hash"`
	Clean bool   `json:"clean"`
}

func readJSONFile(path string, v any) (bool, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	return true, nil
}

// writeJSONFile replaces path atomically (temporary file and rename), so a
// crash leaves either the old or the new content.
func writeJSONFile(path string, v any, sync bool) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(raw, '\n'))
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if sync {
		syncDir(filepath.Dir(path))
	}
	return nil
}
