// Package sampleapi is a small in-memory admin API for non-human identities:
// service accounts, their keys and role bindings, with an audit event stream.
// It is the backend that tests and demos put behind the gateway, modelled on
// the lifecycle real NHI admin APIs expose (create, suspend, reactivate,
// delete; mint, rotate with a grace period, revoke).
//
// Account ids follow the convention <team>.<name> (e.g. "payments.deployer"),
// where team is [a-z0-9][a-z0-9-]* and name is [a-z0-9][a-z0-9_-]*, each at
// most 63 characters. The id is the only place a gateway can read an
// account's team from, so the API refuses to create an account whose id and
// team disagree. policies/sampleapi relies on this convention.
//
// Besides the lifecycle, the API helps tests see what reached it: Requests
// counts every request, LastRequest names the last one, and
// /v1/debug/request reports the method, path and headers it received.
//
// It imports nothing from policygate.
//
// Concurrency: an API is safe for concurrent use. One mutex guards the store;
// no I/O happens while it is held.
package sampleapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure an API. The zero value is usable.
type Options struct {
	// Log receives one line per request. Nil discards.
	Log *slog.Logger
	// Now is the clock for timestamps and key expiry. Nil means time.Now.
	Now func() time.Time
	// RequireAuth, when set, is the exact Authorization header value every
	// request must carry; anything else is answered 401. It lets tests prove
	// that the gateway brokers the backend credential. Empty disables it.
	RequireAuth string
	// FollowLimit bounds how long GET /v1/events?follow=1 streams. Zero
	// means 60s.
	FollowLimit time.Duration
	// RotationGrace is how long a rotated key stays valid after rotation.
	// Zero means 5m.
	RotationGrace time.Duration
	// MaxEvents bounds the audit events kept in memory; the oldest are
	// dropped first. Zero means 10000.
	MaxEvents int
}

// Account statuses.
const (
	StatusActive    = "active"
	StatusSuspended = "suspended"
)

// Key statuses. A rotated key stays usable until its (shortened) expiry.
const (
	KeyActive  = "active"
	KeyRotated = "rotated"
	KeyExpired = "expired"
	KeyRevoked = "revoked"
)

// maxTTL bounds ttl_seconds, so that expiry arithmetic cannot overflow.
const maxTTL = 10 * 365 * 24 * 60 * 60

// maxBody bounds request bodies.
const maxBody = 1 << 20

// accountID is the <team>.<name> convention; the first group is the team.
var accountID = regexp.MustCompile(`^([a-z0-9][a-z0-9-]{0,62})\.[a-z0-9][a-z0-9_-]{0,62}$`)

// Account is a service account.
type Account struct {
	ID          string    `json:"id"`
	Team        string    `json:"team"`
	Owner       string    `json:"owner"`
	Description string    `json:"description,omitempty"`
	Status      string    `json:"status"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// NewAccount is the body of POST /v1/service-accounts.
type NewAccount struct {
	ID          string `json:"id"`
	Owner       string `json:"owner"`
	Team        string `json:"team"`
	Description string `json:"description"`
}

// Key is a credential of a service account. Secret is set only in the
// response that mints the key; it is never stored in a listing.
type Key struct {
	KeyID      string     `json:"key_id"`
	Account    string     `json:"account"`
	Status     string     `json:"status"`
	TTLSeconds int64      `json:"ttl_seconds,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	RotatedTo  string     `json:"rotated_to,omitempty"`
	Imported   bool       `json:"imported,omitempty"`
	Secret     string     `json:"secret,omitempty"`
}

// NewKey is the body of POST .../keys and, optionally, of .../rotate.
// TTLSeconds zero means the key never expires; on rotation it means "the
// lifetime of the key being rotated". Secret imports a caller-generated
// secret instead of minting one (creation only).
type NewKey struct {
	TTLSeconds int64  `json:"ttl_seconds"`
	Secret     string `json:"secret"`
}

// Binding grants an account a role on a resource.
type Binding struct {
	ID        string    `json:"id"`
	Account   string    `json:"account"`
	Role      string    `json:"role"`
	Resource  string    `json:"resource"`
	CreatedAt time.Time `json:"created_at"`
}

// NewBinding is the body of POST /v1/bindings.
type NewBinding struct {
	Account  string `json:"account"`
	Role     string `json:"role"`
	Resource string `json:"resource"`
}

