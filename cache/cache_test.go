package cache

import (
	"bytes"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

func fill(t *testing.T, c *Cache, k Key, v []byte) {
	t.Helper()
	_, _, ok, f, leader := c.Acquire(k)
	if ok || !leader {
		t.Fatalf("key %v: want a leader miss, got ok=%v leader=%v", k, ok, leader)
	}
	c.Complete(k, f, v, 7)
}

func TestHitMissOrigin(t *testing.T) {
	c := New(1<<20, 4096)
	k := Key{ID: 1, Index: 2}
	fill(t, c, k, []byte("hello"))
	v, o, ok, _, _ := c.Acquire(k)
	if !ok || string(v) != "hello" || o != 7 {
		t.Fatalf("got %q %d %v", v, o, ok)
	}
	if _, _, ok := c.Get(Key{ID: 1, Index: 3}); ok {
		t.Fatal("hit on an absent key")
	}
	s := c.Stats()
	if s.Hits != 1 || s.Misses != 1 || s.ResidentBytes != 5 || s.Entries != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestBound(t *testing.T) {
	c := New(64<<10, 4096)
	page := make([]byte, 4096)
	for i := 0; i < 1000; i++ {
		fill(t, c, Key{ID: 9, Index: uint64(i)}, page)
		if s := c.Stats(); s.ResidentBytes > 64<<10 {
			t.Fatalf("resident %d > capacity after %d inserts", s.ResidentBytes, i)
		}
	}
	s := c.Stats()
	if s.Evictions != 1000-16 || s.Entries != 16 {
		t.Fatalf("stats %+v", s)
	}
}

func TestZeroCapacityStoresNothing(t *testing.T) {
	c := New(0, 4096)
	k := Key{ID: 1}
	fill(t, c, k, []byte("x"))
	if _, _, ok := c.Get(k); ok {
		t.Fatal("zero-capacity cache kept a value")
	}
}

// A hot set that is hit repeatedly survives a long one-pass scan.
func TestScanResistance(t *testing.T) {
	const pages = 100
	c := New(pages*4096, 4096)
	page := make([]byte, 4096)
	hot := 50
	for round := 0; round < 3; round++ {
		for i := 0; i < hot; i++ {
			k := Key{ID: 1, Index: uint64(i)}
			if _, _, ok := c.Get(k); !ok {
				fill(t, c, k, page)
			}
		}
	}
	for i := 0; i < 10*pages; i++ { // scan 10x the capacity, each page once
		fill(t, c, Key{ID: 2, Index: uint64(i)}, page)
	}
	kept := 0
	for i := 0; i < hot; i++ {
		if _, _, ok := c.Get(Key{ID: 1, Index: uint64(i)}); ok {
			kept++
		}
	}
	if kept < hot*9/10 {
		t.Fatalf("only %d of %d hot pages survived the scan", kept, hot)
	}
}

// Many goroutines missing on one key fetch it once.
func TestSingleflight(t *testing.T) {
	c := New(1<<20, 4096)
	k := Key{ID: 5, Index: 5}
	var fetches atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			v, _, ok, f, leader := c.Acquire(k)
			switch {
			case ok:
			case leader:
				fetches.Add(1)
				v = bytes.Repeat([]byte{1}, 4096)
				c.Complete(k, f, v, 1)
			default:
				var err error
				if v, _, err = f.Wait(); err != nil {
					t.Error(err)
				}
			}
			if len(v) != 4096 || v[0] != 1 {
				t.Errorf("bad value len %d", len(v))
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
}

func TestFailReleasesWaiters(t *testing.T) {
	c := New(1<<20, 4096)
	k := Key{ID: 1}
	_, _, _, f, leader := c.Acquire(k)
	if !leader {
		t.Fatal("want leader")
	}
	_, _, _, f2, leader2 := c.Acquire(k)
	if leader2 || f2 != f {
		t.Fatal("second acquire should wait on the first flight")
	}
	boom := errors.New("boom")
	c.Fail(k, f, boom)
	if _, _, err := f2.Wait(); !errors.Is(err, boom) {
		t.Fatalf("err %v", err)
	}
	if _, _, _, _, leader := c.Acquire(k); !leader {
		t.Fatal("after a failure the next caller leads a new fetch")
	}
}

func BenchmarkHit(b *testing.B) {
	c := New(64<<20, 4096)
	page := make([]byte, 4096)
	for i := 0; i < 1024; i++ {
		_, _, _, f, _ := c.Acquire(Key{ID: 1, Index: uint64(i)})
		c.Complete(Key{ID: 1, Index: uint64(i)}, f, page, 0)
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			c.Get(Key{ID: 1, Index: uint64(i & 1023)})
			i++
		}
	})
}
