// Package log owns the decision log: encoding, masking, the hash chain,
// signed checkpoints, delivery to sinks (a file with rotation, stdout, and
// HTTP upload to a collector speaking OPA's decision-log API), the durable
// spool, and the offline tools that read logs back (Verify, BuildReport).
//
// It must not import gateway, bundles, xds or OPA.
//
// Concurrency: Log and LogSync are safe for concurrent use. Events are
// masked and encoded on the caller's goroutine and handed through a bounded
// queue to one writer goroutine, which assigns the chain (seq, prev_hash,
// hash) in queue order and writes each batch with one write (group commit).
// With delivery: durable the writer appends to the spool and every sink has
// its own goroutine reading the spool from its cursor; otherwise the writer
// writes the file or stdout itself and hands events to the uploader's
// goroutine through a bounded buffer. What happens when the queue is full is
// configured: wait (backpressure, durable) or drop and count (best_effort).
// Close drains the queue, delivers within shutdown_grace and flushes.
package log

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/policygate/policygate/decision"
)

// Options are the runtime dependencies of a Logger.
type Options struct {
	// Stdout receives events when Output is stdout. Nil means os.Stdout.
	Stdout io.Writer
	// CredentialHeaders are extra header names (e.g. an API-key header)
	// erased from every event.
	CredentialHeaders []string
	// Log reports delivery failures. Nil discards.
	Log *slog.Logger
	// BaseDir resolves relative paths in the Config (path, spool_dir,
	// bearer_token_file, signing_key_file). Empty leaves them as given.
	BaseDir string
	// Registerer receives the log's metrics. Nil registers nothing; the
	// instruments are still available from Collectors.
	Registerer prometheus.Registerer
	// HTTPClient performs uploads. Nil means a client with its own copy of
	// http.DefaultTransport.
	HTTPClient *http.Client
	// Now is the clock of checkpoints and file rotation. Nil means time.Now.
	Now func() time.Time
	// CheckOnly makes New validate the configuration and load its key and
	// token files (as Check does) but open, lock and start nothing: the
	// Logger it returns refuses every event. For `policygate check`, which
	// may run while a gateway uses the same files.
	CheckOnly bool
}

// Batching limits of the writer: one write(2) carries at most this much.
const (
	maxBatchItems = 1024
	maxBatchBytes = 1 << 20
)

// item is one encoded event on its way to the writer.
type item struct {
	body []byte     // the masked event, one JSON object without newline
	done chan error // when set, receives the outcome of the write
	sync bool       // LogSync: flush (and fsync) before reporting
}

// Logger is the decision-log pipeline.
type Logger struct {
	s      *settings
	masker *masker
	log    *slog.Logger
	now    func() time.Time
	m      *metrics
	sign   *signer

	queue    chan item
	mu       sync.RWMutex // guards closed; held for reading while sending
	closed   bool
	loopDone chan struct{}

	// Owned by the writer goroutine (and read by shutdown after it ends).
	head  head
	local localSink // file or stdout; nil with output: none. Durable: owned by its consumer
	feed  *memFeed  // events for the uploader when not durable
	j     *journal  // durable only
	lock  *os.File  // spool_dir lock

	up        *uploader
	consumers []*consumer
	stop      context.Context // the goroutines' own: ends when the shutdown grace runs out
	stopNow   context.CancelFunc
	wg        sync.WaitGroup

	seq     atomic.Uint64
	written atomic.Int64
	failed  atomic.Int64
	errMu   sync.Mutex
	err     error // first write error of the file, stdout or spool

	warnMu   sync.Mutex
	warnedAt map[string]time.Time

	closeOnce sync.Once
	closeErr  error
}

var _ decision.Logger = (*Logger)(nil)