// Event is one audit event; GET /v1/events streams them as NDJSON.
type Event struct {
	Seq       int64     `json:"seq"`
	Time      time.Time `json:"time"`
	Type      string    `json:"type"`
	Account   string    `json:"account,omitempty"`
	KeyID     string    `json:"key_id,omitempty"`
	BindingID string    `json:"binding_id,omitempty"`
	RequestID string    `json:"request_id,omitempty"`
}

// DebugRequest is what /v1/debug/request reports about the request it got.
type DebugRequest struct {
	Method          string              `json:"method"`
	Host            string              `json:"host"`
	RequestURI      string              `json:"request_uri"` // exactly as received
	Path            string              `json:"path"`        // decoded
	RawPath         string              `json:"raw_path"`    // set when the received path differs from the default encoding of Path
	Query           map[string][]string `json:"query"`
	RemoteAddr      string              `json:"remote_addr"`
	Authorization   string              `json:"authorization"`
	XForwardedFor   string              `json:"x_forwarded_for"`
	XForwardedHost  string              `json:"x_forwarded_host"`
	XForwardedProto string              `json:"x_forwarded_proto"`
	Headers         map[string][]string `json:"headers"`
	Body            string              `json:"body"`
}

// API is the sample admin API. Create it with New.
type API struct {
	log         *slog.Logger
	now         func() time.Time
	requireAuth []byte
	followLimit time.Duration
	grace       time.Duration
	maxEvents   int
	routes      []route

	requests atomic.Int64

	mu       sync.Mutex
	last     string
	accounts map[string]*Account
	keys     map[string]map[string]*Key // account id → key id → key
	bindings map[string]*Binding
	events   []Event
	seq      int64
	changed  chan struct{} // closed and replaced whenever an event is added
}

var _ http.Handler = (*API)(nil)

// New returns an empty API.
func New(opts Options) *API {
	a := &API{
		log:         opts.Log,
		now:         opts.Now,
		followLimit: opts.FollowLimit,
		grace:       opts.RotationGrace,
		maxEvents:   opts.MaxEvents,
		accounts:    make(map[string]*Account),
		keys:        make(map[string]map[string]*Key),
		bindings:    make(map[string]*Binding),
		changed:     make(chan struct{}),
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.now == nil {
		a.now = time.Now
	}
	if opts.RequireAuth != "" {
		a.requireAuth = []byte(opts.RequireAuth)
	}
	if a.followLimit <= 0 {
		a.followLimit = 60 * time.Second
	}
	if a.grace <= 0 {
		a.grace = 5 * time.Minute
	}
	if a.maxEvents <= 0 {
		a.maxEvents = 10000
	}
	a.routes = []route{
		{"GET", "/healthz", a.healthz},
		{"GET", "/v1/service-accounts", a.listAccounts},
		{"POST", "/v1/service-accounts", a.createAccount},
		{"GET", "/v1/service-accounts/{}", a.getAccount},
		{"DELETE", "/v1/service-accounts/{}", a.deleteAccount},
		{"POST", "/v1/service-accounts/{}/suspend", a.setStatus(StatusSuspended)},
		{"POST", "/v1/service-accounts/{}/reactivate", a.setStatus(StatusActive)},
		{"GET", "/v1/service-accounts/{}/keys", a.listKeys},
		{"POST", "/v1/service-accounts/{}/keys", a.createKey},
		{"POST", "/v1/service-accounts/{}/keys/{}/rotate", a.rotateKey},
		{"DELETE", "/v1/service-accounts/{}/keys/{}", a.revokeKey},
		{"GET", "/v1/bindings", a.listBindings},
		{"POST", "/v1/bindings", a.createBinding},
		{"DELETE", "/v1/bindings/{}", a.deleteBinding},
		{"GET", "/v1/events", a.streamEvents},
		{"*", "/v1/debug/request", a.debugRequest},
	}
	return a
}

// Requests is the number of requests the API has received, rejected ones
// included.
func (a *API) Requests() int64 { return a.requests.Load() }

// LastRequest is the method and path, as received, of the last request, e.g.
// "PUT /v1/service-accounts/payments.deployer/suspend"; "" before the first.
func (a *API) LastRequest() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

// ServeHTTP serves the API.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := a.requests.Add(1)
	last := r.Method + " " + receivedPath(r)
	a.mu.Lock()
	a.last = last
	a.mu.Unlock()

	// Echo the caller's request id when there is one, so that a test can
	// match the gateway's id with what the backend saw.
	reqID := r.Header.Get("X-Request-Id")
	if reqID == "" {
		reqID = "sample-" + strconv.FormatInt(n, 10)
	}
	w.Header().Set("X-Sample-Request-Id", reqID)
	r = r.WithContext(withRequestID(r.Context(), reqID))

	sw := &statusWriter{ResponseWriter: w}
	start := time.Now()
	if a.requireAuth != nil && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), a.requireAuth) != 1 {
		sw.Header().Set("WWW-Authenticate", `Bearer realm="sampleapi"`)
		writeError(sw, http.StatusUnauthorized, "unauthenticated", "missing or wrong Authorization")
	} else {
		a.route(sw, r)
	}
	a.log.LogAttrs(r.Context(), slog.LevelInfo, "request",
		slog.String("id", reqID),
		slog.String("method", r.Method),
		slog.String("path", receivedPath(r)),
		slog.Int("status", sw.status()),
		slog.Duration("duration", time.Since(start)))
}

