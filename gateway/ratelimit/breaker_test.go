package ratelimit

import (
	"sync"
	"testing"
	"time"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestBreaker(t *testing.T) {
	type op struct {
		advance    time.Duration
		wantTicket ticket
		wantWait   time.Duration
		result     callResult // reported when a ticket is granted
		wantTrans  transition
	}
	tests := []struct {
		name string
		ops  []op
	}{
		{
			name: "successes keep it closed and reset the count",
			ops: []op{
				{wantTicket: ticketCall, result: callFailed},
				{wantTicket: ticketCall, result: callFailed},
				{wantTicket: ticketCall, result: callOK},
				{wantTicket: ticketCall, result: callFailed},
				{wantTicket: ticketCall, result: callFailed},
				{wantTicket: ticketCall, result: callOK},
			},
		},
		{
			name: "threshold opens; open refuses until open_for; probe success closes",
			ops: []op{
				{wantTicket: ticketCall, result: callFailed},
				{wantTicket: ticketCall, result: callFailed},
				{wantTicket: ticketCall, result: callFailed, wantTrans: opened},
				{wantTicket: ticketNone, wantWait: time.Second},
				{advance: 400 * time.Millisecond, wantTicket: ticketNone, wantWait: 600 * time.Millisecond},
				{advance: 600 * time.Millisecond, wantTicket: ticketProbe, result: callOK, wantTrans: closed},
				{wantTicket: ticketCall, result: callOK},
			},
		},
		{
			name: "probe failure reopens for another open_for",
			ops: []op{
				{wantTicket: ticketCall, result: callFailed},
				{wantTicket: ticketCall, result: callFailed},
				{wantTicket: ticketCall, result: callFailed, wantTrans: opened},
				{advance: time.Second, wantTicket: ticketProbe, result: callFailed},
				{wantTicket: ticketNone, wantWait: time.Second},
				{advance: time.Second, wantTicket: ticketProbe, result: callOK, wantTrans: closed},
			},
		},
		{
			name: "an aborted probe lets the next caller probe",
			ops: []op{
				{wantTicket: ticketCall, result: callFailed},
				{wantTicket: ticketCall, result: callFailed},
				{wantTicket: ticketCall, result: callFailed, wantTrans: opened},
				{advance: time.Second, wantTicket: ticketProbe, result: callAborted},
				{wantTicket: ticketProbe, result: callOK, wantTrans: closed},
			},
		},
		{
			name: "aborted calls do not count as failures",
			ops: []op{
				{wantTicket: ticketCall, result: callFailed},
				{wantTicket: ticketCall, result: callFailed},
				{wantTicket: ticketCall, result: callAborted},
				{wantTicket: ticketCall, result: callAborted},
				{wantTicket: ticketCall, result: callOK},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &testClock{t: time.Unix(0, 0)}
			b := newBreaker(3, time.Second, clk.Now)
			for i, o := range tt.ops {
				clk.Advance(o.advance)
				tk, wait := b.acquire()
				if tk != o.wantTicket || wait != o.wantWait {
					t.Fatalf("op %d: acquire = %v, %v; want %v, %v", i, tk, wait, o.wantTicket, o.wantWait)
				}
				if tk == ticketNone {
					continue
				}
				if tr := b.done(tk, o.result); tr != o.wantTrans {
					t.Fatalf("op %d: done = %v, want %v", i, tr, o.wantTrans)
				}
			}
		})
	}
}

func TestBreakerOneProbeAtATime(t *testing.T) {
	clk := &testClock{t: time.Unix(0, 0)}
	b := newBreaker(1, time.Second, clk.Now)
	tk, _ := b.acquire()
	b.done(tk, callFailed)
	clk.Advance(time.Second)
	var wg sync.WaitGroup
	probes := make(chan ticket, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if tk, _ := b.acquire(); tk != ticketNone {
				probes <- tk
			}
		}()
	}
	wg.Wait()
	close(probes)
	n := 0
	for tk := range probes {
		if tk != ticketProbe {
			t.Errorf("granted %v while open", tk)
		}
		n++
	}
	if n != 1 {
		t.Errorf("%d probes granted at once, want 1", n)
	}
}
