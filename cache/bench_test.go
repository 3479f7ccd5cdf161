package cache

import "testing"

// BenchmarkMissInsert is the cold path at steady state: every lookup
// misses, the leader Completes, and each insert evicts (keys cycle over
// 4x the capacity, so the ghost FIFO is exercised too).
func BenchmarkMissInsert(b *testing.B) {
	const pages = 4096
	c := New(pages*4096/4, 4096)
	page := make([]byte, 4096)
	vals := [][]byte{page}
	reqs := make([]Req, 1)
	b.ReportAllocs()
	b.SetBytes(4096)
	for i := 0; b.Loop(); i++ {
		reqs[0] = Req{Key: Key{ID: 1, Index: uint64(i % pages)}, Dst: page}
		c.Acquire(reqs)
		if reqs[0].State == Lead {
			c.Complete(reqs[0].Flight, vals, 0)
		}
	}
}

// BenchmarkHitSerial is one hit on one goroutine, copying the page out
// (BenchmarkHit runs them in parallel and so also measures the read
// lock's cache-line traffic).
func BenchmarkHitSerial(b *testing.B) {
	c := New(64<<20, 4096)
	page := make([]byte, 4096)
	for i := 0; i < 1024; i++ {
		fill(b, c, Key{ID: 1, Index: uint64(i)}, page)
	}
	dst := make([]byte, 4096)
	b.ReportAllocs()
	b.SetBytes(4096)
	for i := 0; b.Loop(); i++ {
		c.Get(Key{ID: 1, Index: uint64(i & 1023)}, dst)
	}
}

// BenchmarkRun is a 128 KiB read (32 pages) as blobcache does it: one
// batch lookup; on a miss the run is one Flight completed at once.
// miss: keys never repeat (cold scan through a full cache, every insert
// evicts); hit: the same 32 pages each time.
func BenchmarkRun(b *testing.B) {
	const run = 32
	buf := make([]byte, run*4096)
	vals := make([][]byte, run)
	for i := range vals {
		vals[i] = buf[i*4096 : (i+1)*4096]
	}
	reqs := make([]Req, run)
	lookup := func(c *Cache, base uint64) {
		for i := range reqs {
			reqs[i] = Req{Key: Key{ID: 1, Index: base + uint64(i)}, Dst: vals[i]}
		}
		c.Acquire(reqs)
		if reqs[0].State == Lead {
			c.Complete(reqs[0].Flight, vals, 0)
		}
	}
	b.Run("miss", func(b *testing.B) {
		c := New(16<<20, 4096)
		b.ReportAllocs()
		b.SetBytes(run * 4096)
		for i := 0; b.Loop(); i++ {
			lookup(c, uint64(i)*run)
		}
	})
	b.Run("hit", func(b *testing.B) {
		c := New(16<<20, 4096)
		lookup(c, 0)
		b.ReportAllocs()
		b.SetBytes(run * 4096)
		for b.Loop() {
			lookup(c, 0)
		}
	})
}
