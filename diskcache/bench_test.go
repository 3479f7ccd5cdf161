package diskcache

import (
	"fmt"
	"testing"
)

// BenchmarkOpen10k measures Open (rebuilding the index by listing the
// directories) of a cache holding 10,000 chunks.
func BenchmarkOpen10k(b *testing.B) {
	dir := b.TempDir()
	c, err := Open(dir, 1<<40, Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 4096)
	for i := range int64(10000) {
		c.Put(fmt.Sprint("blob", i%50), i, data)
	}
	c.Close()
	for b.Loop() {
		c, err := Open(dir, 1<<40, Options{Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		if c.Stats().Entries != 10000 {
			b.Fatal(c.Stats())
		}
		c.Close()
	}
}

// BenchmarkGet1M and BenchmarkPut1M: one 1 MiB chunk.
func BenchmarkGet1M(b *testing.B) {
	c, err := Open(b.TempDir(), 1<<30, Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.Put("k", 0, make([]byte, 1<<20))
	p := make([]byte, 1<<20)
	b.SetBytes(1 << 20)
	for b.Loop() {
		if _, ok := c.Get("k", 0, p); !ok {
			b.Fatal("miss")
		}
	}
}

func BenchmarkPut1M(b *testing.B) {
	c, err := Open(b.TempDir(), 64<<20, Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, 1<<20)
	b.SetBytes(1 << 20)
	i := int64(0)
	for b.Loop() {
		c.Put("k", i, data)
		i++
	}
}