// New opens the log's outputs, recovers the chain head and the spool, and
// starts its goroutines.
func New(cfg Config, opts Options) (*Logger, error) {
	cfg = cfg.resolved(opts.BaseDir)
	s, err := cfg.parse()
	if err != nil {
		return nil, err
	}
	mk, err := newMasker(cfg.Mask, opts.CredentialHeaders)
	if err != nil {
		return nil, err
	}
	l := &Logger{s: s, masker: mk, log: opts.Log, now: opts.Now, loopDone: make(chan struct{}), warnedAt: map[string]time.Time{}}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.now == nil {
		l.now = time.Now
	}
	if opts.CheckOnly {
		if err := Check(cfg, opts); err != nil {
			return nil, err
		}
		l.closed = true
		l.m = newMetrics(func() float64 { return 0 }, func() float64 { return 0 }, func() float64 { return 0 })
		l.closeOnce.Do(func() {})
		return l, nil
	}
	l.queue = make(chan item, s.queueSize)
	l.m = newMetrics(
		func() float64 { return float64(len(l.queue)) },
		func() float64 {
			if l.j == nil {
				return 0
			}
			return float64(l.j.used())
		},
		func() float64 { return float64(l.seq.Load()) },
	)
	if err := l.open(s, opts); err != nil {
		l.abort()
		return nil, err
	}
	l.stop, l.stopNow = context.WithCancel(context.Background())
	go l.run()
	for _, c := range l.consumers {
		l.wg.Add(1)
		go l.consume(c)
	}
	if opts.Registerer != nil {
		for _, c := range l.m.collectors() {
			if err := opts.Registerer.Register(c); err != nil {
				l.Close()
				return nil, fmt.Errorf("decision log: metrics: %w", err)
			}
		}
	}
	return l, nil
}

// open builds the sinks and recovers the chain head; on error the caller
// runs abort.
func (l *Logger) open(s *settings, opts Options) error {
	var err error
	if s.checkpoint != nil {
		if l.sign, err = newSigner(s.checkpoint); err != nil {
			return err
		}
	}
	if s.upload != nil {
		if l.up, err = newUploader(s.upload, opts.HTTPClient, l.m); err != nil {
			return err
		}
	}
	h := genesis()
	if s.spoolDir != "" {
		if err := os.MkdirAll(s.spoolDir, 0o700); err != nil {
			return fmt.Errorf("spool_dir: %w", err)
		}
		if l.lock, err = lockDir(s.spoolDir); err != nil {
			return fmt.Errorf("spool_dir: %w", err)
		}
		var st chainState
		ok, err := readJSONFile(filepath.Join(s.spoolDir, stateFileName), &st)
		switch {
		case err != nil:
			l.log.Warn("decision log: unreadable chain state", "err", err)
		case ok && st.Clean:
			h = h.later(head{Seq: st.Seq, Hash: st.Hash})
		case ok && s.delivery != DeliveryDurable && s.output != "file":
			// The last run ended without saving its head and nothing else
			// on disk knows it: a new chain starts (verify reports where).
			l.log.Warn("decision log: the previous run did not stop cleanly; starting a new hash chain")
		}
	}
	switch s.output {
	case "file":
		fs, err := openFileSink(s, l.sign, l.now, l.log, l.m)
		if err != nil {
			return err
		}
		l.local = fs
		h = h.later(fs.head())
	case "stdout":
		out := opts.Stdout
		if out == nil {
			out = os.Stdout
		}
		l.local = newStreamSink(out, l.sign, l.m)
	}
	if s.delivery == DeliveryDurable {
		if l.j, err = openJournal(s, l.log, time.Now()); err != nil {
			return err
		}
		h = h.later(l.j.head)
		if l.local != nil {
			from, err := l.cursor(l.local.name())
			if err != nil {
				return err
			}
			from = from.later(l.local.head())
			h = h.later(from)
			l.consumers = append(l.consumers, l.localConsumer(l.j.newReader(l.local.name(), from)))
		}
		if l.up != nil {
			from, err := l.cursor(sinkUpload)
			if err != nil {
				return err
			}
			h = h.later(from)
			l.consumers = append(l.consumers, l.uploadConsumer(l.j.newReader(sinkUpload, from)))
		}
	} else if l.up != nil {
		l.feed = newMemFeed(s.upload.bufferSize)
		l.consumers = append(l.consumers, l.uploadConsumer(l.feed))
	}
	l.head = h
	l.seq.Store(h.Seq)
	if s.spoolDir != "" {
		st := chainState{Seq: h.Seq, Hash: h.Hash}
		if err := writeJSONFile(filepath.Join(s.spoolDir, stateFileName), st, s.fsync != FsyncNever); err != nil {
			return fmt.Errorf("spool_dir: %w", err)
		}
	}
	return nil
}