// CreateAccount creates an account as POST /v1/service-accounts does; main
// uses it to seed demo data.
func (a *API) CreateAccount(in NewAccount) (Account, error) {
	return a.createAccountFor(in, "")
}

// CreateBinding creates a binding as POST /v1/bindings does.
func (a *API) CreateBinding(in NewBinding) (Binding, error) {
	return a.createBindingFor(in, "")
}

// route dispatches on the received path, split into segments and each
// segment decoded, so "/v1/service-accounts/a%2Fb" names the account "a/b"
// (which then fails validation) rather than a deeper path.
func (a *API) route(w http.ResponseWriter, r *http.Request) {
	segs, ok := splitPath(r.URL.EscapedPath())
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint")
		return
	}
	var allowed []string
	for _, rt := range a.routes {
		params, ok := rt.match(segs)
		if !ok {
			continue
		}
		if rt.method != "*" && rt.method != r.Method {
			allowed = append(allowed, rt.method)
			continue
		}
		rt.handle(w, r, params)
		return
	}
	if len(allowed) > 0 {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "method not allowed")
		return
	}
	writeError(w, http.StatusNotFound, "not_found", "no such endpoint")
}

func (a *API) healthz(w http.ResponseWriter, _ *http.Request, _ []string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, "ok\n")
}

func (a *API) listAccounts(w http.ResponseWriter, r *http.Request, _ []string) {
	team := r.URL.Query().Get("team")
	a.mu.Lock()
	items := make([]Account, 0, len(a.accounts))
	for _, acc := range a.accounts {
		if team == "" || acc.Team == team {
			items = append(items, *acc)
		}
	}
	a.mu.Unlock()
	slices.SortFunc(items, func(x, y Account) int { return strings.Compare(x.ID, y.ID) })
	writeJSON(w, http.StatusOK, map[string]any{"items": items})
}

func (a *API) createAccount(w http.ResponseWriter, r *http.Request, _ []string) {
	var in NewAccount
	if err := decodeBody(r, &in, true); err != nil {
		writeErr(w, err)
		return
	}
	acc, err := a.createAccountFor(in, requestID(r.Context()))
	if err != nil {
		writeErr(w, err)
		return
	}
	w.Header().Set("Location", "/v1/service-accounts/"+url.PathEscape(acc.ID))
	writeJSON(w, http.StatusCreated, acc)
}

