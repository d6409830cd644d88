package log

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Delivery modes (Config.Delivery).
const (
	// DeliveryBackpressure (the default) never drops: a full queue makes Log
	// wait until its context ends.
	DeliveryBackpressure = "backpressure"
	// DeliveryBestEffort never makes a request wait: events that do not fit
	// the queue (or the upload buffer) are dropped and counted.
	DeliveryBestEffort = "best_effort"
	// DeliveryDurable appends every event to an on-disk spool before Log
	// returns; sinks are fed from the spool and replay it after an outage
	// or a restart.
	DeliveryDurable = "durable"
)

// Fsync policies (Config.Fsync).
const (
	FsyncAlways   = "always"   // fsync before an event is acknowledged
	FsyncInterval = "interval" // fsync every fsync_interval when something was written
	FsyncNever    = "never"    // leave it to the operating system
)

// Config configures the decision log: the YAML section decision_log.
type Config struct {
	// Output is "stdout", "file" or "none" (only with upload). Empty means
	// stdout.
	Output string `yaml:"output"`
	// Path is the file appended to when Output is "file". Required then.
	Path string `yaml:"path"`
	// Mask lists extra input paths to erase from every event, such as
	// "input.request.body.ssn". Credentials are always erased.
	Mask []string `yaml:"mask"`
	// QueueSize bounds the events waiting to be written. Zero means 4096.
	QueueSize int `yaml:"queue_size"`
	// FlushInterval is how long a written event may sit in a buffer before
	// it is flushed to the file or stdout, as a Go duration. Empty means
	// "200ms".
	FlushInterval string `yaml:"flush_interval"`

	// Delivery is "backpressure" (default: a full queue makes requests
	// wait), "best_effort" (drop and count) or "durable" (spool to disk
	// before acknowledging; requires spool_dir).
	Delivery string `yaml:"delivery"`
	// SpoolDir holds the durable spool, the sinks' positions in it and the
	// chain head. Required with delivery: durable; optional otherwise (then
	// only the chain head is kept there, so stdout-only logs continue their
	// chain across restarts).
	SpoolDir string `yaml:"spool_dir"`
	// SpoolMaxSize bounds the spool on disk ("1GiB", "512MB", or bytes).
	// When it is full, durable Log refuses new events with an error rather
	// than evicting acknowledged ones. Empty means 1GiB.
	SpoolMaxSize string `yaml:"spool_max_size"`

	// MaxSize rotates the file before a write would make it larger than
	// this ("100MiB", or bytes). Empty: no size rotation.
	MaxSize string `yaml:"max_size"`
	// MaxAge rotates the file once its first event is older than this (Go
	// duration). Empty: no age rotation.
	MaxAge string `yaml:"max_age"`
	// MaxFiles keeps at most this many rotated files, deleting the oldest.
	// Zero keeps all.
	MaxFiles int `yaml:"max_files"`
	// Fsync is "always", "interval" or "never"; it applies to the file and
	// the spool. Empty means interval.
	Fsync string `yaml:"fsync"`
	// FsyncInterval is the period of fsync: interval (Go duration). Empty
	// means "1s".
	FsyncInterval string `yaml:"fsync_interval"`
	// ShutdownGrace bounds Close: how long it keeps delivering (uploads in
	// particular) before giving up. Events not delivered by then stay in the
	// spool (durable) or are counted as dropped. Empty means "10s".
	ShutdownGrace string `yaml:"shutdown_grace"`

	// Upload sends events to a collector speaking OPA's decision-log API.
	// Optional.
	Upload *UploadConfig `yaml:"upload"`
	// Checkpoint signs the chain head periodically. Optional.
	Checkpoint *CheckpointConfig `yaml:"checkpoint"`
}

// UploadConfig configures the HTTP upload sink: POSTs of gzip-compressed
// JSON arrays of events, as OPA's decision-log service API expects.
type UploadConfig struct {
	// URL receives the POSTs, e.g. https://collector.example.com/logs.
	// Required; http or https.
	URL string `yaml:"url"`
	// Headers are added to every upload (not for secrets: they end up in
	// configuration files).
	Headers map[string]string `yaml:"headers"`
	// BearerTokenFile holds a token sent as "Authorization: Bearer ...".
	// Optional; read once at start.
	BearerTokenFile string `yaml:"bearer_token_file"`
	// BatchSize is the most events per POST. Zero means 500.
	BatchSize int `yaml:"batch_size"`
	// MaxBatchBytes bounds a batch before compression ("4MiB" or bytes).
	// Empty means 4MiB.
	MaxBatchBytes string `yaml:"max_batch_bytes"`
	// MaxDelay is how long an event may wait for its batch to fill (Go
	// duration). Empty means "1s".
	MaxDelay string `yaml:"max_delay"`
	// Timeout bounds one POST (Go duration). Empty means "10s".
	Timeout string `yaml:"timeout"`
	// BufferSize bounds the events held in memory for the uploader when
	// delivery is not durable. Zero means 10000. Unused with durable
	// delivery: the spool is the buffer.
	BufferSize int `yaml:"buffer_size"`
	// Retry configures the backoff between failed POSTs. Failed batches are
	// retried until they are accepted (durable, backpressure) or until the
	// buffer overflows (best_effort).
	Retry RetryConfig `yaml:"retry"`
}

