package cache_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/policygate/policygate/decision/cache"
)

// clock is a hand-driven clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newCache(t *testing.T, size int) (*cache.Cache[string, int], *clock) {
	t.Helper()
	clk := &clock{now: time.Unix(1_900_000_000, 0)}
	c, err := cache.New[string, int](cache.Config{Size: size}, cache.Options{Now: clk.Now})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, clk
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		size    int
		wantErr bool
	}{
		{size: 0}, {size: 1}, {size: 10000}, {size: cache.MaxSize},
		{size: -1, wantErr: true}, {size: cache.MaxSize + 1, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.size), func(t *testing.T) {
			err := cache.Config{Size: tt.size}.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate(%d) = %v, want error %v", tt.size, err, tt.wantErr)
			}
		})
	}
}

func TestNewRefusesZeroSize(t *testing.T) {
	if _, err := cache.New[string, int](cache.Config{}, cache.Options{}); err == nil {
		t.Fatal("New with size 0 succeeded; size 0 means no cache")
	}
}

func TestGetAddExpire(t *testing.T) {
	c, clk := newCache(t, 10)
	if _, ok := c.Get("a"); ok {
		t.Fatal("empty cache returned a value")
	}
	c.Add("a", 1, 10*time.Second)
	c.Add("zero", 2, 0)
	c.Add("negative", 3, -time.Second)
	if v, ok := c.Get("a"); !ok || v != 1 {
		t.Fatalf("Get(a) = %d, %v; want 1, true", v, ok)
	}
	for _, k := range []string{"zero", "negative"} {
		if _, ok := c.Get(k); ok {
			t.Errorf("Get(%s) found an entry added with a ttl <= 0", k)
		}
	}
	clk.Advance(10*time.Second - time.Nanosecond)
	if _, ok := c.Get("a"); !ok {
		t.Fatal("entry expired before its ttl")
	}
	clk.Advance(time.Nanosecond)
	if _, ok := c.Get("a"); ok {
		t.Fatal("entry served at its expiry instant")
	}
	if got := c.Expirations(); got != 1 {
		t.Errorf("Expirations = %d, want 1", got)
	}
	if got := c.Len(); got != 0 {
		t.Errorf("Len = %d after the only entry expired, want 0", got)
	}
}

func TestAddReplacesAndRefreshesTTL(t *testing.T) {
	c, clk := newCache(t, 10)
	c.Add("a", 1, time.Second)
	clk.Advance(900 * time.Millisecond)
	c.Add("a", 2, time.Second)
	clk.Advance(900 * time.Millisecond)
	if v, ok := c.Get("a"); !ok || v != 2 {
		t.Fatalf("Get(a) = %d, %v; want the replacement 2, true", v, ok)
	}
}

func TestEvictsLeastRecentlyUsed(t *testing.T) {
	c, _ := newCache(t, 2)
	c.Add("a", 1, time.Minute)
	c.Add("b", 2, time.Minute)
	c.Get("a") // b is now the least recently used
	c.Add("c", 3, time.Minute)
	if _, ok := c.Get("b"); ok {
		t.Error("b survived; the least recently used entry should have been evicted")
	}
	for _, k := range []string{"a", "c"} {
		if _, ok := c.Get(k); !ok {
			t.Errorf("%s was evicted", k)
		}
	}
	if got := c.Evictions(); got != 1 {
		t.Errorf("Evictions = %d, want 1", got)
	}
	if got := c.Len(); got != 2 {
		t.Errorf("Len = %d, want 2", got)
	}
}

func TestConcurrentUse(t *testing.T) {
	c, clk := newCache(t, 64)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				k := fmt.Sprint((g*1000 + i) % 100)
				c.Add(k, i, time.Second)
				c.Get(k)
				if i%100 == 0 {
					clk.Advance(time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	if n := c.Len(); n > 64 {
		t.Fatalf("Len = %d exceeds the size bound 64", n)
	}
}

func BenchmarkGetHit(b *testing.B) {
	c, err := cache.New[[32]byte, int](cache.Config{Size: 10000}, cache.Options{})
	if err != nil {
		b.Fatal(err)
	}
	var k [32]byte
	c.Add(k, 1, time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := c.Get(k); !ok {
			b.Fatal("miss")
		}
	}
}
