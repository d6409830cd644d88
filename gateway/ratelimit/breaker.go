package ratelimit

import (
	"sync"
	"sync/atomic"
	"time"
)

// breaker stops calling a failing backend. Closed, it lets every call
// through and counts consecutive failures; at threshold it opens and for
// openFor every call is refused at once (the caller applies its failure
// mode without paying the backend's timeout). After openFor one call is
// let through as a probe: success closes the breaker, failure opens it for
// another openFor. Recovery therefore needs no operator and costs at most
// one timed-out call per openFor while the backend stays down.
type breaker struct {
	threshold int64
	openFor   time.Duration
	now       func() time.Time

	// open is the fast path: while false, calls go through without the
	// mutex. It is written only with mu held.
	open     atomic.Bool
	failures atomic.Int64

	mu       sync.Mutex
	openedAt time.Time
	probing  bool
}

// ticket is what acquire hands out; the caller returns it with done.
type ticket uint8

const (
	ticketNone  ticket = iota // refused
	ticketCall                // normal call, breaker closed
	ticketProbe               // the one call allowed through an open breaker
)

// result of a call, as the breaker counts it.
type callResult uint8

const (
	callOK      callResult = iota
	callFailed             // the backend failed or timed out
	callAborted            // the caller gave up; says nothing about the backend
)

// transition is a state change the caller may log (outside any lock).
type transition uint8

const (
	noChange transition = iota
	opened
	closed
)

func newBreaker(threshold int, openFor time.Duration, now func() time.Time) *breaker {
	return &breaker{threshold: int64(threshold), openFor: openFor, now: now}
}

// acquire asks to call the backend. When refused, wait is how long until a
// probe will be let through.
func (b *breaker) acquire() (t ticket, wait time.Duration) {
	if !b.open.Load() {
		return ticketCall, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open.Load() {
		return ticketCall, 0
	}
	elapsed := b.now().Sub(b.openedAt)
	if elapsed >= b.openFor && !b.probing {
		b.probing = true
		return ticketProbe, 0
	}
	if wait = b.openFor - elapsed; wait < 0 {
		wait = 0 // a probe is in flight
	}
	return ticketNone, wait
}

// done reports how a call made with t ended.
func (b *breaker) done(t ticket, r callResult) transition {
	switch t {
	case ticketCall:
		switch r {
		case callOK:
			if b.failures.Load() != 0 {
				b.failures.Store(0)
			}
		case callFailed:
			if b.failures.Add(1) >= b.threshold {
				return b.trip()
			}
		}
		return noChange
	case ticketProbe:
		b.mu.Lock()
		defer b.mu.Unlock()
		b.probing = false
		switch r {
		case callOK:
			b.failures.Store(0)
			b.open.Store(false)
			return closed
		case callFailed:
			b.openedAt = b.now()
		}
	}
	return noChange
}

func (b *breaker) trip() transition {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open.Load() {
		return noChange
	}
	b.openedAt = b.now()
	b.open.Store(true)
	b.failures.Store(0)
	return opened
}

// isOpen reports whether calls are currently refused or probing.
func (b *breaker) isOpen() bool { return b.open.Load() }
