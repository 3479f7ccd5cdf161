package zstdseek

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// testData returns n deterministic bytes mixing compressible text, random
// runs and zeros.
func testData(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	words := []string{"erofs ", "block ", "zstd ", "frame ", "seek ", "layer\n", "tar ", "0123456789 "}
	var b bytes.Buffer
	for b.Len() < n {
		switch rng.IntN(4) {
		case 0, 1:
			for k := rng.IntN(4000); k > 0; k-- {
				b.WriteString(words[rng.IntN(len(words))])
			}
		case 2:
			r := make([]byte, rng.IntN(20000))
			for i := range r {
				r[i] = byte(rng.Uint32())
			}
			b.Write(r)
		case 3:
			b.Write(make([]byte, rng.IntN(50000)))
		}
	}
	return b.Bytes()[:n]
}

func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (apt-get install zstd)", name)
	}
	return p
}

// runTool runs a tool with stdin and returns its stdout.
func runTool(t testing.TB, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(needTool(t, name), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, errb.String())
	}
	return out.Bytes()
}

// zstdFile compresses data given as a file (so the CLI knows its size and
// writes Frame_Content_Size).
func zstdFile(t testing.TB, data []byte, args ...string) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "in")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return runTool(t, nil, "zstd", append(append([]string{"-q", "-c"}, args...), p)...)
}

// klausFrames compresses each chunk of data with EncodeAll (one frame each).
func klausFrames(t testing.TB, data []byte, chunk int, opts ...zstd.EOption) (blob []byte, frames [][]byte) {
	t.Helper()
	enc, err := zstd.NewWriter(nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	for off := 0; off < len(data); off += chunk {
		f := enc.EncodeAll(data[off:min(off+chunk, len(data))], nil)
		frames = append(frames, f)
		blob = append(blob, f...)
	}
	return blob, frames
}

// appendSeekTable appends a seek table per the seekable format spec.
func appendSeekTable(blob []byte, frames [][]byte, sizes []int, sums []uint32) []byte {
	entry := 8
	if sums != nil {
		entry = 12
	}
	blob = binary.LittleEndian.AppendUint32(blob, seekTableMagic)
	blob = binary.LittleEndian.AppendUint32(blob, uint32(len(frames)*entry+9))
	for i, f := range frames {
		blob = binary.LittleEndian.AppendUint32(blob, uint32(len(f)))
		blob = binary.LittleEndian.AppendUint32(blob, uint32(sizes[i]))
		if sums != nil {
			blob = binary.LittleEndian.AppendUint32(blob, sums[i])
		}
	}
	blob = binary.LittleEndian.AppendUint32(blob, uint32(len(frames)))
	desc := byte(0)
	if sums != nil {
		desc = 0x80
	}
	blob = append(blob, desc)
	return binary.LittleEndian.AppendUint32(blob, seekFooterMagic)
}

func skippable(magicLow byte, content []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, skippableMagic|uint32(magicLow&15))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(content)))
	return append(b, content...)
}

// buildStream runs a Builder and returns its index and output stream.
func buildStream(t testing.TB, blob []byte) (*Index, []byte) {
	t.Helper()
	b := NewBuilder(bytes.NewReader(blob))
	out, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("Builder: %v", err)
	}
	ix, err := b.Index()
	if err != nil {
		t.Fatalf("Index: %v", err)
	}
	return ix, out
}

// checkReader compares random and systematic reads of r with want.
func checkReader(t testing.TB, r *Reader, want []byte, seed uint64) {
	t.Helper()
	size := int64(len(want))
	if r.Size() != size {
		t.Fatalf("Size %d, want %d", r.Size(), size)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	check := func(off int64, n int) {
		p := make([]byte, n)
		got, err := r.ReadAt(p, off)
		wantN := int64(0)
		if off < size {
			wantN = min(int64(n), size-off)
		}
		if int64(got) != wantN {
			t.Fatalf("ReadAt(%d, %d) = %d, %v; want %d bytes", n, off, got, err, wantN)
		}
		if wantN < int64(n) && err != io.EOF {
			t.Fatalf("ReadAt(%d, %d) short without io.EOF: %v", n, off, err)
		}
		if wantN == int64(n) && err != nil && !(err == io.EOF && off+int64(n) == size) {
			t.Fatalf("ReadAt(%d, %d): %v", n, off, err)
		}
		if got > 0 && !bytes.Equal(p[:got], want[off:off+int64(got)]) {
			t.Fatalf("ReadAt(%d, %d): wrong bytes", n, off)
		}
	}
	for k := 0; k < 300; k++ {
		var n int
		switch k % 3 {
		case 0:
			n = 1 + rng.IntN(64)
		case 1:
			n = 4096
		default:
			n = rng.IntN(1 << 20)
		}
		off := rng.Int64N(size + 100)
		check(off, max(n, 1))
	}
	// Frame boundaries and the ends.
	for _, f := range r.ix.Frames {
		for _, d := range []int64{-3, 0, 3} {
			if o := f.Off + d; o >= 0 {
				check(o, 7)
			}
		}
	}
	check(0, int(size))
	check(0, int(size)+10)
	if size > 0 {
		check(size-1, 1)
		check(size-1, 100)
	}
	check(size, 10)
	check(size+5, 10)
	if n, err := r.ReadAt(nil, 0); n != 0 || err != nil {
		t.Fatalf("empty ReadAt: %d, %v", n, err)
	}
	if _, err := r.ReadAt(make([]byte, 1), -1); err == nil {
		t.Fatal("negative offset accepted")
	}
}

// checkConcurrent reads from many goroutines at once (a small cache to force evictions).
func checkConcurrent(t *testing.T, src io.ReaderAt, ix *Index, want []byte) {
	r, err := NewReader(src, ix, Options{CacheBytes: 3 * ix.MaxFrame() / 2})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			p := make([]byte, 70000)
			for k := 0; k < 100; k++ {
				off := rng.Int64N(int64(len(want)))
				n, err := r.ReadAt(p, off)
				if err != nil && err != io.EOF {
					errc <- err
					return
				}
				if !bytes.Equal(p[:n], want[off:off+int64(n)]) {
					errc <- fmt.Errorf("goroutine %d: wrong bytes at %d", g, off)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

// readsNeverWrong reads all of r in overlapping pieces and fails if it
// returns wrong bytes (with or without an error). After an error it moves on
// to the next frame. It returns the number of errors.
func readsNeverWrong(t *testing.T, r *Reader, want []byte) (errs int) {
	t.Helper()
	for off := int64(0); off < int64(len(want)); {
		p := make([]byte, 5000)
		n, err := r.ReadAt(p, off)
		if n > 0 && !bytes.Equal(p[:n], want[off:off+int64(n)]) {
			t.Fatalf("ReadAt at %d returned wrong bytes (err %v)", off, err)
		}
		off += 3000
		if err != nil && !errors.Is(err, io.EOF) {
			errs++
			if i := r.ix.find(off); i < len(r.ix.Frames) {
				f := r.ix.Frames[i]
				off = max(off, f.Off+f.Size)
			}
		}
	}
	return errs
}