// cursor reads a sink's last delivered event from the spool directory.
func (l *Logger) cursor(sink string) (head, error) {
	var h head
	ok, err := readJSONFile(cursorPath(l.s.spoolDir, sink), &h)
	if err != nil {
		return head{}, fmt.Errorf("spool_dir: %w", err)
	}
	if !ok || len(h.Hash) != hashHexLen {
		return head{}, nil // deliver everything the spool holds
	}
	return h, nil
}

// abort releases what open acquired.
func (l *Logger) abort() {
	if fs, ok := l.local.(*fileSink); ok && fs.f != nil {
		fs.f.Close()
	}
	if l.j != nil {
		l.j.close(time.Now())
	}
	unlockDir(l.lock)
}

// Log masks and encodes ev, then queues it.
//
// backpressure: when the queue is full Log waits for room until ctx ends;
// an event is only ever refused with an error. best_effort: an event that
// does not fit is dropped and counted, and Log returns nil. durable: Log
// returns nil only once the event is in the spool on disk (see the package
// documentation of the spool for what survives a crash); an error means the
// event is not acknowledged.
func (l *Logger) Log(ctx context.Context, ev *decision.Event) error {
	return l.submit(ctx, ev, false)
}

// LogSync is Log for routes that must not run unlogged (fail closed): it
// returns nil only once the event is stored — in the spool and fsynced
// (unless fsync: never) with durable delivery; otherwise written to the file
// (and fsynced) or to stdout. With upload as the only output and no spool it
// returns once the event is in the upload buffer. It never drops: in every
// mode it waits for room until ctx ends, and any failure is returned, so the
// caller can refuse the request.
func (l *Logger) LogSync(ctx context.Context, ev *decision.Event) error {
	return l.submit(ctx, ev, true)
}

var errClosed = errors.New("decision log: closed")

func (l *Logger) submit(ctx context.Context, ev *decision.Event, sync bool) error {
	line, err := l.Encode(ev)
	if err != nil {
		l.drop(reasonEncodeError, 1)
		return err
	}
	it := item{body: line[:len(line)-1], sync: sync}
	wait := sync || l.s.delivery == DeliveryDurable
	if wait {
		it.done = make(chan error, 1)
	}
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		l.drop(reasonClosed, 1)
		return errClosed
	}
	select {
	case l.queue <- it:
	default:
		if l.s.delivery == DeliveryBestEffort && !sync {
			l.mu.RUnlock()
			l.drop(reasonQueueFull, 1)
			return nil
		}
		select {
		case l.queue <- it:
		case <-ctx.Done():
			l.mu.RUnlock()
			l.drop(reasonQueueTimeout, 1)
			return fmt.Errorf("decision log: queue full: %w", ctx.Err())
		}
	}
	l.mu.RUnlock()
	if !wait {
		return nil
	}
	select {
	case err := <-it.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("decision log: waiting for the write: %w", ctx.Err())
	}
}

// Encode returns the masked JSON line for ev (with a trailing newline),
// without the chain fields the writer adds.
func (l *Logger) Encode(ev *decision.Event) ([]byte, error) {
	if l.masker.directInput(ev) {
		if b, ok := encodeDirect(ev, l.masker); ok {
			return append(b, '\n'), nil
		}
	}
	erased := l.masker.apply(ev.InputMap(), ev.Mask)
	b, err := encodeEvent(ev, erased)
	if err != nil {
		return nil, fmt.Errorf("decision log: encode %s: %w", ev.DecisionID, err)
	}
	return append(b, '\n'), nil
}