// RetryConfig is an exponential backoff with jitter.
type RetryConfig struct {
	// MinBackoff is the first delay (Go duration). Empty means "100ms".
	MinBackoff string `yaml:"min_backoff"`
	// MaxBackoff caps the delay (Go duration). Empty means "30s".
	MaxBackoff string `yaml:"max_backoff"`
}

// CheckpointConfig configures signed checkpoints of the hash chain.
type CheckpointConfig struct {
	// SigningKeyFile is a PEM PKCS#8 Ed25519 private key
	// (openssl genpkey -algorithm ed25519). Required.
	SigningKeyFile string `yaml:"signing_key_file"`
	// Every is the checkpoint period (Go duration). A checkpoint is also
	// written before each rotation and at shutdown. Empty means "1m".
	Every string `yaml:"every"`
}

// settings is Config parsed once into runtime types.
type settings struct {
	output        string
	path          string
	queueSize     int
	flushInterval time.Duration
	delivery      string
	spoolDir      string
	spoolMax      int64
	maxSize       int64
	maxAge        time.Duration
	maxFiles      int
	fsync         string
	fsyncInterval time.Duration
	shutdownGrace time.Duration
	upload        *uploadSettings
	checkpoint    *checkpointSettings
}

type uploadSettings struct {
	url             *url.URL
	headers         map[string]string
	bearerTokenFile string
	batchSize       int
	maxBatchBytes   int
	maxDelay        time.Duration
	timeout         time.Duration
	bufferSize      int
	minBackoff      time.Duration
	maxBackoff      time.Duration
}

type checkpointSettings struct {
	keyFile string
	every   time.Duration
}

// Validate checks cfg; errors name the key under the decision_log section.
func (c *Config) Validate() error {
	_, err := c.parse()
	return err
}

