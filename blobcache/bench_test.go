package blobcache

import (
	"math/rand"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/cache"
)

// BenchmarkReader is the whole cached read path for 128 KiB reads of a
// memory-backed input (so the backend costs one memcpy, like a page-cached
// file): miss = a sequential scan over 4x the cache (every page misses and
// evicts one), hit = the same 8 MiB over and over; direct = the backend
// read alone, for comparison.
func BenchmarkReader(b *testing.B) {
	const size, capacity, req = 64 << 20, 16 << 20, 128 << 10
	data := randBytes(rand.New(rand.NewSource(1)), size)
	run := func(b *testing.B, span int64, cached bool) {
		be, _ := backend("m", data)
		r := NewShared(cache.New(capacity, PageSize)).NewReader(ReaderConfig{Backend: be, FileID: "m", BlobID: "m"})
		if cached {
			r.Enable()
		}
		p := make([]byte, req)
		b.SetBytes(req)
		b.ReportAllocs()
		off := int64(0)
		for b.Loop() {
			if _, err := r.ReadAt(p, off); err != nil {
				b.Fatal(err)
			}
			off = (off + req) % span
		}
	}
	// rand4k: 4 KiB reads at random pages of an input 4x the cache (a
	// quarter hit, the rest miss and evict), on parallel goroutines.
	b.Run("rand4k", func(b *testing.B) {
		be, _ := backend("m", data)
		r := NewShared(cache.New(capacity, PageSize)).NewReader(ReaderConfig{Backend: be, FileID: "m", BlobID: "m"})
		r.Enable()
		b.SetBytes(PageSize)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			rng := rand.New(rand.NewSource(rand.Int63()))
			p := make([]byte, PageSize)
			for pb.Next() {
				if _, err := r.ReadAt(p, rng.Int63n(size/PageSize)*PageSize); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("direct", func(b *testing.B) { run(b, size, false) })
	b.Run("miss", func(b *testing.B) { run(b, size, true) })
	b.Run("hit", func(b *testing.B) { run(b, 8<<20, true) })
}
