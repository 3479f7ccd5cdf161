package gzran

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"
)

// TestReadahead: reads that cross from one span into the next make the
// following spans decode into the cache in the background (and the reads
// that reach them hit); random reads do not trigger it; the bytes are right
// with and without span CRCs.
func TestReadahead(t *testing.T) {
	data := testData(8<<20, 7)
	gz := kGzip(t, data, 6)
	ix, err := Build(bytes.NewReader(gz), 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	if len(ix.Points) < 20 {
		t.Fatalf("%d points", len(ix.Points))
	}
	noCRC := *ix
	noCRC.SpanCRC = nil
	for _, c := range []struct {
		name string
		ix   *Index
	}{{"crc", ix}, {"nocrc", &noCRC}} {
		t.Run(c.name, func(t *testing.T) {
			r, err := NewReader(bytes.NewReader(gz), int64(len(gz)), c.ix, Options{Readahead: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64<<10)
			// sequential 64 KiB reads over the first 4 MiB
			for off := int64(0); off < 4<<20; off += int64(len(buf)) {
				n, err := r.ReadAt(buf, off)
				if err != nil || n != len(buf) || !bytes.Equal(buf, data[off:off+int64(n)]) {
					t.Fatalf("read at %d: %d, %v (or wrong bytes)", off, n, err)
				}
				// Let a readahead started by this read finish: a reader that
				// crosses into a span while one runs starts none, and on a
				// loaded machine that would make the count below vary.
				for i := 0; r.raBusy.Load(); i++ {
					if i > 5000 {
						t.Fatal("readahead goroutine does not finish")
					}
					time.Sleep(time.Millisecond)
				}
			}
			st := r.Stats()
			if st.Readaheads < 4 {
				t.Fatalf("sequential reads: %d readaheads, want several (%+v)", st.Readaheads, st)
			}
			if st.CacheHits == 0 {
				t.Fatalf("no cache hits after readahead: %+v", st)
			}
			// every byte still right, read backwards (no readahead then)
			for off := int64(len(data)) - int64(len(buf)); off >= 0; off -= int64(len(buf)) {
				n, err := r.ReadAt(buf, off)
				if err != nil || n != len(buf) || !bytes.Equal(buf, data[off:off+int64(n)]) {
					t.Fatalf("read at %d: %d, %v (or wrong bytes)", off, n, err)
				}
			}
		})
	}
	t.Run("random", func(t *testing.T) {
		r, err := NewReader(bytes.NewReader(gz), int64(len(gz)), ix, Options{Readahead: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 4096)
		spans := len(ix.Points)
		prev := -10
		for i := 0; i < 30; i++ {
			// a span never next to the previous one
			s := rng.IntN(spans - 1)
			for s == prev+1 || s == prev {
				s = rng.IntN(spans - 1)
			}
			prev = s
			off := ix.Points[s].Out + 100
			if _, err := r.ReadAt(buf, off); err != nil || !bytes.Equal(buf, data[off:off+4096]) {
				t.Fatalf("read at %d: %v (or wrong bytes)", off, err)
			}
		}
		if st := r.Stats(); st.Readaheads != 0 {
			t.Fatalf("random reads triggered %d readaheads", st.Readaheads)
		}
		// uniform random 4 KiB reads: rarely mistaken for a sequential reader
		for i := 0; i < 2000; i++ {
			off := rng.Int64N(int64(len(data)) - 4096)
			if _, err := r.ReadAt(buf, off); err != nil || !bytes.Equal(buf, data[off:off+4096]) {
				t.Fatalf("read at %d: %v (or wrong bytes)", off, err)
			}
		}
		if st := r.Stats(); st.Readaheads > 40 {
			t.Fatalf("2000 random reads triggered %d readaheads", st.Readaheads)
		}
	})
	t.Run("off", func(t *testing.T) {
		r, err := NewReader(bytes.NewReader(gz), int64(len(gz)), ix, Options{Readahead: -1})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64<<10)
		for off := int64(0); off < 2<<20; off += int64(len(buf)) {
			if _, err := r.ReadAt(buf, off); err != nil {
				t.Fatal(err)
			}
		}
		if st := r.Stats(); st.Readaheads != 0 {
			t.Fatalf("Readahead -1: %d readaheads", st.Readaheads)
		}
	})
}
