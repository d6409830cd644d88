package log

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// uploader POSTs batches of events to a collector speaking OPA's
// decision-log service API: the body is a gzip-compressed JSON array of
// event objects, with Content-Type: application/json and
// Content-Encoding: gzip; any 2xx status accepts the batch. Events are the
// chained lines byte for byte, so a collector that keeps them can verify
// the chain; checkpoints are not uploaded.
type uploader struct {
	url     string
	headers http.Header
	client  *http.Client
	timeout time.Duration
	m       *metrics
}

// errTooLarge is a 413 answer: the batch must be split.
var errTooLarge = errors.New("decision log: upload: batch too large (413)")

func newUploader(u *uploadSettings, client *http.Client, m *metrics) (*uploader, error) {
	up := &uploader{url: u.url.String(), headers: http.Header{}, client: client, timeout: u.timeout, m: m}
	for k, v := range u.headers {
		up.headers.Set(k, v)
	}
	if u.bearerTokenFile != "" {
		raw, err := os.ReadFile(u.bearerTokenFile)
		if err != nil {
			return nil, fmt.Errorf("upload.bearer_token_file: %w", err)
		}
		token := strings.TrimSpace(string(raw))
		if token == "" || strings.ContainsAny(token, "\r\n") {
			return nil, fmt.Errorf("upload.bearer_token_file: %s does not hold one token", u.bearerTokenFile)
		}
		up.headers.Set("Authorization", "Bearer "+token)
	}
	up.headers.Set("Content-Type", "application/json")
	up.headers.Set("Content-Encoding", "gzip")
	if up.headers.Get("User-Agent") == "" {
		up.headers.Set("User-Agent", "policygate-decision-log")
	}
	if up.client == nil {
		up.client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	return up, nil
}

// deliver uploads lines and returns how many were accepted. A batch the
// collector finds too large is split; a single event it refuses as too large
// is dropped and counted, since no retry can ever deliver it.
func (u *uploader) deliver(ctx context.Context, lines [][]byte) (int, error) {
	err := u.post(ctx, lines)
	if err == nil {
		return len(lines), nil
	}
	if !errors.Is(err, errTooLarge) {
		return 0, err
	}
	if len(lines) == 1 {
		u.m.dropped.WithLabelValues(reasonUploadRejected).Inc()
		return 1, nil
	}
	half := len(lines) / 2
	n, err := u.deliver(ctx, lines[:half])
	if err != nil || n < half {
		return n, err
	}
	m, err := u.deliver(ctx, lines[half:])
	return n + m, err
}

func (u *uploader) post(ctx context.Context, lines [][]byte) error {
	var body bytes.Buffer
	zw := gzip.NewWriter(&body)
	zw.Write([]byte{'['})
	for i, line := range lines {
		if i > 0 {
			zw.Write([]byte{','})
		}
		zw.Write(bytes.TrimSuffix(line, []byte{'\n'}))
	}
	zw.Write([]byte{']'})
	if err := zw.Close(); err != nil {
		return fmt.Errorf("decision log: upload: gzip: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.url, bytes.NewReader(body.Bytes()))
	if err != nil {
		return fmt.Errorf("decision log: upload: %w", err)
	}
	for k, vs := range u.headers {
		req.Header[k] = vs
	}
	resp, err := u.client.Do(req)
	if err != nil {
		u.m.uploadFailures.WithLabelValues("error").Inc()
		return fmt.Errorf("decision log: upload: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		u.m.uploadFailures.WithLabelValues(strconv.Itoa(resp.StatusCode)).Inc()
		if resp.StatusCode == http.StatusRequestEntityTooLarge {
			return errTooLarge
		}
		return fmt.Errorf("decision log: upload: %s answered %s", u.url, resp.Status)
	}
	u.m.uploads.Inc()
	return nil
}

// memFeed holds events for the uploader in memory when delivery is not
// durable. Only the log's writer goroutine sends on it and closes it.
type memFeed struct {
	ch chan []byte
}

func newMemFeed(size int) *memFeed { return &memFeed{ch: make(chan []byte, size)} }

// offer queues line without waiting; false when the feed is full.
func (f *memFeed) offer(line []byte) bool {
	select {
	case f.ch <- line:
		return true
	default:
		return false
	}
}

// put queues line, waiting for room until stop ends.
func (f *memFeed) put(stop context.Context, line []byte) bool {
	select {
	case f.ch <- line:
		return true
	default:
	}
	select {
	case f.ch <- line:
		return true
	case <-stop.Done():
		return false
	}
}

func (f *memFeed) close() { close(f.ch) }

// next returns up to maxLines queued lines, waiting up to wait for the
// first; io.EOF once the feed is closed and empty.
func (f *memFeed) next(ctx context.Context, maxLines, maxBytes int, wait time.Duration) ([][]byte, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var lines [][]byte
	select {
	case line, ok := <-f.ch:
		if !ok {
			return nil, io.EOF
		}
		lines = append(lines, line)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timer.C:
		return nil, nil
	}
	size := len(lines[0])
	for len(lines) < maxLines && size < maxBytes {
		select {
		case line, ok := <-f.ch:
			if !ok {
				return lines, nil
			}
			lines = append(lines, line)
			size += len(line)
		default:
			return lines, nil
		}
	}
	return lines, nil
}

func (f *memFeed) ack([]byte) {}

// remaining counts lines never handed to the uploader.
func (f *memFeed) remaining() int { return len(f.ch) }
