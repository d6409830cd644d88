package bundles

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// longPollContentType is how a bundle server says it supports long polling
// (OPA's bundle protocol).
const longPollContentType = "application/vnd.openpolicyagent.bundles"

// minRetryDelay is the first delay after a failure; it doubles per
// consecutive failure up to the source's max delay.
const minRetryDelay = 100 * time.Millisecond

// httpSource polls one bundle URL. Its state is owned by its goroutine.
type httpSource struct {
	s      *spec
	m      *Manager
	client *http.Client
	// etag is the ETag of the bundle currently served: a download that
	// fails to read, verify or activate never replaces it, so the server's
	// 304 always means "you already serve the current bundle".
	etag string
	// digest of the bundle currently served: a server that ignores
	// If-None-Match sends it again, which must not recompile and
	// re-activate the same content.
	digest string
	// longPoll is true once the server advertised long polling.
	longPoll bool
}

func newHTTPSource(s *spec, m *Manager, etag, digest string) *httpSource {
	var t *http.Transport
	if m.base != nil {
		t = m.base.Clone()
	} else {
		t = http.DefaultTransport.(*http.Transport).Clone()
	}
	if s.tls != nil {
		t.TLSClientConfig = s.tls.Clone()
	}
	t.MaxResponseHeaderBytes = 64 << 10
	// Long polls hold the request open; the per-request context bounds it.
	t.ResponseHeaderTimeout = 0
	return &httpSource{s: s, m: m, etag: etag, digest: digest, client: &http.Client{Transport: t}}
}

func (h *httpSource) run(ctx context.Context) {
	defer h.client.CloseIdleConnections()
	retry := 0
	for {
		err := h.poll(ctx)
		if ctx.Err() != nil {
			return
		}
		var delay time.Duration
		switch {
		case err != nil:
			delay = backoff(retry, h.s.maxDelay)
			retry++
		case h.longPoll && h.s.longPoll > 0:
			retry = 0 // the server holds the next request until there is news
		default:
			retry = 0
			delay = h.s.minDelay
			if span := h.s.maxDelay - h.s.minDelay; span > 0 {
				delay += rand.N(span)
			}
		}
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

// backoff is the delay after retry+1 consecutive failures: exponential from
// minRetryDelay, capped at max, with ±10% jitter.
func backoff(retry int, max time.Duration) time.Duration {
	d := minRetryDelay
	for i := 0; i < retry && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	jitter := time.Duration(float64(d) * 0.1 * (2*rand.Float64() - 1))
	return d + jitter
}

// poll makes one request and offers a new bundle to the manager. Failures
// are recorded by the manager and returned.
func (h *httpSource) poll(ctx context.Context) error {
	longPoll := h.longPoll && h.s.longPoll > 0
	timeout := h.s.timeout
	if longPoll {
		timeout += h.s.longPoll
	}
	reqCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, h.s.url.String(), nil)
	if err != nil {
		h.m.fail(h.s.name, stageDownload, err)
		return err
	}
	req.Header.Set("User-Agent", h.m.agent)
	req.Header.Set("Accept", longPollContentType+", application/gzip, application/octet-stream")
	if h.etag != "" {
		req.Header.Set("If-None-Match", h.etag)
	}
	prefer := "modes=snapshot"
	if longPoll {
		prefer += ";wait=" + strconv.FormatInt(int64(h.s.longPoll/time.Second), 10)
	}
	req.Header.Set("Prefer", prefer)
	if h.s.token != "" {
		tok, err := readToken(h.s.token)
		if err != nil {
			err = fmt.Errorf("bearer token: %w", err)
			h.m.fail(h.s.name, stageDownload, err)
			return err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}

	h.m.requested(h.s.name)
	resp, err := h.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return err // stopping: not the server's failure
		}
		if reqCtx.Err() != nil {
			err = fmt.Errorf("no answer within %s: %w", timeout, err)
		}
		h.m.fail(h.s.name, stageDownload, err)
		return err
	}
	defer resp.Body.Close()

	switch resp.StatusCode {
	case http.StatusNotModified:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		h.m.notModified(h.s.name)
		return nil
	case http.StatusOK:
		h.longPoll = resp.Header.Get("Content-Type") == longPollContentType
	default:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		err := fmt.Errorf("server answered %s", resp.Status)
		h.m.fail(h.s.name, stageDownload, err)
		return err
	}
	raw, err := readBody(resp, h.s.maxSize)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		h.m.fail(h.s.name, stageDownload, err)
		return err
	}
	at := h.m.now()
	etag := resp.Header.Get("ETag")
	b, err := readTarball(raw, h.s.maxSize, h.s.verify.config(), etag)
	var digest string
	if err == nil {
		digest, err = Digest(b)
	}
	if err != nil {
		h.m.fail(h.s.name, stageRead, err)
		return err
	}
	h.m.downloaded(h.s.name, at)
	if digest == h.digest {
		h.etag = etag
		h.m.unchanged(h.s.name, etag)
		return nil
	}
	c := &candidate{b: b, digest: digest, raw: raw, etag: etag, downloadedAt: at}
	if err := h.m.offer(ctx, h.s.name, c); err != nil {
		return err
	}
	h.etag, h.digest = etag, digest
	return nil
}

// readBody reads at most max bytes of the response, refusing a larger
// one before reading it when Content-Length says so.
func readBody(resp *http.Response, max int64) ([]byte, error) {
	if resp.ContentLength > max {
		return nil, fmt.Errorf("bundle of %d bytes exceeds max_size %d", resp.ContentLength, max)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if int64(len(raw)) > max {
		return nil, fmt.Errorf("bundle exceeds max_size %d", max)
	}
	if len(raw) == 0 {
		return nil, errors.New("empty body")
	}
	return raw, nil
}