// parse validates c, injects the defaults and returns the runtime settings.
// Every error names its key; all are reported.
func (c *Config) parse() (*settings, error) {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	s := &settings{output: c.Output, path: c.Path, queueSize: c.QueueSize, spoolDir: c.SpoolDir, maxFiles: c.MaxFiles}
	switch c.Output {
	case "", "stdout":
		s.output = "stdout"
		if c.Path != "" {
			add(errors.New("path: only valid with output: file"))
		}
	case "file":
		if c.Path == "" {
			add(errors.New("path: required with output: file"))
		}
	case "none":
		if c.Upload == nil {
			add(errors.New("output: none requires upload"))
		}
		if c.Path != "" {
			add(errors.New("path: only valid with output: file"))
		}
	default:
		add(fmt.Errorf("output: %q is not stdout, file or none", c.Output))
	}
	for i, m := range c.Mask {
		if _, err := parseMaskPath(m); err != nil {
			add(fmt.Errorf("mask[%d]: %w", i, err))
		}
	}
	if c.QueueSize < 0 {
		add(errors.New("queue_size: must not be negative"))
	} else if c.QueueSize == 0 {
		s.queueSize = 4096
	}
	s.flushInterval = positiveDuration("flush_interval", c.FlushInterval, 200*time.Millisecond, add)

	switch c.Delivery {
	case "", DeliveryBackpressure:
		s.delivery = DeliveryBackpressure
	case DeliveryBestEffort, DeliveryDurable:
		s.delivery = c.Delivery
	default:
		add(fmt.Errorf("delivery: %q is not backpressure, best_effort or durable", c.Delivery))
	}
	if s.delivery == DeliveryDurable && c.SpoolDir == "" {
		add(errors.New("spool_dir: required with delivery: durable"))
	}
	s.spoolMax = size("spool_max_size", c.SpoolMaxSize, 1<<30, add)
	if c.Output != "file" {
		for _, k := range []struct {
			key string
			set bool
		}{{"max_size", c.MaxSize != ""}, {"max_age", c.MaxAge != ""}, {"max_files", c.MaxFiles != 0}} {
			if k.set {
				add(fmt.Errorf("%s: rotation is only valid with output: file", k.key))
			}
		}
	}
	s.maxSize = size("max_size", c.MaxSize, 0, add)
	if c.MaxSize != "" && s.maxSize > 0 && s.maxSize < 4096 {
		add(fmt.Errorf("max_size: %q is below the minimum of 4096 bytes", c.MaxSize))
	}
	s.maxAge = positiveDuration("max_age", c.MaxAge, 0, add)
	if c.MaxFiles < 0 {
		add(errors.New("max_files: must not be negative"))
	}
	switch c.Fsync {
	case "":
		s.fsync = FsyncInterval
	case FsyncAlways, FsyncInterval, FsyncNever:
		s.fsync = c.Fsync
	default:
		add(fmt.Errorf("fsync: %q is not always, interval or never", c.Fsync))
	}
	s.fsyncInterval = positiveDuration("fsync_interval", c.FsyncInterval, time.Second, add)
	s.shutdownGrace = positiveDuration("shutdown_grace", c.ShutdownGrace, 10*time.Second, add)

	if u := c.Upload; u != nil {
		s.upload = u.parse(add)
	}
	if cp := c.Checkpoint; cp != nil {
		s.checkpoint = &checkpointSettings{keyFile: cp.SigningKeyFile}
		if cp.SigningKeyFile == "" {
			add(errors.New("checkpoint.signing_key_file: required"))
		}
		s.checkpoint.every = positiveDuration("checkpoint.every", cp.Every, time.Minute, add)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

func (u *UploadConfig) parse(add func(error)) *uploadSettings {
	s := &uploadSettings{headers: u.Headers, bearerTokenFile: u.BearerTokenFile, batchSize: u.BatchSize, bufferSize: u.BufferSize}
	switch pu, err := url.Parse(u.URL); {
	case u.URL == "":
		add(errors.New("upload.url: required"))
	case err != nil:
		add(fmt.Errorf("upload.url: %w", err))
	case pu.Scheme != "http" && pu.Scheme != "https":
		add(fmt.Errorf("upload.url: %q is not an http or https URL", u.URL))
	case pu.Host == "":
		add(fmt.Errorf("upload.url: %q has no host", u.URL))
	case pu.User != nil:
		add(errors.New("upload.url: credentials in the URL are not allowed (use bearer_token_file)"))
	default:
		s.url = pu
	}
	for k := range u.Headers {
		if k == "" || strings.ContainsAny(k, " \t\r\n:") {
			add(fmt.Errorf("upload.headers: %q is not a header name", k))
		}
		switch strings.ToLower(k) {
		case "content-type", "content-encoding", "content-length":
			add(fmt.Errorf("upload.headers: %s is set by the uploader", k))
		}
	}
	switch {
	case u.BatchSize < 0:
		add(errors.New("upload.batch_size: must not be negative"))
	case u.BatchSize == 0:
		s.batchSize = 500
	}
	switch {
	case u.BufferSize < 0:
		add(errors.New("upload.buffer_size: must not be negative"))
	case u.BufferSize == 0:
		s.bufferSize = 10000
	}
	s.maxBatchBytes = int(size("upload.max_batch_bytes", u.MaxBatchBytes, 4<<20, add))
	s.maxDelay = positiveDuration("upload.max_delay", u.MaxDelay, time.Second, add)
	s.timeout = positiveDuration("upload.timeout", u.Timeout, 10*time.Second, add)
	s.minBackoff = positiveDuration("upload.retry.min_backoff", u.Retry.MinBackoff, 100*time.Millisecond, add)
	s.maxBackoff = positiveDuration("upload.retry.max_backoff", u.Retry.MaxBackoff, 30*time.Second, add)
	if s.minBackoff > s.maxBackoff {
		add(fmt.Errorf("upload.retry.min_backoff: %v is above max_backoff %v", s.minBackoff, s.maxBackoff))
	}
	return s
}

func positiveDuration(key, v string, def time.Duration, add func(error)) time.Duration {
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		add(fmt.Errorf("%s: %q is not a positive duration", key, v))
		return def
	}
	return d
}

// size parses "512", "64KiB", "100MB", "1GiB" (binary and decimal units).
func size(key, v string, def int64, add func(error)) int64 {
	if v == "" {
		return def
	}
	n, err := parseSize(v)
	if err != nil {
		add(fmt.Errorf("%s: %w", key, err))
		return def
	}
	return n
}

func parseSize(v string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
	}
	num, mult := strings.TrimSpace(v), int64(1)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a positive size (bytes, or a number with KiB, MiB, GiB, KB, MB, GB)", v)
	}
	return n * mult, nil
}
