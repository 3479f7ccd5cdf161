package source

import (
	"bytes"
	"compress/gzip"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/gzran"
)

// TestGzipSpill: random reads that keep decoding (no span cache here) make
// a gzip: source decode the blob whole into a file once, and every byte
// read before, during and after that is right.
func TestGzipSpill(t *testing.T) {
	data := make([]byte, 3<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.IntN(16)) + 'a'
	}
	var z bytes.Buffer
	w := gzip.NewWriter(&z)
	w.Write(data)
	w.Close()
	p := filepath.Join(t.TempDir(), "blob.gz")
	if err := os.WriteFile(p, z.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ix, err := gzran.Build(bytes.NewReader(z.Bytes()), gzran.MinSpan)
	if err != nil {
		t.Fatal(err)
	}
	gz, err := gzran.NewReader(f, f.Size(), ix, gzran.Options{CacheBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	s := &spillingGzip{o: NewOpener(Options{}), gz: gz, ix: ix, src: f, size: int64(len(data))}
	buf := make([]byte, 4096)
	deadline := time.Now().Add(time.Minute)
	for i := 0; s.file.Load() == nil; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no spill after %d reads (decoded %d bytes)", i, gz.Stats().BytesDecoded)
		}
		off := rng.Int64N(int64(len(data) - len(buf)))
		if _, err := s.ReadAt(buf, off); err != nil || !bytes.Equal(buf, data[off:off+int64(len(buf))]) {
			t.Fatalf("read %d at %d: %v", i, off, err)
		}
	}
	for i := 0; i < 200; i++ {
		off := rng.Int64N(int64(len(data) - len(buf)))
		if _, err := s.ReadAt(buf, off); err != nil || !bytes.Equal(buf, data[off:off+int64(len(buf))]) {
			t.Fatalf("read after spill at %d: %v", off, err)
		}
	}
	tail := make([]byte, 100)
	if n, err := s.ReadAt(tail, int64(len(data))-50); n != 50 || err == nil || !bytes.Equal(tail[:50], data[len(data)-50:]) {
		t.Fatalf("tail read: %d %v", n, err)
	}
}

// TestGzipSpillCorrupt: a blob damaged after indexing never serves wrong
// bytes through the spill file: the span that fails its CRC32C stops it.
func TestGzipSpillCorrupt(t *testing.T) {
	data := make([]byte, 2<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(rng.IntN(16)) + 'a'
	}
	var z bytes.Buffer
	w := gzip.NewWriter(&z)
	w.Write(data)
	w.Close()
	ix, err := gzran.Build(bytes.NewReader(z.Bytes()), gzran.MinSpan)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte{}, z.Bytes()...)
	bad[len(bad)*3/4] ^= 0x01
	p := filepath.Join(t.TempDir(), "bad.gz")
	os.WriteFile(p, bad, 0o644)
	f, err := OpenFile(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzran.NewReader(f, f.Size(), ix, gzran.Options{CacheBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	s := &spillingGzip{o: NewOpener(Options{}), gz: gz, ix: ix, src: f, size: int64(len(data))}
	s.started.Store(true)
	s.spill() // synchronously: fails at the damaged span
	if s.file.Load() != nil || s.partial.Load() != nil {
		t.Fatal("a damaged stream was kept as the decoded file")
	}
	buf := make([]byte, 4096)
	wrong := 0
	for off := int64(0); off+4096 <= int64(len(data)); off += 4096 {
		if _, err := s.ReadAt(buf, off); err == nil && !bytes.Equal(buf, data[off:off+4096]) {
			wrong++
		}
	}
	if wrong != 0 {
		t.Fatalf("%d wrong blocks", wrong)
	}
}