// run is the writer goroutine.
func (l *Logger) run() {
	defer close(l.loopDone)
	t := time.NewTicker(l.s.flushInterval)
	defer t.Stop()
	batch := make([]item, 0, 64)
	var buf []byte
	for {
		select {
		case it, ok := <-l.queue:
			if !ok {
				l.drained()
				return
			}
			batch = append(batch[:0], it)
			size, open := len(it.body), true
		fill:
			for len(batch) < maxBatchItems && size < maxBatchBytes {
				select {
				case it, ok := <-l.queue:
					if !ok {
						open = false
						break fill
					}
					batch = append(batch, it)
					size += len(it.body)
				default:
					break fill
				}
			}
			if l.j != nil {
				buf = l.commit(batch, buf[:0])
			} else {
				buf = l.write(batch, buf[:0])
			}
			clear(batch) // drop references to the bodies
			if !open {
				l.drained()
				return
			}
		case <-t.C:
			l.housekeep()
		}
	}
}

// commit appends a batch to the spool (durable) and acknowledges it.
func (l *Logger) commit(batch []item, buf []byte) []byte {
	start := l.head
	for _, it := range batch {
		buf = seal(buf, &l.head, it.body)
	}
	sync := false
	for _, it := range batch {
		sync = sync || it.sync
	}
	n := len(batch)
	wrote, err := l.j.appendBatch(buf, start.Seq+1, l.head, sync, time.Now())
	if wrote {
		l.seq.Store(l.head.Seq)
		l.m.spooled.Add(float64(n))
	} else {
		l.head = start
		reason := reasonSpoolError
		if errors.Is(err, errSpoolFull) {
			reason = reasonSpoolFull
		}
		l.drop(reason, n)
	}
	if err != nil {
		l.record(err)
	}
	for _, it := range batch {
		if it.done != nil {
			it.done <- err
		}
	}
	return buf
}

// write delivers a batch directly (not durable).
func (l *Logger) write(batch []item, buf []byte) []byte {
	ends := make([]int, len(batch))
	for i, it := range batch {
		buf = seal(buf, &l.head, it.body)
		ends[i] = len(buf)
	}
	l.seq.Store(l.head.Seq)
	n := len(batch)
	var werr error
	if l.local != nil {
		if werr = l.local.write(buf, l.head); werr != nil {
			l.drop(reasonWriteError, n)
			l.record(werr)
		} else {
			l.delivered(l.local.name(), n)
		}
	}
	if l.feed != nil {
		up := make([]byte, len(buf)) // buf is reused by the next batch
		copy(up, buf)
		prev := 0
		for _, end := range ends {
			line := up[prev:end]
			prev = end
			var ok bool
			if l.s.delivery == DeliveryBestEffort {
				ok = l.feed.offer(line)
			} else {
				ok = l.feed.put(l.stop, line)
			}
			if !ok {
				reason := reasonUploadBuffer
				if l.stop.Err() != nil {
					reason = reasonShutdown
				}
				l.m.dropped.WithLabelValues(reason).Inc()
				if l.local == nil {
					l.failed.Add(1)
				}
				l.warn("upload", "decision log: upload buffer full, dropping events")
			}
		}
	}
	var syncErr error
	for _, it := range batch {
		if it.done == nil {
			continue
		}
		if syncErr == nil {
			syncErr = werr
			if syncErr == nil && l.local != nil {
				syncErr = l.local.flush(true)
				if syncErr != nil {
					l.record(syncErr)
				}
			}
		}
		it.done <- syncErr
	}
	return buf
}

// housekeep runs on the flush interval in the writer goroutine.
func (l *Logger) housekeep() {
	now := l.now()
	if l.j != nil {
		if err := l.j.tick(time.Now()); err != nil {
			l.record(err)
		}
		return
	}
	if l.local != nil {
		if err := l.local.tick(now); err != nil {
			l.record(err)
		}
	}
}

