// Package bundles distributes policy as OPA bundles. It reads each bundle
// from a directory or a .tar.gz file (both watched, reloaded after a quiet
// period) or from an HTTP(S) bundle server speaking OPA's bundle protocol
// (ETag and If-None-Match, polling with jitter, optional long polling,
// bearer or mTLS credentials, a size limit); verifies signatures with OPA's
// bundle package; keeps the last good tarball of each remote bundle on disk;
// and hands the complete set of current bundles to an Activator whenever
// one of them changes. A bundle that fails to download, verify or activate
// never replaces the last good one; status and metrics say what happened.
//
// It must not import decision internals (decision/rego, decision/log),
// gateway or xds. Of OPA it uses the bundle package only (format,
// signatures): compiling is the Activator's job.
//
// Concurrency: Run starts one goroutine per source and serializes
// activations in its own loop, so the Activator is never called
// concurrently and never under a Manager lock. Status and Ready are safe for
// concurrent use. A bundle handed to the Activator is never modified
// afterwards. Close stops Run and waits for its goroutines.
package bundles

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/prometheus/client_golang/prometheus"
)

// Activator compiles a complete set of bundles (name → bundle, one per
// configured source) and, only if that succeeds, makes it the serving
// policy. It returns the revision it serves for each bundle. On error the
// previous policy must keep serving.
type Activator interface {
	Activate(ctx context.Context, set map[string]*bundle.Bundle) (revisions map[string]string, err error)
}

// Options are a Manager's dependencies.
type Options struct {
	// BaseDir resolves relative paths in the Config. Empty: the working
	// directory.
	BaseDir string
	// Log receives activations and failures. Nil discards.
	Log *slog.Logger
	// Registerer receives the bundle metrics. Nil registers nothing.
	Registerer prometheus.Registerer
	// Now is the clock for status times. Nil means time.Now.
	Now func() time.Time
	// UserAgent is sent to bundle servers. Empty means "policygate".
	UserAgent string
	// Transport, when set, is the base of every HTTP source's transport
	// (cloned; the source's TLS settings are applied on top).
	Transport *http.Transport
}

