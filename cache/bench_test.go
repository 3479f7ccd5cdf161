package cache

import "testing"

// BenchmarkMissInsert is the cold path at steady state: every Acquire
// misses, the leader Completes, and each insert evicts (keys cycle over
// 4x the capacity, so the ghost FIFO is exercised too).
func BenchmarkMissInsert(b *testing.B) {
	const pages = 4096
	c := New(pages*4096/4, 4096)
	page := make([]byte, 4096)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		k := Key{ID: 1, Index: uint64(i % pages)}
		_, _, ok, f, leader := c.Acquire(k)
		if !ok && leader {
			c.Complete(k, f, page, 0)
		}
	}
}

// BenchmarkHitSerial is one hit on one goroutine (BenchmarkHit runs them
// in parallel and so also measures the read lock's cache-line traffic).
func BenchmarkHitSerial(b *testing.B) {
	c := New(64<<20, 4096)
	page := make([]byte, 4096)
	for i := 0; i < 1024; i++ {
		k := Key{ID: 1, Index: uint64(i)}
		_, _, _, f, _ := c.Acquire(k)
		c.Complete(k, f, page, 0)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.Get(Key{ID: 1, Index: uint64(i & 1023)})
	}
}