// drained runs in the writer goroutine once the queue is closed and empty.
func (l *Logger) drained() {
	now := l.now()
	if l.j != nil {
		if err := l.j.close(time.Now()); err != nil {
			l.record(err)
		}
		l.j.stopWriting()
		return
	}
	if l.feed != nil {
		l.feed.close()
	}
	if l.local != nil {
		if err := l.local.close(now); err != nil {
			l.record(err)
		}
	}
}

// consumer delivers one sink's events from a feed: the spool (durable) or
// the upload buffer.
type consumer struct {
	name     string
	feed     feed
	r        *reader // durable only
	deliver  func(ctx context.Context, lines [][]byte) (int, error)
	tick     func(now time.Time) error
	finish   func(now time.Time) error
	maxLines int
	maxBytes int
	linger   time.Duration
	backoff  [2]time.Duration // min, max
	primary  bool             // counts in Stats
}

type feed interface {
	next(ctx context.Context, maxLines, maxBytes int, wait time.Duration) ([][]byte, error)
	ack(last []byte)
}

func (l *Logger) localConsumer(r *reader) *consumer {
	sink := l.local
	return &consumer{
		name: sink.name(), feed: r, r: r, primary: true,
		maxLines: maxBatchItems, maxBytes: maxBatchBytes,
		backoff: [2]time.Duration{100 * time.Millisecond, 5 * time.Second},
		deliver: func(_ context.Context, lines [][]byte) (int, error) {
			for _, line := range lines {
				h, _ := lineHead(line)
				if err := sink.write(line, h); err != nil {
					return 0, err
				}
			}
			if err := sink.flush(false); err != nil {
				return 0, err
			}
			return len(lines), nil
		},
		tick:   sink.tick,
		finish: sink.close,
	}
}

func (l *Logger) uploadConsumer(f feed) *consumer {
	u := l.s.upload
	c := &consumer{
		name: sinkUpload, feed: f, primary: l.local == nil,
		maxLines: u.batchSize, maxBytes: u.maxBatchBytes, linger: u.maxDelay,
		backoff: [2]time.Duration{u.minBackoff, u.maxBackoff},
		deliver: l.up.deliver,
	}
	if r, ok := f.(*reader); ok {
		c.r = r
	}
	return c
}

// consume is a consumer's goroutine.
func (l *Logger) consume(c *consumer) {
	defer l.wg.Done()
	var saved head
	savedAt := time.Now()
	for {
		lines, err := c.feed.next(l.stop, c.maxLines, c.maxBytes, l.s.flushInterval)
		if err != nil {
			break // io.EOF after shutdown, or the grace ran out
		}
		lines = l.linger(c, lines)
		if len(lines) > 0 {
			if left := l.deliverAll(c, lines); left > 0 {
				l.lost(c, left)
				break
			}
		}
		if c.tick != nil {
			if err := c.tick(l.now()); err != nil {
				l.warn(c.name, "decision log: sink housekeeping failed", "sink", c.name, "err", err)
			}
		}
		if c.r != nil && time.Since(savedAt) >= l.s.flushInterval {
			saved, savedAt = l.saveCursor(c, saved), time.Now()
		}
	}
	if f, ok := c.feed.(*memFeed); ok {
		l.lost(c, f.remaining())
	}
	if c.finish != nil {
		if err := c.finish(l.now()); err != nil {
			l.record(err)
		}
	}
	if c.r != nil {
		l.saveCursor(c, saved)
		c.r.closeFile()
		if backlog := l.j.backlog(c.r); backlog > 0 {
			l.log.Warn("decision log: events stay in the spool until the sink takes them", "sink", c.name, "events", backlog)
		}
	}
}