func (a *API) createAccountFor(in NewAccount, reqID string) (Account, error) {
	m := accountID.FindStringSubmatch(in.ID)
	switch {
	case in.ID == "" || in.Team == "" || in.Owner == "":
		return Account{}, invalid("id, team and owner are required")
	case m == nil:
		return Account{}, invalid("id must be <team>.<name>: lowercase letters, digits and '-' ('_' in the name)")
	case m[1] != in.Team:
		return Account{}, invalid(fmt.Sprintf("id %q does not belong to team %q", in.ID, in.Team))
	}
	now := a.now().UTC()
	acc := &Account{
		ID:          in.ID,
		Team:        in.Team,
		Owner:       in.Owner,
		Description: in.Description,
		Status:      StatusActive,
		CreatedAt:   now,
		UpdatedAt:   now,
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.accounts[acc.ID]; ok {
		return Account{}, &apiError{http.StatusConflict, "exists", fmt.Sprintf("service account %q exists", acc.ID)}
	}
	a.accounts[acc.ID] = acc
	a.keys[acc.ID] = make(map[string]*Key)
	a.emitLocked(Event{Type: "account.created", Account: acc.ID, RequestID: reqID})
	return *acc, nil
}

func (a *API) getAccount(w http.ResponseWriter, _ *http.Request, p []string) {
	a.mu.Lock()
	acc, err := a.accountLocked(p[0])
	var out Account
	if err == nil {
		out = *acc
	}
	a.mu.Unlock()
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) setStatus(status string) handler {
	event := map[string]string{StatusActive: "account.reactivated", StatusSuspended: "account.suspended"}[status]
	return func(w http.ResponseWriter, r *http.Request, p []string) {
		a.mu.Lock()
		acc, err := a.accountLocked(p[0])
		var out Account
		if err == nil {
			if acc.Status != status {
				acc.Status = status
				acc.UpdatedAt = a.now().UTC()
				a.emitLocked(Event{Type: event, Account: acc.ID, RequestID: requestID(r.Context())})
			}
			out = *acc
		}
		a.mu.Unlock()
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// deleteAccount removes the account, revoking its keys and dropping its
// bindings first, each with its own event.
func (a *API) deleteAccount(w http.ResponseWriter, r *http.Request, p []string) {
	reqID := requestID(r.Context())
	a.mu.Lock()
	acc, err := a.accountLocked(p[0])
	if err == nil {
		now := a.now().UTC()
		for _, k := range sortedKeys(a.keys[acc.ID]) {
			if k.RevokedAt == nil {
				k.RevokedAt = &now
				a.emitLocked(Event{Type: "key.revoked", Account: acc.ID, KeyID: k.KeyID, RequestID: reqID})
			}
		}
		for _, b := range a.sortedBindingsLocked(acc.ID) {
			delete(a.bindings, b.ID)
			a.emitLocked(Event{Type: "binding.deleted", Account: acc.ID, BindingID: b.ID, RequestID: reqID})
		}
		delete(a.keys, acc.ID)
		delete(a.accounts, acc.ID)
		a.emitLocked(Event{Type: "account.deleted", Account: acc.ID, RequestID: reqID})
	}
	a.mu.Unlock()
	if err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) listKeys(w http.ResponseWriter, _ *http.Request, p []string) {
	a.mu.Lock()
	acc, err := a.accountLocked(p[0])
	var items []Key
	if err == nil {
		now := a.now()
		for _, k := range sortedKeys(a.keys[acc.ID]) {
			items = append(items, k.view(now))
		}
	}
	a.mu.Unlock()
	if err != nil {
		writeErr(w, err)
		return
	}
	if items == nil {
		items = []Key{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": items})
}

func (a *API) createKey(w http.ResponseWriter, r *http.Request, p []string) {
	var in NewKey
	if err := decodeBody(r, &in, false); err != nil {
		writeErr(w, err)
		return
	}
	if err := checkTTL(in.TTLSeconds); err != nil {
		writeErr(w, err)
		return
	}
	imported := in.Secret != ""
	if imported && len(in.Secret) < 16 {
		writeErr(w, invalid("an imported secret must be at least 16 characters"))
		return
	}
	keyID, secret, err := newCredential()
	if err != nil {
		writeErr(w, err)
		return
	}
	a.mu.Lock()
	acc, err := a.accountLocked(p[0])
	var out Key
	if err == nil {
		err = activeLocked(acc)
	}
	if err == nil {
		k := a.addKeyLocked(acc.ID, keyID, in.TTLSeconds, imported)
		a.emitLocked(Event{Type: "key.created", Account: acc.ID, KeyID: k.KeyID, RequestID: requestID(r.Context())})
		out = k.view(a.now())
	}
	a.mu.Unlock()
	if err != nil {
		writeErr(w, err)
		return
	}
	if !imported {
		out.Secret = secret // shown once, never stored
	}
	writeJSON(w, http.StatusCreated, out)
}

// rotateKey mints a successor and lets the old key live for the grace period
// only, so clients can switch without an outage.
func (a *API) rotateKey(w http.ResponseWriter, r *http.Request, p []string) {
	var in NewKey
	if err := decodeBody(r, &in, false); err != nil {
		writeErr(w, err)
		return
	}
	if err := checkTTL(in.TTLSeconds); err != nil {
		writeErr(w, err)
		return
	}
	if in.Secret != "" {
		writeErr(w, invalid("rotation mints its own secret"))
		return
	}
	keyID, secret, err := newCredential()
	if err != nil {
		writeErr(w, err)
		return
	}
	a.mu.Lock()
	var out Key
	acc, err := a.accountLocked(p[0])
	var old *Key
	if err == nil {
		err = activeLocked(acc)
	}
	if err == nil {
		old, err = a.keyLocked(acc.ID, p[1])
	}
	now := a.now().UTC()
	if err == nil && old.view(now).Status != KeyActive {
		err = &apiError{http.StatusConflict, "key_not_active", fmt.Sprintf("key %q is %s", old.KeyID, old.view(now).Status)}
	}
	if err == nil {
		ttl := in.TTLSeconds
		if ttl == 0 {
			ttl = old.TTLSeconds
		}
		k := a.addKeyLocked(acc.ID, keyID, ttl, false)
		graceEnd := now.Add(a.grace)
		if old.ExpiresAt == nil || old.ExpiresAt.After(graceEnd) {
			old.ExpiresAt = &graceEnd
		}
		old.RotatedTo = k.KeyID
		a.emitLocked(Event{Type: "key.rotated", Account: acc.ID, KeyID: old.KeyID, RequestID: requestID(r.Context())})
		a.emitLocked(Event{Type: "key.created", Account: acc.ID, KeyID: k.KeyID, RequestID: requestID(r.Context())})
		out = k.view(now)
	}
	a.mu.Unlock()
	if err != nil {
		writeErr(w, err)
		return
	}
	out.Secret = secret
	writeJSON(w, http.StatusCreated, out)
}

func (a *API) revokeKey(w http.ResponseWriter, r *http.Request, p []string) {
	a.mu.Lock()
	_, err := a.accountLocked(p[0])
	var k *Key
	if err == nil {
		k, err = a.keyLocked(p[0], p[1])
	}
	if err == nil && k.RevokedAt == nil {
		now := a.now().UTC()
		k.RevokedAt = &now
		a.emitLocked(Event{Type: "key.revoked", Account: p[0], KeyID: k.KeyID, RequestID: requestID(r.Context())})
	}
	a.mu.Unlock()
	if err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) listBindings(w http.ResponseWriter, r *http.Request, _ []string) {
	a.mu.Lock()
	items := a.sortedBindingsLocked(r.URL.Query().Get("account"))
	out := make([]Binding, len(items))
	for i, b := range items {
		out[i] = *b
	}
	a.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"items": out})
}

func (a *API) createBinding(w http.ResponseWriter, r *http.Request, _ []string) {
	var in NewBinding
	if err := decodeBody(r, &in, true); err != nil {
		writeErr(w, err)
		return
	}
	b, err := a.createBindingFor(in, requestID(r.Context()))
	if err != nil {
		writeErr(w, err)
		return
	}
	w.Header().Set("Location", "/v1/bindings/"+url.PathEscape(b.ID))
	writeJSON(w, http.StatusCreated, b)
}

func (a *API) createBindingFor(in NewBinding, reqID string) (Binding, error) {
	if in.Account == "" || in.Role == "" || in.Resource == "" {
		return Binding{}, invalid("account, role and resource are required")
	}
	id, err := randomHex("bnd-", 8)
	if err != nil {
		return Binding{}, err
	}
	b := &Binding{ID: id, Account: in.Account, Role: in.Role, Resource: in.Resource, CreatedAt: a.now().UTC()}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.accounts[in.Account]; !ok {
		return Binding{}, invalid(fmt.Sprintf("unknown service account %q", in.Account))
	}
	a.bindings[b.ID] = b
	a.emitLocked(Event{Type: "binding.created", Account: b.Account, BindingID: b.ID, RequestID: reqID})
	return *b, nil
}

func (a *API) deleteBinding(w http.ResponseWriter, r *http.Request, p []string) {
	a.mu.Lock()
	b, ok := a.bindings[p[0]]
	if ok {
		delete(a.bindings, b.ID)
		a.emitLocked(Event{Type: "binding.deleted", Account: b.Account, BindingID: b.ID, RequestID: requestID(r.Context())})
	}
	a.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("binding %q not found", p[0]))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// streamEvents writes the audit events as NDJSON, flushing after each batch.
// ?since=<seq> skips events up to seq. With ?follow=1 it keeps streaming new
// events until the client leaves or FollowLimit passes; without, it ends
// after the events it has.
func (a *API) streamEvents(w http.ResponseWriter, r *http.Request, _ []string) {
	q := r.URL.Query()
	var since int64
	if s := q.Get("since"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "invalid", "since must be a non-negative integer")
			return
		}
		since = n
	}
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)

	var deadline <-chan time.Time
	if follow {
		t := time.NewTimer(a.followLimit)
		defer t.Stop()
		deadline = t.C
	}
	for {
		a.mu.Lock()
		var batch []Event
		for _, e := range a.events {
			if e.Seq > since {
				batch = append(batch, e)
			}
		}
		changed := a.changed
		a.mu.Unlock()

		for _, e := range batch {
			if err := enc.Encode(e); err != nil {
				return // the client went away
			}
			since = e.Seq
		}
		// Flush even an empty batch, so a follower sees the stream open.
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return
		}
		if !follow {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (a *API) debugRequest(w http.ResponseWriter, r *http.Request, _ []string) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", "body too large")
		return
	}
	headers := make(map[string][]string, len(r.Header))
	for k, v := range r.Header {
		headers[k] = v
	}
	writeJSON(w, http.StatusOK, DebugRequest{
		Method:          r.Method,
		Host:            r.Host,
		RequestURI:      r.RequestURI,
		Path:            r.URL.Path,
		RawPath:         r.URL.RawPath,
		Query:           r.URL.Query(),
		RemoteAddr:      r.RemoteAddr,
		Authorization:   r.Header.Get("Authorization"),
		XForwardedFor:   r.Header.Get("X-Forwarded-For"),
		XForwardedHost:  r.Header.Get("X-Forwarded-Host"),
		XForwardedProto: r.Header.Get("X-Forwarded-Proto"),
		Headers:         headers,
		Body:            string(body),
	})
}

