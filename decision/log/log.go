// Package log writes decision-log events: one JSON object per line, to
// stdout or a file, with credentials and policy-requested paths erased from
// the logged copy of the input (never from the request itself).
//
// It must not import gateway, bundles, xds or OPA.
//
// Concurrency: Log is safe for concurrent use. Events are encoded and masked
// on the caller's goroutine and handed to one writer goroutine through a
// bounded queue; a full queue makes Log wait (backpressure) rather than drop,
// so no accepted event is lost. Close drains the queue and flushes.
package log

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/policygate/policygate/decision"
)

// Config configures the decision log.
type Config struct {
	// Output is "stdout" or "file". Empty means stdout.
	Output string `yaml:"output"`
	// Path is the file appended to when Output is "file". Required then.
	Path string `yaml:"path"`
	// Mask lists extra input paths to erase from every event, such as
	// "input.request.body.ssn". Credentials are always erased.
	Mask []string `yaml:"mask"`
	// QueueSize bounds the events waiting to be written. Zero means 4096.
	QueueSize int `yaml:"queue_size"`
	// FlushInterval is how long a written event may sit in the buffer before
	// it is flushed, as a Go duration. Empty means "200ms".
	FlushInterval string `yaml:"flush_interval"`
}

// Validate checks cfg; errors name the key under the decision_log section.
func (c *Config) Validate() error {
	var errs []error
	switch c.Output {
	case "", "stdout":
		if c.Path != "" {
			errs = append(errs, errors.New("path: only valid with output: file"))
		}
	case "file":
		if c.Path == "" {
			errs = append(errs, errors.New("path: required with output: file"))
		}
	default:
		errs = append(errs, fmt.Errorf("output: %q is not stdout or file", c.Output))
	}
	for i, m := range c.Mask {
		if _, err := parseMaskPath(m); err != nil {
			errs = append(errs, fmt.Errorf("mask[%d]: %w", i, err))
		}
	}
	if c.QueueSize < 0 {
		errs = append(errs, errors.New("queue_size: must not be negative"))
	}
	if c.FlushInterval != "" {
		if d, err := time.ParseDuration(c.FlushInterval); err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("flush_interval: %q is not a positive duration", c.FlushInterval))
		}
	}
	return errors.Join(errs...)
}

// Options are the runtime dependencies of a Logger.
type Options struct {
	// Stdout receives events when Output is stdout. Nil means os.Stdout.
	Stdout io.Writer
	// CredentialHeaders are extra header names (e.g. an API-key header)
	// erased from every event.
	CredentialHeaders []string
	// Log reports write failures. Nil discards.
	Log *slog.Logger
}

// Logger is the decision-log pipeline.
type Logger struct {
	masker   *masker
	queue    chan []byte
	w        *bufio.Writer
	file     *os.File
	flushInt time.Duration
	log      *slog.Logger

	mu        sync.RWMutex // guards closed; held for reading while sending
	closed    bool
	done      chan struct{}
	written   atomic.Int64
	failed    atomic.Int64
	err       error // first write error; owned by the writer goroutine
	closeOnce sync.Once
	closeErr  error
}

var _ decision.Logger = (*Logger)(nil)

// New opens the log's output and starts its writer.
func New(cfg Config, opts Options) (*Logger, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newMasker(cfg.Mask, opts.CredentialHeaders)
	if err != nil {
		return nil, err
	}
	l := &Logger{masker: m, log: opts.Log, done: make(chan struct{}), flushInt: 200 * time.Millisecond}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if cfg.FlushInterval != "" {
		l.flushInt, _ = time.ParseDuration(cfg.FlushInterval)
	}
	size := cfg.QueueSize
	if size == 0 {
		size = 4096
	}
	l.queue = make(chan []byte, size)
	var out io.Writer
	if cfg.Output == "file" {
		f, err := os.OpenFile(cfg.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("decision log: open %s: %w", cfg.Path, err)
		}
		l.file, out = f, f
	} else {
		out = opts.Stdout
		if out == nil {
			out = os.Stdout
		}
	}
	l.w = bufio.NewWriterSize(out, 64<<10)
	go l.run()
	return l, nil
}

// Log masks and encodes ev, then queues it. When the queue is full it waits
// for room until ctx ends; an event is only ever refused with an error,
// never silently dropped.
func (l *Logger) Log(ctx context.Context, ev *decision.Event) error {
	line, err := l.Encode(ev)
	if err != nil {
		return err
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return errors.New("decision log: closed")
	}
	select {
	case l.queue <- line:
		return nil
	default:
	}
	select {
	case l.queue <- line:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("decision log: queue full: %w", ctx.Err())
	}
}

// Encode returns the masked JSON line for ev (with a trailing newline).
func (l *Logger) Encode(ev *decision.Event) ([]byte, error) {
	type wire struct {
		*decision.Event
		Erased []string `json:"erased,omitempty"`
	}
	erased := l.masker.apply(ev.Input, ev.Mask)
	b, err := json.Marshal(wire{Event: ev, Erased: erased})
	if err != nil {
		return nil, fmt.Errorf("decision log: encode %s: %w", ev.DecisionID, err)
	}
	return append(b, '\n'), nil
}

func (l *Logger) run() {
	defer close(l.done)
	t := time.NewTicker(l.flushInt)
	defer t.Stop()
	for {
		select {
		case line, ok := <-l.queue:
			if !ok {
				l.flush()
				return
			}
			l.write(line)
		case <-t.C:
			l.flush()
		}
	}
}

func (l *Logger) write(line []byte) {
	if _, err := l.w.Write(line); err != nil {
		l.failed.Add(1)
		if l.err == nil {
			l.err = err
		}
		l.log.Error("decision log write failed", "err", err)
		return
	}
	l.written.Add(1)
}

func (l *Logger) flush() {
	if err := l.w.Flush(); err != nil && l.err == nil {
		l.err = err
		l.log.Error("decision log flush failed", "err", err)
	}
}

// Close stops accepting events, writes every queued one, flushes and syncs.
// Events arriving after Close are refused with an error, never lost silently.
func (l *Logger) Close() error {
	// Log holds the read lock while it sends, so taking the write lock
	// waits for senders in flight; the writer keeps draining meanwhile.
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.queue)
	}
	l.mu.Unlock()
	<-l.done
	l.closeOnce.Do(func() {
		l.closeErr = l.err
		if l.file != nil {
			if err := l.file.Sync(); err != nil && l.closeErr == nil {
				l.closeErr = err
			}
			if err := l.file.Close(); err != nil && l.closeErr == nil {
				l.closeErr = err
			}
		}
	})
	return l.closeErr
}

// Stats reports events written and failed writes. Call after Close for
// exact numbers.
func (l *Logger) Stats() (written, failed int64) {
	return l.written.Load(), l.failed.Load()
}
