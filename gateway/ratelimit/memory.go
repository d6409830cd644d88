package ratelimit

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxKeys is the number of keys a Memory limiter holds when none is
// configured.
const DefaultMaxKeys = 100_000

// memShards is the number of independently locked partitions: enough that
// concurrent requests rarely contend, few enough that a small MaxKeys still
// leaves each shard room.
const memShards = 64

// Memory is the in-process GCRA limiter. Its memory is bounded: at most
// MaxKeys keys, kept per shard in least-recently-admitted order. A key
// whose budget is fully restored is dropped lazily (its state equals
// absence); when a shard is full the least recently admitted key is evicted,
// which gives that key a fresh budget, so evictions are counted and
// MaxKeys should exceed the number of keys active within one period.
//
// Time comes from the injected clock through its monotonic reading, so wall
// clock steps do not move budgets.
type Memory struct {
	shards    []memShard
	mask      uint64
	seed      maphash.Seed
	now       func() time.Time
	base      time.Time
	evictions atomic.Uint64
}

var _ Limiter = (*Memory)(nil)

type memKey struct {
	scope  string
	key    string
	limit  int64
	period time.Duration
}

type memEntry struct {
	k          memKey
	tat        int64 // theoretical arrival time, ns since Memory.base
	prev, next *memEntry
}

type memShard struct {
	mu         sync.Mutex
	m          map[memKey]*memEntry
	head, tail *memEntry // head: most recently admitted
	max        int
	_          [24]byte // one shard per cache line
}

// NewMemory returns a Memory limiter holding at most maxKeys keys (0 means
// DefaultMaxKeys). now is the clock; nil means time.Now.
func NewMemory(maxKeys int, now func() time.Time) *Memory {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	if now == nil {
		now = time.Now
	}
	n := memShards
	for n > 1 && maxKeys/n < 16 {
		n /= 2
	}
	m := &Memory{shards: make([]memShard, n), mask: uint64(n - 1), seed: maphash.MakeSeed(), now: now, base: now()}
	per := (maxKeys + n - 1) / n
	for i := range m.shards {
		m.shards[i].m = make(map[memKey]*memEntry)
		m.shards[i].max = per
	}
	return m
}

// memSlot is the per-limit working state of one Allow call.
type memSlot struct {
	k      memKey
	shard  int
	oldTAT int64 // the budget's state before this request
	newTAT int64
}

// Allow checks and spends limits under scope, all or nothing.
func (m *Memory) Allow(_ context.Context, scope string, limits []Limit) (Decision, error) {
	if len(limits) == 0 {
		return Decision{Allowed: true, Index: -1}, nil
	}
	if err := ValidateLimits(limits); err != nil {
		return Decision{}, err
	}
	var (
		slotBuf  [8]memSlot
		orderBuf [8]int
	)
	slots, order := slotBuf[:0], orderBuf[:0]
	if len(limits) > len(slotBuf) {
		slots, order = make([]memSlot, 0, len(limits)), make([]int, 0, len(limits))
	}
	for i := range limits {
		k := memKey{scope: scope, key: limits[i].Key, limit: limits[i].Limit, period: limits[i].Period}
		sh := int(maphash.Comparable(m.seed, k) & m.mask)
		slots = append(slots, memSlot{k: k, shard: sh})
		order = insertShard(order, sh)
	}
	// Shards are locked in ascending order, so two requests that share
	// shards can never wait on each other in a cycle.
	for _, sh := range order {
		m.shards[sh].mu.Lock()
	}
	now := int64(m.now().Sub(m.base))
	d := m.allowLocked(now, limits, slots)
	for i := len(order) - 1; i >= 0; i-- {
		m.shards[order[i]].mu.Unlock()
	}
	return d, nil
}

func (m *Memory) allowLocked(now int64, limits []Limit, slots []memSlot) Decision {
	d := Decision{Allowed: true, Index: -1, RetryAfter: -1}
	for i := range limits {
		l := &limits[i]
		tat := now
		if j := prevSame(slots, i); j >= 0 {
			slots[i].oldTAT = slots[j].oldTAT
			tat = slots[j].newTAT // the same budget twice: both costs count
		} else {
			if e := m.shards[slots[i].shard].m[slots[i].k]; e != nil && e.tat > now {
				tat = e.tat
			}
			slots[i].oldTAT = tat
		}
		t := int64(l.interval())
		newTAT := tat + l.Cost*t
		slots[i].newTAT = newTAT
		if allowAt := newTAT - l.Burst*t; allowAt > now {
			if retry := time.Duration(allowAt - now); retry > d.RetryAfter {
				d = Decision{Allowed: false, Index: i, RetryAfter: retry, ResetAfter: time.Duration(slots[i].oldTAT - now)}
			}
		}
	}
	if !d.Allowed {
		return d
	}
	d.RetryAfter = 0
	best := int64(-1)
	for i := range limits {
		l := &limits[i]
		final := slots[lastSame(slots, i)].newTAT
		if j := prevSame(slots, i); j < 0 {
			if m.shards[slots[i].shard].put(slots[i].k, final, now) {
				m.evictions.Add(1)
			}
		}
		t := int64(l.interval())
		remaining := (l.Burst*t - (final - now)) / t
		reset := time.Duration(final - now)
		if best < 0 || remaining < best || (remaining == best && reset > d.ResetAfter) {
			best, d.Index, d.Remaining, d.ResetAfter = remaining, i, remaining, reset
		}
	}
	return d
}

// Len returns the number of keys held.
func (m *Memory) Len() int {
	n := 0
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// Evictions returns the number of live keys evicted to stay within MaxKeys.
func (m *Memory) Evictions() uint64 { return m.evictions.Load() }

// put stores tat for k and marks it most recently admitted. It reports
// whether a key whose budget was still in use had to be evicted.
func (s *memShard) put(k memKey, tat, now int64) (evicted bool) {
	if e := s.m[k]; e != nil {
		e.tat = tat
		s.unlink(e)
		s.pushFront(e)
		return false
	}
	// Amortized cleanup: keys whose budget is fully restored are
	// equivalent to absent ones.
	for i := 0; i < 2 && s.tail != nil && s.tail.tat <= now; i++ {
		old := s.tail
		s.unlink(old)
		delete(s.m, old.k)
	}
	var e *memEntry
	if len(s.m) >= s.max && s.tail != nil {
		e = s.tail
		s.unlink(e)
		delete(s.m, e.k)
		evicted = e.tat > now
	} else {
		e = new(memEntry)
	}
	*e = memEntry{k: k, tat: tat}
	s.m[k] = e
	s.pushFront(e)
	return evicted
}

func (s *memShard) unlink(e *memEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		s.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		s.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (s *memShard) pushFront(e *memEntry) {
	e.next = s.head
	if s.head != nil {
		s.head.prev = e
	}
	s.head = e
	if s.tail == nil {
		s.tail = e
	}
}

// insertShard adds sh to the sorted set order.
func insertShard(order []int, sh int) []int {
	i := 0
	for i < len(order) && order[i] < sh {
		i++
	}
	if i < len(order) && order[i] == sh {
		return order
	}
	order = append(order, 0)
	copy(order[i+1:], order[i:])
	order[i] = sh
	return order
}

func prevSame(slots []memSlot, i int) int {
	for j := i - 1; j >= 0; j-- {
		if slots[j].k == slots[i].k {
			return j
		}
	}
	return -1
}

func lastSame(slots []memSlot, i int) int {
	last := i
	for j := i + 1; j < len(slots); j++ {
		if slots[j].k == slots[i].k {
			last = j
		}
	}
	return last
}