// Status is what the Manager knows about one bundle.
type Status struct {
	Name string `json:"name"`
	// Type is url, file or dir; Source the URL or path.
	Type   string `json:"type"`
	Source string `json:"source"`
	// Revision is the revision being served; empty before the first
	// activation that included this bundle.
	Revision string `json:"revision,omitempty"`
	// ETag of the bundle being served (URL only).
	ETag string `json:"etag,omitempty"`
	// Persisted is true while the served revision is the copy read from
	// the persistence directory at start, not yet confirmed by the server.
	Persisted bool `json:"persisted,omitempty"`
	// Pending is true when a bundle was downloaded but waits for the other
	// bundles before the first activation.
	Pending bool `json:"pending,omitempty"`

	LastRequest           *time.Time `json:"last_request,omitempty"`
	LastSuccessfulRequest *time.Time `json:"last_successful_request,omitempty"`
	LastDownload          *time.Time `json:"last_successful_download,omitempty"`
	LastActivation        *time.Time `json:"last_successful_activation,omitempty"`
	// Error is the failure of the latest attempt; empty once an attempt
	// succeeds. LastError and LastErrorAt keep the most recent failure.
	Error       string     `json:"error,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
}

// candidate is one read and verified revision of a bundle.
type candidate struct {
	b            *bundle.Bundle
	digest       string
	raw          []byte // the tarball as downloaded (URL only), persisted once active
	etag         string
	downloadedAt time.Time
	fromDisk     bool
	// manifestRev is the revision the manifest named, before any digest
	// suffix was added.
	manifestRev string
}

type offer struct {
	name  string
	c     *candidate
	reply chan error
}

// Manager runs the bundle sources and activates their bundles.
type Manager struct {
	specs   []*spec
	act     Activator
	store   *store
	log     *slog.Logger
	metrics *metrics
	now     func() time.Time
	agent   string
	base    *http.Transport
	offers  chan *offer

	mu      sync.Mutex
	status  map[string]*Status
	ready   bool
	started bool
	closed  bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// New validates cfg and returns a Manager that activates through act. It
// does not start anything: call Run. Every configuration error names its key.
func New(cfg Config, act Activator, opts Options) (*Manager, error) {
	specs, err := cfg.parse(opts.BaseDir)
	if err != nil {
		return nil, err
	}
	if len(specs) == 0 {
		return nil, errors.New("bundles: no bundle configured")
	}
	if act == nil {
		return nil, errors.New("bundles: no activator")
	}
	met, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("bundles: metrics: %w", err)
	}
	m := &Manager{
		specs:   specs,
		act:     act,
		log:     opts.Log,
		metrics: met,
		now:     opts.Now,
		agent:   opts.UserAgent,
		base:    opts.Transport,
		offers:  make(chan *offer),
		status:  make(map[string]*Status, len(specs)),
		done:    make(chan struct{}),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.agent == "" {
		m.agent = "policygate"
	}
	if cfg.PersistenceDir != "" {
		m.store = &store{dir: resolve(opts.BaseDir, cfg.PersistenceDir)}
	}
	for _, s := range specs {
		m.status[s.name] = &Status{Name: s.name, Type: s.kind.String(), Source: s.location}
	}
	return m, nil
}

// Run loads the persisted bundles, starts every source and activates the
// set each time a bundle changes, until ctx ends or Close is called. The
// first activation happens once every source has a bundle. Run returns nil
// when stopped; it may be called once.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.started {
		m.mu.Unlock()
		return errors.New("bundles: Run called twice")
	}
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.started = true
	ctx, cancel := context.WithCancel(ctx)
	m.cancel = cancel
	m.mu.Unlock()
	defer close(m.done)
	defer cancel()

	current := map[string]*candidate{} // owned by this loop
	m.restore(ctx, current)

	var wg sync.WaitGroup
	for _, s := range m.specs {
		var etag, digest string
		if c := current[s.name]; c != nil {
			etag, digest = c.etag, c.digest
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch s.kind {
			case kindHTTP:
				newHTTPSource(s, m, etag, digest).run(ctx)
			default:
				(&localSource{s: s, m: m}).run(ctx)
			}
		}()
	}
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case o := <-m.offers:
			o.reply <- m.activate(ctx, current, o.name, o.c)
		}
	}
}

// Close stops Run and waits for it to return; a Run that starts after
// Close returns at once. It is safe to call more than once and
// concurrently.
func (m *Manager) Close() error {
	m.mu.Lock()
	cancel, started := m.cancel, m.started
	m.closed = true
	m.mu.Unlock()
	if !started {
		return nil
	}
	cancel()
	<-m.done
	return nil
}

// Ready reports whether a set of bundles has been activated.
func (m *Manager) Ready() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ready
}

// Status returns every bundle's status, in configuration order.
func (m *Manager) Status() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.specs))
	for _, s := range m.specs {
		out = append(out, *m.status[s.name])
	}
	return out
}

// LoadLocal reads and verifies every file and directory source once, as Run
// would, without activating anything: `policygate check` uses it to verify
// signatures offline. remote names the URL sources, which it cannot check.
func (m *Manager) LoadLocal() (set map[string]*bundle.Bundle, remote []string, err error) {
	set = map[string]*bundle.Bundle{}
	var errs []error
	for _, s := range m.specs {
		if s.kind == kindHTTP {
			remote = append(remote, s.name)
			continue
		}
		b, err := (&localSource{s: s, m: m}).read()
		if err != nil {
			errs = append(errs, fmt.Errorf("bundle %q (%s): %w", s.name, s.location, err))
			continue
		}
		set[s.name] = b
	}
	return set, remote, errors.Join(errs...)
}

// offer hands c to the activation loop and waits for the outcome: nil when
// c is now the bundle's current revision (active, or waiting for the other
// bundles before the first activation).
func (m *Manager) offer(ctx context.Context, name string, c *candidate) error {
	o := &offer{name: name, c: c, reply: make(chan error, 1)}
	select {
	case m.offers <- o:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-o.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// activate runs in Run's loop only.
func (m *Manager) activate(ctx context.Context, current map[string]*candidate, name string, c *candidate) error {
	c.manifestRev = c.b.Manifest.Revision
	if prev := current[name]; prev != nil && prev.digest != c.digest && c.manifestRev != "" &&
		c.manifestRev == prev.manifestRev {
		// Caches and logs key on the revision: new content must never
		// reuse the revision of other content.
		m.log.Warn("bundle content changed but its manifest revision did not; suffixing the revision with the content digest",
			"bundle", name, "revision", c.b.Manifest.Revision)
		c.b.Manifest.Revision += "+" + shortDigest(c.digest)
	}
	set := make(map[string]*bundle.Bundle, len(m.specs))
	for n, cc := range current {
		set[n] = cc.b
	}
	set[name] = c.b
	if len(set) < len(m.specs) {
		current[name] = c
		m.update(name, func(st *Status) { st.Pending, st.Error = true, "" })
		m.log.Info("bundle loaded; waiting for the other bundles before the first activation", "bundle", name)
		return nil
	}
	revs, err := m.act.Activate(ctx, set)
	if err != nil {
		m.metrics.activations.WithLabelValues(name, resultError).Inc()
		m.fail(name, stageActivate, err)
		return fmt.Errorf("bundles: activate %q: %w", name, err)
	}
	now := m.now()
	current[name] = c
	m.metrics.activations.WithLabelValues(name, resultOK).Inc()
	// Bundles activated for the first time by this call (the one offered,
	// and those that waited for it) get an activation time.
	changed := map[string]bool{name: true}
	m.mu.Lock()
	m.ready = true
	for n, cc := range current {
		st := m.status[n]
		if n == name || st.Pending || st.Revision == "" {
			changed[n] = true
			st.LastActivation = &now
			st.Error = ""
			st.Persisted = cc.fromDisk
			st.ETag = cc.etag
		}
		st.Revision = revs[n]
		st.Pending = false
	}
	m.mu.Unlock()
	for n := range changed {
		m.metrics.lastActivation.WithLabelValues(n).Set(float64(now.UnixNano()) / 1e9)
	}
	m.log.Info("bundles activated", "trigger", name, "revisions", revs)
	if m.store != nil && c.raw != nil && !c.fromDisk {
		err := m.store.save(name, c.raw, persisted{URL: m.spec(name).location, ETag: c.etag, Revision: c.b.Manifest.Revision, Digest: c.digest, DownloadedAt: c.downloadedAt})
		if err != nil {
			// The bundle serves; only a restart without the server would
			// miss it.
			m.metrics.failures.WithLabelValues(name, stagePersist).Inc()
			m.log.Error("bundle not persisted", "bundle", name, "err", err)
			m.update(name, func(st *Status) { st.LastError, st.LastErrorAt = err.Error(), &now })
		}
	}
	return nil
}

// restore reads the persisted bundles into current and activates them when
// they complete the set. A persisted set that does not activate is
// dropped: the sources then download afresh.
func (m *Manager) restore(ctx context.Context, current map[string]*candidate) {
	if m.store == nil {
		return
	}
	for _, s := range m.specs {
		if s.kind != kindHTTP {
			continue
		}
		raw, meta, err := m.store.load(s.name)
		if isNotExist(err) {
			continue
		}
		if err == nil && meta.URL != s.location {
			m.log.Info("persisted bundle ignored: it came from another URL", "bundle", s.name, "persisted_url", meta.URL)
			continue
		}
		var b *bundle.Bundle
		if err == nil {
			b, err = readTarball(raw, s.maxSize, s.verify.config(), meta.ETag)
		}
		var digest string
		if err == nil {
			digest, err = Digest(b)
		}
		if err != nil {
			m.fail(s.name, stageLoad, fmt.Errorf("persisted bundle: %w", err))
			continue
		}
		etag := meta.ETag
		if meta.Digest != digest {
			etag = "" // the metadata belongs to another tarball
		}
		current[s.name] = &candidate{b: b, digest: digest, raw: raw, etag: etag, downloadedAt: meta.DownloadedAt, fromDisk: true}
		m.update(s.name, func(st *Status) {
			st.Persisted = true
			if !meta.DownloadedAt.IsZero() {
				t := meta.DownloadedAt
				st.LastDownload = &t
			}
		})
		m.log.Info("persisted bundle loaded", "bundle", s.name, "revision", b.Manifest.Revision)
	}
	if len(current) < len(m.specs) {
		return
	}
	names := make([]string, 0, len(current))
	for n := range current {
		names = append(names, n)
	}
	// Activate through the loop's own path, one call for the whole set.
	restored := maps.Clone(current)
	clear(current)
	last := names[len(names)-1]
	for _, n := range names[:len(names)-1] {
		current[n] = restored[n]
	}
	if err := m.activate(ctx, current, last, restored[last]); err != nil {
		m.log.Error("persisted bundles did not activate; downloading afresh", "err", err)
		clear(current)
		m.mu.Lock()
		for _, n := range names {
			m.status[n].Persisted = false
		}
		m.mu.Unlock()
	}
}

func (m *Manager) spec(name string) *spec {
	for _, s := range m.specs {
		if s.name == name {
			return s
		}
	}
	return nil
}

func (m *Manager) update(name string, f func(*Status)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f(m.status[name])
}

// fail records a failure at stage; the last good revision keeps serving.
func (m *Manager) fail(name, stage string, err error) {
	now := m.now()
	m.metrics.failures.WithLabelValues(name, stage).Inc()
	if stage == stageDownload || stage == stageRead {
		m.metrics.downloads.WithLabelValues(name, resultError).Inc()
	}
	m.log.Warn("bundle update failed; the last good revision keeps serving", "bundle", name, "stage", stage, "err", err)
	m.update(name, func(st *Status) {
		msg := stage + ": " + err.Error()
		st.Error, st.LastError, st.LastErrorAt = msg, msg, &now
	})
}

// requested records that a download was attempted.
func (m *Manager) requested(name string) {
	now := m.now()
	m.update(name, func(st *Status) { st.LastRequest = &now })
}

// notModified records a 304: the server has nothing newer.
func (m *Manager) notModified(name string) {
	now := m.now()
	m.metrics.downloads.WithLabelValues(name, resultNotModified).Inc()
	m.update(name, func(st *Status) {
		st.LastSuccessfulRequest = &now
		st.Persisted = false // the server confirmed the copy we serve
		st.Error = ""
	})
}

// unchanged records a download of the content already served (a server
// that ignores If-None-Match, or a new ETag for the same bundle).
func (m *Manager) unchanged(name, etag string) {
	m.update(name, func(st *Status) {
		st.ETag, st.Persisted, st.Error = etag, false, ""
	})
}

// downloaded records a bundle read and verified (before activation).
func (m *Manager) downloaded(name string, at time.Time) {
	m.metrics.downloads.WithLabelValues(name, resultOK).Inc()
	m.metrics.lastDownload.WithLabelValues(name).Set(float64(at.UnixNano()) / 1e9)
	m.update(name, func(st *Status) { st.LastSuccessfulRequest, st.LastDownload = &at, &at })
}

func shortDigest(d string) string {
	const prefix = "sha256:"
	if len(d) > len(prefix)+12 {
		return d[len(prefix) : len(prefix)+12]
	}
	return d
}