// linger waits up to the consumer's linger for a batch to fill.
func (l *Logger) linger(c *consumer, lines [][]byte) [][]byte {
	if c.linger <= 0 || len(lines) == 0 || len(lines) >= c.maxLines {
		return lines
	}
	size := 0
	for _, line := range lines {
		size += len(line)
	}
	deadline := time.Now().Add(c.linger)
	for len(lines) < c.maxLines && size < c.maxBytes {
		wait := time.Until(deadline)
		if wait <= 0 {
			break
		}
		more, err := c.feed.next(l.stop, c.maxLines-len(lines), c.maxBytes-size, wait)
		for _, line := range more {
			size += len(line)
		}
		lines = append(lines, more...)
		if err != nil || len(more) == 0 {
			break
		}
	}
	return lines
}

// deliverAll delivers lines, retrying with backoff until they are all
// delivered or the shutdown grace ran out; it returns how many were not.
func (l *Logger) deliverAll(c *consumer, lines [][]byte) int {
	backoff := c.backoff[0]
	for len(lines) > 0 {
		n, err := c.deliver(l.stop, lines)
		if n > 0 {
			c.feed.ack(lines[n-1])
			l.delivered(c.name, n)
			if c.primary {
				l.written.Add(int64(n))
			}
			lines = lines[n:]
			backoff = c.backoff[0]
		}
		if err == nil {
			continue
		}
		if l.stop.Err() != nil {
			return len(lines)
		}
		l.warn(c.name, "decision log: delivery failed, retrying", "sink", c.name, "events", len(lines), "err", err)
		if c.r != nil {
			l.m.backlog.WithLabelValues(c.name).Set(l.j.backlog(c.r))
		}
		// Equal jitter: half fixed, half random, so replicas spread out.
		d := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-l.stop.Done():
			t.Stop()
			return len(lines)
		}
		backoff = min(2*backoff, c.backoff[1])
	}
	return 0
}

// lost accounts for n events a consumer gave up on at shutdown: they stay
// in the spool (durable) or are dropped (memory buffer).
func (l *Logger) lost(c *consumer, n int) {
	if c.r != nil || n == 0 {
		return
	}
	l.m.dropped.WithLabelValues(reasonShutdown).Add(float64(n))
	if c.primary {
		l.failed.Add(int64(n))
	}
	l.record(fmt.Errorf("decision log: %d events not uploaded before the shutdown grace ended", n))
}

// saveCursor persists a durable consumer's position when it moved and
// deletes the spool segments every sink is done with.
func (l *Logger) saveCursor(c *consumer, saved head) head {
	pos := c.r.position()
	l.m.backlog.WithLabelValues(c.name).Set(l.j.backlog(c.r))
	if pos == saved {
		return saved
	}
	if err := writeJSONFile(cursorPath(l.s.spoolDir, c.name), pos, false); err != nil {
		l.warn("cursor", "decision log: cannot save a sink's spool position", "sink", c.name, "err", err)
		return saved
	}
	l.j.trim()
	return pos
}

func (l *Logger) delivered(sink string, n int) {
	l.m.written.WithLabelValues(sink).Add(float64(n))
	if l.j == nil && sink != sinkUpload {
		l.written.Add(int64(n))
	}
}

// drop counts n events that will not be delivered. Stats counts as failed
// only those Log acknowledged: a refusal is the caller's to handle.
func (l *Logger) drop(reason string, n int) {
	l.m.dropped.WithLabelValues(reason).Add(float64(n))
	switch reason {
	case reasonQueueFull, reasonWriteError:
		l.failed.Add(int64(n))
	}
	if reason == reasonQueueFull {
		l.warn(reason, "decision log: queue full, dropping events (delivery: best_effort)")
	}
}

// record keeps the first write error for Close and logs every one.
func (l *Logger) record(err error) {
	l.errMu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.errMu.Unlock()
	l.warn("record", "decision log write failed", "err", err)
}

// warn logs at most once per 10 seconds per key, so an outage does not
// flood the operational log.
func (l *Logger) warn(key, msg string, args ...any) {
	now := time.Now()
	l.warnMu.Lock()
	last, ok := l.warnedAt[key]
	if ok && now.Sub(last) < 10*time.Second {
		l.warnMu.Unlock()
		return
	}
	l.warnedAt[key] = now
	l.warnMu.Unlock()
	l.log.Error(msg, args...)
}

