package blobcache

import (
	"bytes"
	"math/rand"
	"sync"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/cache"
)

// storedBackend is an input that holds some 64 KiB chunks locally (as a
// remote blob's disk cache does) and counts what it reads through ReadAt
// (the network, for a remote blob).
type storedBackend struct {
	memBackend
	mu      sync.Mutex
	stored  map[int64]bool // chunk index -> held locally
	fetched int64
}

const testChunk = 64 << 10

func (s *storedBackend) ReadAt(p []byte, off int64) (int, error) {
	n, err := s.memBackend.ReadAt(p, off)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stored == nil {
		s.stored = map[int64]bool{}
	}
	for c := off / testChunk; c <= (off+int64(n)-1)/testChunk && n > 0; c++ {
		if !s.stored[c] {
			s.fetched += min(testChunk, int64(len(s.b))-c*testChunk)
			s.stored[c] = true
		}
	}
	return n, err
}

func (s *storedBackend) ReadStored(p []byte, off int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(p) == 0 || off < 0 || off+int64(len(p)) > int64(len(s.b)) {
		return false
	}
	for c := off / testChunk; c <= (off+int64(len(p))-1)/testChunk; c++ {
		if !s.stored[c] {
			return false
		}
	}
	copy(p, s.b[off:])
	return true
}

func (s *storedBackend) CanStore() bool { return true }

func (s *storedBackend) fetchedBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetched
}

// Two remote-like inputs hold the same 1 MiB file (plus a short tail
// file with non-zero padding in B) at unaligned places among other data.
// With a memory cache too small to hold it, B's read of the file takes the
// bytes A stored locally instead of fetching them; B's own data and
// padding still come from B; every byte is right.
func TestAliasFromStoredInput(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	file := randBytes(rng, 1<<20)
	tail := randBytes(rng, 5000)
	// A: 12 KiB of other data, the file, the tail file (zero padding), more data.
	a := append(randBytes(rng, 3*PageSize), file...)
	aTail := int64(len(a))
	a = append(append(a, tail...), make([]byte, 2*PageSize-len(tail))...)
	a = append(a, randBytes(rng, 200<<10)...)
	// B: 100 KiB + 4 KiB of its own, the file, the tail with 0xEE padding, more.
	b := append(randBytes(rng, 26*PageSize), file...)
	bTail := int64(len(b))
	b = append(append(b, tail...), bytes.Repeat([]byte{0xEE}, 2*PageSize-len(tail))...)
	b = append(b, randBytes(rng, 300<<10)...)

	spans := func(off, tailOff int64) []Span {
		return []Span{
			{Off: off, Len: int64(len(file)), FileSize: int64(len(file)), Content: "big"},
			{Off: tailOff, Len: int64(len(tail)), FileSize: int64(len(tail)), Content: "tail"},
		}
	}
	mk := func(name string, data []byte, sp []Span, sh *Shared) (*Reader, *storedBackend) {
		sb := &storedBackend{memBackend: memBackend{b: data}}
		r := sh.NewReader(ReaderConfig{Backend: &Backend{Name: name, R: sb, Size: int64(len(data))}, FileID: name, BlobID: name, Spans: sp})
		r.Enable()
		return r, sb
	}
	readAll := func(r *Reader, want []byte) {
		t.Helper()
		got := make([]byte, len(want))
		for off := 0; off < len(want); off += 96 << 10 { // NBD-sized pieces, unaligned to the file
			n := min(96<<10, len(want)-off)
			if _, err := r.ReadAt(got[off:off+n], int64(off)); err != nil {
				t.Fatalf("read %d: %v", off, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatal("wrong bytes")
		}
	}

	sh := NewShared(cache.New(64<<10, PageSize)) // far smaller than the file
	rA, sA := mk("a", a, spans(3*PageSize, aTail), sh)
	rB, sB := mk("b", b, spans(26*PageSize, bTail), sh)
	readAll(rA, a)
	if got := sA.fetchedBytes(); got != int64(len(a)) {
		t.Fatalf("A fetched %d of %d", got, len(a))
	}
	readAll(rB, b)
	own := int64(len(b)) - int64(len(file))
	got := sB.fetchedBytes()
	t.Logf("B fetched %d bytes, %d of them not the shared file; alias bytes %d", got, own, sh.Stats().AliasBytes)
	// B fetches its own bytes, plus at most the two 64 KiB chunks at the
	// file's ends that it shares with its own data.
	if got < own || got > own+2*testChunk {
		t.Fatalf("B fetched %d bytes, want %d..%d", got, own, own+2*testChunk)
	}
	if sh.Stats().AliasBytes < uint64(len(file))-2*testChunk {
		t.Fatalf("alias bytes %d", sh.Stats().AliasBytes)
	}
	// B again: all of it local now (own chunks or A's).
	readAll(rB, b)
	if sB.fetchedBytes() != got {
		t.Fatal("B fetched again")
	}

	// With A's and B's readers closed, a new input has nothing to take
	// the file from.
	rA.Close()
	rB.Close()
	rD, sD := mk("d", b, spans(26*PageSize, bTail), sh)
	readAll(rD, b)
	if sD.fetchedBytes() != int64(len(b)) {
		t.Fatalf("D fetched %d of %d with every other reader closed", sD.fetchedBytes(), len(b))
	}
}

// When the other input holds only part of the file, the part it holds is
// taken from it (in 64 KiB pieces) and the rest read from this input.
func TestAliasPartial(t *testing.T) {
	rng := rand.New(rand.NewSource(8))
	file := randBytes(rng, 512<<10)
	a := append(make([]byte, 0, len(file)), file...)
	b := append(randBytes(rng, 16<<10), file...)
	sh := NewShared(cache.New(32<<10, PageSize))
	sa := &storedBackend{memBackend: memBackend{b: a}, stored: map[int64]bool{2: true, 3: true, 6: true}}
	sb := &storedBackend{memBackend: memBackend{b: b}}
	rA := sh.NewReader(ReaderConfig{Backend: &Backend{Name: "a", R: sa, Size: int64(len(a))}, FileID: "a", BlobID: "a",
		Spans: []Span{{Off: 0, Len: int64(len(file)), FileSize: int64(len(file)), Content: "f"}}})
	rB := sh.NewReader(ReaderConfig{Backend: &Backend{Name: "b", R: sb, Size: int64(len(b))}, FileID: "b", BlobID: "b",
		Spans: []Span{{Off: 16 << 10, Len: int64(len(file)), FileSize: int64(len(file)), Content: "f"}}})
	rA.Enable()
	rB.Enable()
	got := make([]byte, len(b))
	if _, err := rB.ReadAt(got, 0); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("err=%v equal=%v", err, bytes.Equal(got, b))
	}
	if sa.fetchedBytes() != 0 {
		t.Fatal("A fetched for B")
	}
	if al := sh.Stats().AliasBytes; al != 3*testChunk {
		t.Fatalf("alias bytes %d, want %d (A's three stored chunks)", al, 3*testChunk)
	}
}
