package gzran

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math/rand"
	"os/exec"
	"testing"

	kgzip "github.com/klauspost/compress/gzip"
)

// testData is n bytes mixing incompressible runs, text-like runs and zero
// runs, deterministic for a seed.
func testData(n int, seed int64) []byte {
	rng := rand.New(rand.NewSource(seed))
	words := []string{"usr/", "lib/", "bin/", "ELF", "the ", "quick ", "brown ", "fox ", "\x00\x00\x00\x00", "0123456789", "\n"}
	b := make([]byte, 0, n)
	for len(b) < n {
		k := 1 + rng.Intn(200<<10)
		switch rng.Intn(4) {
		case 0:
			chunk := make([]byte, k)
			rng.Read(chunk)
			b = append(b, chunk...)
		case 1, 2:
			for i := 0; i < k; {
				w := words[rng.Intn(len(words))]
				b = append(b, w...)
				i += len(w)
			}
		case 3:
			b = append(b, make([]byte, k)...)
		}
	}
	return b[:n]
}

// tool runs a compressor binary with data on stdin.
func tool(t testing.TB, data []byte, name string, args ...string) []byte {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not installed (Debian package %s): %v", name, name, err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdin = bytes.NewReader(data)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, stderr.String())
	}
	return out.Bytes()
}

func goGzip(t testing.TB, data []byte, level int, name string) []byte {
	var buf bytes.Buffer
	w, err := gzip.NewWriterLevel(&buf, level)
	if err != nil {
		t.Fatal(err)
	}
	w.Name = name
	w.Comment = "a comment"
	w.Extra = []byte("extra field")
	// several Flush calls: sync-flush empty stored blocks inside the stream
	for i := 0; i < len(data); i += 700 << 10 {
		w.Write(data[i:min(i+700<<10, len(data))])
		w.Flush()
	}
	w.Close()
	return buf.Bytes()
}

func kGzip(t testing.TB, data []byte, level int) []byte {
	var buf bytes.Buffer
	w, err := kgzip.NewWriterLevel(&buf, level)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	w.Close()
	return buf.Bytes()
}

// checkReads compares many ReadAt results of r with data: random offsets
// and lengths, every point boundary, the end and past it.
func checkReads(t testing.TB, r *Reader, ix *Index, data []byte, seed int64) {
	t.Helper()
	if r.Size() != int64(len(data)) {
		t.Fatalf("Size %d, want %d", r.Size(), len(data))
	}
	rng := rand.New(rand.NewSource(seed))
	check := func(off int64, n int) {
		t.Helper()
		p := make([]byte, n)
		got, err := r.ReadAt(p, off)
		wantN := 0
		if off < int64(len(data)) {
			wantN = min(n, len(data)-int(off))
		}
		if got != wantN {
			t.Fatalf("ReadAt(%d, off %d) = %d, %v; want %d", n, off, got, err, wantN)
		}
		if wantN < n && err != io.EOF {
			t.Fatalf("ReadAt(%d, off %d) short read with err %v, want io.EOF", n, off, err)
		}
		if wantN == n && err != nil && !(n == 0 && off >= int64(len(data)) && err == io.EOF) {
			t.Fatalf("ReadAt(%d, off %d): %v", n, off, err)
		}
		if got > 0 && !bytes.Equal(p[:got], data[off:off+int64(got)]) {
			t.Fatalf("ReadAt(%d, off %d): wrong bytes", n, off)
		}
	}
	size := int64(len(data))
	for i := 0; i < 80; i++ {
		off := rng.Int63n(size + 1)
		check(off, 1+rng.Intn(1<<rng.Intn(18)))
	}
	for _, p := range ix.Points {
		for _, d := range []int64{-1, 0} {
			if o := p.Out + d; o >= 0 && o <= size {
				check(o, 4096)
			}
		}
	}
	check(0, len(data))
	if size > 0 {
		check(size-1, 10)
	}
	check(size, 10)
	check(size+100, 10)
	check(0, 0)
}

// serveAll checks a Reader built over gz with ix in several option sets.
func serveAll(t *testing.T, gz []byte, ix *Index, data []byte) {
	t.Helper()
	for _, opt := range []Options{{}, {CacheBytes: -1}, {CacheBytes: 1 << 20, segSize: 16 << 10}, {segSize: 4 << 10}} {
		t.Run(fmt.Sprintf("cache%d-seg%d", opt.CacheBytes, opt.segSize), func(t *testing.T) {
			r, err := NewReader(bytes.NewReader(gz), int64(len(gz)), ix, opt)
			if err != nil {
				t.Fatal(err)
			}
			checkReads(t, r, ix, data, 1)
		})
	}
}