// Store helpers; the caller holds a.mu.

func (a *API) accountLocked(id string) (*Account, error) {
	acc, ok := a.accounts[id]
	if !ok {
		return nil, &apiError{http.StatusNotFound, "not_found", fmt.Sprintf("service account %q not found", id)}
	}
	return acc, nil
}

func (a *API) keyLocked(account, keyID string) (*Key, error) {
	k, ok := a.keys[account][keyID]
	if !ok {
		return nil, &apiError{http.StatusNotFound, "not_found", fmt.Sprintf("key %q not found", keyID)}
	}
	return k, nil
}

func activeLocked(acc *Account) error {
	if acc.Status != StatusActive {
		return &apiError{http.StatusConflict, "account_suspended", fmt.Sprintf("service account %q is %s", acc.ID, acc.Status)}
	}
	return nil
}

func (a *API) addKeyLocked(account, keyID string, ttl int64, imported bool) *Key {
	now := a.now().UTC()
	k := &Key{KeyID: keyID, Account: account, TTLSeconds: ttl, CreatedAt: now, Imported: imported}
	if ttl > 0 {
		exp := now.Add(time.Duration(ttl) * time.Second)
		k.ExpiresAt = &exp
	}
	a.keys[account][keyID] = k
	return k
}

func (a *API) sortedBindingsLocked(account string) []*Binding {
	var out []*Binding
	for _, b := range a.bindings {
		if account == "" || b.Account == account {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(x, y *Binding) int {
		if c := x.CreatedAt.Compare(y.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(x.ID, y.ID)
	})
	return out
}

// emitLocked appends an event, drops the oldest beyond MaxEvents and wakes
// the followers.
func (a *API) emitLocked(e Event) {
	a.seq++
	e.Seq = a.seq
	e.Time = a.now().UTC()
	a.events = append(a.events, e)
	if over := len(a.events) - a.maxEvents; over > 0 {
		a.events = slices.Delete(a.events, 0, over)
	}
	close(a.changed)
	a.changed = make(chan struct{})
}

func sortedKeys(m map[string]*Key) []*Key {
	out := make([]*Key, 0, len(m))
	for _, k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(x, y *Key) int {
		if c := x.CreatedAt.Compare(y.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(x.KeyID, y.KeyID)
	})
	return out
}

// view is the key as listed at time now: a copy, with its status computed
// and no secret.
func (k *Key) view(now time.Time) Key {
	v := *k
	v.Secret = ""
	switch {
	case k.RevokedAt != nil:
		v.Status = KeyRevoked
	case k.ExpiresAt != nil && !now.Before(*k.ExpiresAt):
		v.Status = KeyExpired
	case k.RotatedTo != "":
		v.Status = KeyRotated
	default:
		v.Status = KeyActive
	}
	return v
}

func checkTTL(ttl int64) error {
	if ttl < 0 || ttl > maxTTL {
		return invalid(fmt.Sprintf("ttl_seconds must be between 0 (no expiry) and %d", maxTTL))
	}
	return nil
}

func newCredential() (keyID, secret string, err error) {
	if keyID, err = randomHex("key-", 8); err != nil {
		return "", "", err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("sampleapi: mint secret: %w", err)
	}
	return keyID, "sk_" + base64.RawURLEncoding.EncodeToString(b), nil
}

func randomHex(prefix string, n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("sampleapi: random id: %w", err)
	}
	return prefix + hex.EncodeToString(b), nil
}

// Routing.

type handler func(w http.ResponseWriter, r *http.Request, params []string)

type route struct {
	method  string // "*" for any
	pattern string // "{}" matches one segment
	handle  handler
}

// match reports whether segs fits the pattern, returning the decoded
// segments that filled its "{}" holes.
func (rt route) match(segs []string) ([]string, bool) {
	pat := strings.Split(strings.TrimPrefix(rt.pattern, "/"), "/")
	if len(pat) != len(segs) {
		return nil, false
	}
	var params []string
	for i, p := range pat {
		switch {
		case p == "{}":
			params = append(params, segs[i])
		case p != segs[i]:
			return nil, false
		}
	}
	return params, true
}

// splitPath splits an escaped path into decoded segments. Empty segments
// ("//", a trailing "/") and undecodable ones match no route.
func splitPath(escaped string) ([]string, bool) {
	if !strings.HasPrefix(escaped, "/") {
		return nil, false
	}
	parts := strings.Split(escaped[1:], "/")
	for i, p := range parts {
		s, err := url.PathUnescape(p)
		if err != nil || s == "" {
			return nil, false
		}
		parts[i] = s
	}
	return parts, true
}

// receivedPath is the path exactly as the client sent it.
func receivedPath(r *http.Request) string {
	if p, _, _ := strings.Cut(r.RequestURI, "?"); strings.HasPrefix(p, "/") {
		return p
	}
	return r.URL.EscapedPath()
}

type requestIDKey struct{}

func withRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

func requestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// Bodies and errors.

// decodeBody decodes a JSON object into the struct v strictly, so that the
// API never reads a body differently from the policy that allowed it:
// non-JSON content types, unknown or differently cased keys, duplicate keys
// and trailing data are all refused. (encoding/json alone would match "ID"
// to the id field and keep the last of two "id" keys, while the policy reads
// the first exact one.) An empty body is accepted when required is false.
func decodeBody(r *http.Request, v any, required bool) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return invalid("unreadable body")
	}
	if len(body) > maxBody {
		return &apiError{http.StatusRequestEntityTooLarge, "too_large", "body too large"}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if required {
			return invalid("a JSON body is required")
		}
		return nil
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		return &apiError{http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type must be application/json"}
	}
	if err := checkKeys(body, jsonFields(v)); err != nil {
		return invalid("bad JSON: " + err.Error())
	}
	if err := json.Unmarshal(body, v); err != nil {
		return invalid("bad JSON: " + err.Error())
	}
	return nil
}

// checkKeys verifies that body is exactly one JSON object whose keys are
// unique and each one of fields, compared case-sensitively.
func checkKeys(body []byte, fields map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return errors.New("want an object")
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key := tok.(string) // object keys are always strings
		if !fields[key] {
			return fmt.Errorf("unknown field %q", key)
		}
		if seen[key] {
			return fmt.Errorf("duplicate field %q", key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data")
	}
	return nil
}

// jsonFields are the JSON names of the fields of the struct v points to.
func jsonFields(v any) map[string]bool {
	t := reflect.TypeOf(v).Elem()
	fields := make(map[string]bool, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			fields[name] = true
		}
	}
	return fields
}

type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func invalid(msg string) error { return &apiError{http.StatusBadRequest, "invalid", msg} }

func writeErr(w http.ResponseWriter, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		writeError(w, ae.status, ae.code, ae.message)
		return
	}
	writeError(w, http.StatusInternalServerError, "internal", "internal error")
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"error": code, "message": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal","message":"internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// statusWriter records the status for the request log. Unwrap keeps
// http.ResponseController (and so flushing) working through it.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusWriter) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}
