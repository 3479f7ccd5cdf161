package blobcache

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/cache"
)

type memBackend struct {
	b    []byte
	fail bool
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	if m.fail {
		return 0, errors.New("injected")
	}
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func backend(name string, b []byte) (*Backend, *memBackend) {
	m := &memBackend{b: b}
	return &Backend{Name: name, R: m, Size: int64(len(b))}, m
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	rng.Read(b)
	return b
}

// Two blobs hold the same 10000-byte file at different offsets; B's
// padding after the file is not zero. Every byte of both reads back right,
// B's content pages come from A's fetch, and B's padding from B.
func TestContentDedupAndPadding(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	file := randBytes(rng, 10000)
	a := append(append([]byte{}, file...), make([]byte, 3*PageSize-len(file))...) // zero padding
	a = append(a, randBytes(rng, 5000)...)                                        // other data
	b := append(randBytes(rng, 2*PageSize), file...)
	b = append(b, bytes.Repeat([]byte{0xEE}, 3*PageSize-len(file))...) // non-zero padding
	b = append(b, randBytes(rng, 100)...)

	sh := NewShared(cache.New(1<<20, PageSize))
	beA, _ := backend("a", a)
	beB, _ := backend("b", b)
	span := func(off int64) []Span {
		return []Span{{Off: off, Len: int64(len(file)), Logical: 0, FileSize: int64(len(file)), Content: "fp"}}
	}
	rA := sh.NewReader(ReaderConfig{Backend: beA, FileID: "a", BlobID: "a", Spans: span(0)})
	rB := sh.NewReader(ReaderConfig{Backend: beB, FileID: "b", BlobID: "b", Spans: span(2 * PageSize)})
	rA.Enable()
	rB.Enable()

	check := func(r *Reader, want []byte) {
		t.Helper()
		// whole, and in odd pieces
		got := make([]byte, len(want))
		if n, err := r.ReadAt(got, 0); err != nil || n != len(want) || !bytes.Equal(got, want) {
			t.Fatalf("whole read: n=%d err=%v equal=%v", n, err, bytes.Equal(got, want))
		}
		for off := 0; off < len(want); off += 1237 {
			n := min(3001, len(want)-off)
			p := make([]byte, n)
			if _, err := r.ReadAt(p, int64(off)); err != nil || !bytes.Equal(p, want[off:off+n]) {
				t.Fatalf("read %d+%d: err=%v", off, n, err)
			}
		}
	}
	check(rA, a)
	before := beB.Stats().Bytes
	whole := make([]byte, len(b))
	if _, err := rB.ReadAt(whole, 0); err != nil || !bytes.Equal(whole, b) {
		t.Fatalf("B: %v", err)
	}
	// B read from its backend: its 2 leading pages, the page after the
	// file's, and the padding; never the 2 full content pages nor the
	// file's tail bytes.
	if got, want := beB.Stats().Bytes-before, int64ToU(len(b)-len(file)); got != want {
		t.Fatalf("B backend bytes %d, want %d", got, want)
	}
	if sh.Stats().DedupContent != 3 {
		t.Fatalf("content dedup hits %d, want 3", sh.Stats().DedupContent)
	}
	check(rB, b)
	// Reading past the end is passed through (short read, EOF).
	p := make([]byte, 10)
	if n, err := rB.ReadAt(p, int64(len(b))-5); n != 5 || err != io.EOF {
		t.Fatalf("read past end: %d %v", n, err)
	}
}

func int64ToU(n int) uint64 { return uint64(n) }

func TestPrefetchAndErrors(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	data := randBytes(rng, 50000)
	sh := NewShared(cache.New(1<<20, PageSize))
	be, m := backend("x", data)
	r := sh.NewReader(ReaderConfig{Backend: be, FileID: "x", BlobID: "x"})
	r.Enable()

	m.fail = true
	if _, err := r.ReadAt(make([]byte, 100), 0); err == nil {
		t.Fatal("backend error not reported")
	}
	if err := r.Prefetch(0, 20000); err == nil {
		t.Fatal("prefetch error not reported")
	}
	m.fail = false
	if err := r.Prefetch(0, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	reads := be.Stats().Reads
	got := make([]byte, len(data))
	if _, err := r.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after prefetch: %v", err)
	}
	if be.Stats().Reads != reads {
		t.Fatal("read after a full prefetch went to the backend")
	}
}

// Concurrent readers of overlapping ranges through a tiny cache always get
// the right bytes.
func TestConcurrentSmallCache(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	data := randBytes(rng, 300000)
	sh := NewShared(cache.New(5*PageSize, PageSize))
	be, _ := backend("x", data)
	var readers []*Reader
	for i := 0; i < 3; i++ {
		r := sh.NewReader(ReaderConfig{Backend: be, FileID: "x", BlobID: "x"})
		r.Enable()
		readers = append(readers, r)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(g)))
			for i := 0; i < 300; i++ {
				off := rng.Intn(len(data))
				n := min(1+rng.Intn(40000), len(data)-off)
				p := make([]byte, n)
				if _, err := readers[g%3].ReadAt(p, int64(off)); err != nil || !bytes.Equal(p, data[off:off+n]) {
					t.Errorf("read %d+%d: %v", off, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// patBackend is a large input whose bytes are a function of their offset,
// so it holds no memory of its own.
type patBackend struct{ size int64 }

func patByte(o int64) byte { return byte(uint64(o) * 0x9E3779B97F4A7C15 >> 56) }

func (b patBackend) ReadAt(p []byte, off int64) (int, error) {
	n := int(min(int64(len(p)), max(b.size-off, 0)))
	for i := range n {
		p[i] = patByte(off + int64(i))
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Filling the cache with large reads (4x its capacity, 1 MiB at a time,
// each run of misses read with one backend read) leaves the process
// holding about the capacity: the pages live in the cache's own slots
// (reused on eviction), not in slices of the read buffers.
func TestMemoryBoundLargeReads(t *testing.T) {
	const capacity = 16 << 20
	const size = 4 * capacity
	sh := NewShared(cache.New(capacity, PageSize))
	be := &Backend{Name: "pat", R: patBackend{size}, Size: size}
	r := sh.NewReader(ReaderConfig{Backend: be, FileID: "pat", BlobID: "pat"})
	r.Enable()
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base := heap()
	p := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(p)) {
		if _, err := r.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
		if patByte(off) != p[0] || patByte(off+int64(len(p))-1) != p[len(p)-1] {
			t.Fatalf("wrong bytes at %d", off)
		}
	}
	// and a second, unaligned pass, half of it hits
	for off := int64(size/2 + 100); off+int64(len(p)) < size; off += int64(len(p)) {
		if _, err := r.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(p); i += 4093 {
			if p[i] != patByte(off+int64(i)) {
				t.Fatalf("wrong byte at %d", off+int64(i))
			}
		}
	}
	grew := int64(heap()) - int64(base)
	st := sh.Stats()
	if st.ResidentBytes > capacity || st.AllocatedBytes > capacity {
		t.Fatalf("resident %d, allocated %d > capacity %d", st.ResidentBytes, st.AllocatedBytes, capacity)
	}
	// Per page: an entry, a map slot and a ghost slot, well under 1/16 of
	// a 4 KiB page; plus pooled read scratch.
	overhead := int64(capacity/16 + 4<<20)
	if total := grew + st.AllocatedBytes; total > capacity+overhead {
		t.Fatalf("heap grew %d MiB + cache slots %d MiB = %d MiB for a %d MiB cache",
			grew>>20, st.AllocatedBytes>>20, total>>20, capacity>>20)
	}
	t.Logf("heap +%.1f MiB, slots %.1f MiB, resident %.1f MiB, capacity %d MiB, entries %d",
		float64(grew)/(1<<20), float64(st.AllocatedBytes)/(1<<20), float64(st.ResidentBytes)/(1<<20), capacity>>20, st.Entries)
	runtime.KeepAlive(p)
}

// One blob holds the same file twice (two inodes, equal fingerprints): a
// read covering both looks the same content key up twice in one batch and
// waits on its own fetch for the second copy.
func TestSameContentTwiceInOneRead(t *testing.T) {
	rng := rand.New(rand.NewSource(4))
	file := randBytes(rng, 3*PageSize)
	blob := append(append(append([]byte{}, file...), randBytes(rng, PageSize)...), file...)
	sh := NewShared(cache.New(1<<20, PageSize))
	be, _ := backend("d", blob)
	sp := func(off int64) Span {
		return Span{Off: off, Len: int64(len(file)), FileSize: int64(len(file)), Content: "fp"}
	}
	r := sh.NewReader(ReaderConfig{Backend: be, FileID: "d", BlobID: "d",
		Spans: []Span{sp(0), sp(int64(len(file) + PageSize))}})
	r.Enable()
	for pass := 0; pass < 2; pass++ {
		got := make([]byte, len(blob))
		if _, err := r.ReadAt(got, 0); err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("pass %d: %v", pass, err)
		}
	}
	if got, want := be.Stats().Bytes, uint64(len(file)+PageSize); got != want {
		t.Fatalf("backend bytes %d, want %d (the file once)", got, want)
	}
}

// TestZeroCopyBypass: a Reader over a plain local file offers the file for
// sendfile (flatdev.ZeroCopySource), counting the bytes on its backend and
// in Stats; over a file with an injected delay or a non-file input it does
// not, so those reads stay in the cache.
func TestZeroCopyBypass(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "blob")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := randBytes(rand.New(rand.NewSource(3)), 256<<10)
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	sh := NewShared(cache.New(1<<20, PageSize))
	for _, tc := range []struct {
		name string
		be   *Backend
		ok   bool
	}{
		{"file", &Backend{Name: "f", R: f, Size: int64(len(data))}, true},
		{"delay", &Backend{Name: "d", R: f, Size: int64(len(data)), Delay: time.Microsecond}, false},
		{"memory", &Backend{Name: "m", R: &memBackend{b: data}, Size: int64(len(data))}, false},
	} {
		r := sh.NewReader(ReaderConfig{Backend: tc.be, FileID: tc.name, BlobID: tc.name})
		r.Enable()
		zf, ok := r.ZeroCopyFile()
		if ok != tc.ok || (ok && zf != f) {
			t.Fatalf("%s: ZeroCopyFile = %v, %v", tc.name, zf, ok)
		}
		if _, _, _, ok := r.FileLease(0, 64<<10); ok {
			t.Fatalf("%s: a plain input lent a file", tc.name)
		}
		if ok {
			before := sh.Stats().ZeroCopyBytes
			r.CountZeroCopy(64 << 10)
			if st := tc.be.Stats(); st.Bytes != 64<<10 || st.Reads != 1 {
				t.Fatalf("%s: backend stats %+v", tc.name, st)
			}
			if got := sh.Stats().ZeroCopyBytes - before; got != 64<<10 {
				t.Fatalf("%s: zero-copy bytes %d", tc.name, got)
			}
		}
		// The cached path still reads right.
		p := make([]byte, 100<<10)
		if _, err := r.ReadAt(p, 5000); err != nil || !bytes.Equal(p, data[5000:5000+len(p)]) {
			t.Fatalf("%s: ReadAt: %v", tc.name, err)
		}
	}
}

// TestCheapInputCachedOnSecondRead: pages of a plain local file enter the
// cache only when read a second time; every read returns the file's bytes,
// unaligned ones and the file's last partial page included.
func TestCheapInputCachedOnSecondRead(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "blob")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := randBytes(rand.New(rand.NewSource(4)), 20*PageSize+123)
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	sh := NewShared(cache.New(1<<20, PageSize))
	be := &Backend{Name: "f", R: f, Size: int64(len(data))}
	r := sh.NewReader(ReaderConfig{Backend: be, FileID: "f", BlobID: "f"})
	r.Enable()
	read := func(off, n int64) {
		t.Helper()
		p := make([]byte, n)
		if _, err := r.ReadAt(p, off); err != nil || !bytes.Equal(p, data[off:off+n]) {
			t.Fatalf("ReadAt(%d, %d): %v, or wrong bytes", off, n, err)
		}
	}
	ranges := [][2]int64{{0, 3 * PageSize}, {4*PageSize + 7, 5000}, {19*PageSize - 10, PageSize + 133}, {8 * PageSize, 100}} // no page twice
	for _, rg := range ranges {
		read(rg[0], rg[1])
	}
	if st := sh.Stats(); st.Inserts != 0 || st.Misses == 0 {
		t.Fatalf("first reads: %+v", st)
	}
	for _, rg := range ranges {
		read(rg[0], rg[1])
	}
	ins := sh.Stats().Inserts
	if ins == 0 {
		t.Fatal("pages read twice were not cached")
	}
	b0 := be.Stats().Bytes
	for _, rg := range ranges {
		read(rg[0], rg[1])
	}
	if st := sh.Stats(); st.Inserts != ins || be.Stats().Bytes != b0 {
		t.Fatalf("third reads went to the file: %+v, backend bytes %d -> %d", st, b0, be.Stats().Bytes)
	}
}

// What is learnt about a blob's padding lives while some reader of the
// blob is open: two exports of one blob share it, the last Close drops it
// (a daemon that removes exports does not keep it forever), and a closed
// reader still reads right without recording any.
func TestPaddingForgottenOnLastClose(t *testing.T) {
	rng := rand.New(rand.NewSource(9))
	file := randBytes(rng, 5000)
	a := append(append([]byte{}, file...), make([]byte, 2*PageSize-len(file))...)
	sh := NewShared(cache.New(1<<20, PageSize))
	span := []Span{{Off: 0, Len: int64(len(file)), Logical: 0, FileSize: int64(len(file)), Content: "fp"}}
	be1, _ := backend("a", a)
	be2, _ := backend("a", a)
	r1 := sh.NewReader(ReaderConfig{Backend: be1, FileID: "a1", BlobID: "a", Spans: span})
	r2 := sh.NewReader(ReaderConfig{Backend: be2, FileID: "a2", BlobID: "a", Spans: span})
	r1.Enable()
	r2.Enable()
	entries := func() int {
		sh.padMu.Lock()
		defer sh.padMu.Unlock()
		return len(sh.pad)
	}
	read := func(r *Reader) {
		t.Helper()
		got := make([]byte, len(a))
		if _, err := r.ReadAt(got, 0); err != nil || !bytes.Equal(got, a) {
			t.Fatalf("read: %v", err)
		}
	}
	read(r1)
	if entries() != 1 {
		t.Fatalf("%d padding entries after a read, want 1", entries())
	}
	r1.Close()
	r1.Close() // twice is once
	if entries() != 1 {
		t.Fatal("padding forgotten while another reader of the blob is open")
	}
	pads := sh.Stats().PadReads
	read(r2)
	if sh.Stats().PadReads != pads {
		t.Fatal("the second export read the padding its twin had checked")
	}
	r2.Close()
	if entries() != 0 {
		t.Fatalf("%d padding entries after the last Close, want 0", entries())
	}
	read(r1) // still correct, records nothing
	if entries() != 0 {
		t.Fatal("a closed reader recorded padding")
	}
}