// Close stops accepting events, writes every queued one, delivers within
// shutdown_grace, flushes and syncs. Events arriving after Close are
// refused with an error, never lost silently. It returns the first write
// error of the file, stdout or spool, if any.
func (l *Logger) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), l.s.shutdownGrace)
	defer cancel()
	return l.Shutdown(ctx)
}

// Shutdown is Close with the grace period given by ctx: when ctx ends,
// uploads still failing are abandoned — left in the spool with durable
// delivery, counted as dropped otherwise.
func (l *Logger) Shutdown(ctx context.Context) error {
	l.closeOnce.Do(func() {
		// Log holds the read lock while it sends, so taking the write lock
		// waits for senders in flight; the writer keeps draining meanwhile.
		l.mu.Lock()
		l.closed = true
		close(l.queue)
		l.mu.Unlock()
		finished := make(chan struct{})
		go func() {
			select {
			case <-ctx.Done():
				l.stopNow()
			case <-finished:
			}
		}()
		<-l.loopDone
		l.wg.Wait()
		close(finished)
		l.stopNow()
		if l.s.spoolDir != "" {
			st := chainState{Seq: l.head.Seq, Hash: l.head.Hash, Clean: true}
			if err := writeJSONFile(filepath.Join(l.s.spoolDir, stateFileName), st, l.s.fsync != FsyncNever); err != nil {
				l.record(fmt.Errorf("decision log: save chain state: %w", err))
			}
		}
		unlockDir(l.lock)
		l.errMu.Lock()
		l.closeErr = l.err
		l.errMu.Unlock()
	})
	return l.closeErr
}

// Stats reports events delivered to the log's primary output (the file or
// stdout, or the collector when it is the only output) and events that
// failed or were dropped. Call after Close for exact numbers.
func (l *Logger) Stats() (written, failed int64) {
	return l.written.Load(), l.failed.Load()
}

// Collectors returns the log's Prometheus instruments, for a caller that
// registers them itself (Options.Registerer does it in New).
func (l *Logger) Collectors() []prometheus.Collector {
	return l.m.collectors()
}

// resolved returns c with its relative paths joined to base.
func (c Config) resolved(base string) Config {
	if base == "" {
		return c
	}
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}
	c.Path = abs(c.Path)
	c.SpoolDir = abs(c.SpoolDir)
	if c.Upload != nil {
		u := *c.Upload
		u.BearerTokenFile = abs(u.BearerTokenFile)
		c.Upload = &u
	}
	if c.Checkpoint != nil {
		cp := *c.Checkpoint
		cp.SigningKeyFile = abs(cp.SigningKeyFile)
		c.Checkpoint = &cp
	}
	return c
}

// Check validates cfg as New would and loads its key and token files, but
// opens nothing: it is safe to run while a gateway uses the same spool.
func Check(cfg Config, opts Options) error {
	cfg = cfg.resolved(opts.BaseDir)
	s, err := cfg.parse()
	if err != nil {
		return err
	}
	var errs []error
	if _, err := newMasker(cfg.Mask, opts.CredentialHeaders); err != nil {
		errs = append(errs, err)
	}
	if s.checkpoint != nil {
		if _, err := newSigner(s.checkpoint); err != nil {
			errs = append(errs, err)
		}
	}
	if s.upload != nil {
		if _, err := newUploader(s.upload, &http.Client{}, newMetrics(nil, nil, nil)); err != nil {
			errs = append(errs, err)
		}
	}
	if s.output == "file" {
		if st, err := os.Stat(filepath.Dir(s.path)); err != nil || !st.IsDir() {
			errs = append(errs, fmt.Errorf("path: directory of %s does not exist", s.path))
		}
	}
	if s.spoolDir != "" {
		if st, err := os.Stat(s.spoolDir); err == nil && !st.IsDir() {
			errs = append(errs, fmt.Errorf("spool_dir: %s is not a directory", s.spoolDir))
		}
	}
	return errors.Join(errs...)
}
