package gzran

import (
	"bytes"
	"math/rand"
	"testing"
)

// BenchmarkReadAt4K: random 4 KiB reads over a 32 MiB gzip (4 MiB spans),
// cold (cache off: every read decodes from its point) and warm.
func BenchmarkReadAt4K(b *testing.B) {
	data := testData(32<<20, 12)
	gz := kGzip(b, data, 6)
	ix, err := Build(bytes.NewReader(gz), DefaultSpan)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		opt  Options
		crc  bool
	}{
		{"cold", Options{CacheBytes: -1}, false},
		{"cold-spancrc", Options{CacheBytes: -1}, true},
		{"warm", Options{CacheBytes: 64 << 20}, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			x := *ix
			if !bc.crc {
				x.SpanCRC = nil
			}
			r, err := NewReader(bytes.NewReader(gz), int64(len(gz)), &x, bc.opt)
			if err != nil {
				b.Fatal(err)
			}
			p := make([]byte, 4096)
			if bc.name == "warm" {
				for off := int64(0); off < r.Size(); off += 1 << 20 {
					r.ReadAt(p, off)
				}
			}
			rng := rand.New(rand.NewSource(1))
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				off := rng.Int63n(r.Size()-4096) &^ 4095
				if _, err := r.ReadAt(p, off); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			st := r.Stats()
			b.ReportMetric(float64(st.BytesDecoded)/float64(b.N), "decoded-B/op")
		})
	}
}
