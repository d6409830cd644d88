package log

import (
	"bufio"
	"io"
	"time"
)

// localSink is a byte-stream destination of chained lines: the file or
// stdout. Its methods are called from one goroutine (the log's writer, or
// the sink's spool consumer in durable mode).
type localSink interface {
	name() string
	// write appends buf, whole chained lines whose last event is last.
	write(buf []byte, last head) error
	// flush hands buffered bytes to the operating system; sync also asks
	// for them to reach stable storage.
	flush(sync bool) error
	// tick does the periodic work: flush, fsync on interval, rotation by
	// age, due checkpoints.
	tick(now time.Time) error
	// close writes a final checkpoint, flushes, syncs and closes.
	close(now time.Time) error
	// head is the last event written.
	head() head
}

// checkpoints tracks when a sink last wrote a checkpoint.
type checkpoints struct {
	sign *signer
	seq  uint64    // seq covered by the last checkpoint written
	at   time.Time // when it was written; zero before the first
}

// due reports whether a checkpoint for last should be written at now; force
// ignores the period (rotation, shutdown).
func (c *checkpoints) due(last head, now time.Time, force bool) bool {
	if c.sign == nil || last.Seq == 0 || last.Seq <= c.seq {
		return false
	}
	if c.at.IsZero() {
		c.at = now // the period starts with the sink
	}
	return force || now.Sub(c.at) >= c.sign.every
}

func (c *checkpoints) line(last head, now time.Time) []byte {
	c.seq, c.at = last.Seq, now
	return c.sign.line(last, now)
}

// streamSink writes to an io.Writer such as stdout.
type streamSink struct {
	w    *bufio.Writer
	out  io.Writer
	last head
	cp   checkpoints
	m    *metrics
}

func newStreamSink(out io.Writer, sign *signer, m *metrics) *streamSink {
	return &streamSink{w: bufio.NewWriterSize(out, 64<<10), out: out, cp: checkpoints{sign: sign}, m: m}
}

func (s *streamSink) name() string { return sinkStdout }

func (s *streamSink) head() head { return s.last }

func (s *streamSink) write(buf []byte, last head) error {
	if _, err := s.w.Write(buf); err != nil {
		s.w.Reset(s.out) // a bufio.Writer keeps its first error forever
		return err
	}
	s.last = last
	return nil
}

func (s *streamSink) flush(bool) error {
	if err := s.w.Flush(); err != nil {
		s.w.Reset(s.out)
		return err
	}
	return nil
}

func (s *streamSink) checkpoint(now time.Time, force bool) error {
	if !s.cp.due(s.last, now, force) {
		return nil
	}
	if _, err := s.w.Write(s.cp.line(s.last, now)); err != nil {
		s.w.Reset(s.out)
		return err
	}
	s.m.checkpoints.Inc()
	return nil
}

func (s *streamSink) tick(now time.Time) error {
	if err := s.checkpoint(now, false); err != nil {
		return err
	}
	return s.flush(false)
}

func (s *streamSink) close(now time.Time) error {
	err := s.checkpoint(now, true)
	if ferr := s.flush(true); err == nil {
		err = ferr
	}
	return err
}
