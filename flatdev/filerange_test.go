package flatdev_test

import (
	"bytes"
	"io"
	"math/rand"
	"path/filepath"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/blobcache"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/internal/multiblob"
)

// TestFileRange: a range FileRange accepts reads the same from the named
// file as from the device; ranges over the overlay, holes, padding or
// extent boundaries, and inputs that are not *os.File, are refused.
func TestFileRange(t *testing.T) {
	dir, _, primary, blob := blobImage(t)
	res, err := multiblob.Split(primary, blob, filepath.Join(dir, "a"), multiblob.Options{N: 3, Layout: multiblob.LayoutAligned})
	if err != nil {
		t.Fatal(err)
	}
	s := sources(t, append([]string{res.Primary}, res.Blobs...)...)
	dev, err := flatdev.New(s[0], s[1:], flatdev.Options{})
	if err != nil {
		t.Fatal(err)
	}
	check := func(off, n int64) bool {
		t.Helper()
		f, foff, ok := dev.FileRange(off, n)
		if !ok {
			return false
		}
		want := make([]byte, n)
		if _, err := dev.ReadAt(want, off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		got := make([]byte, n)
		if _, err := f.ReadAt(got, foff); err != nil {
			t.Fatalf("FileRange(%d, %d) = %s@%d: %v", off, n, f.Name(), foff, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("FileRange(%d, %d) = %s@%d: bytes differ from ReadAt", off, n, f.Name(), foff)
		}
		return true
	}
	if check(0, 4096) {
		t.Fatal("the primary's overlaid head was accepted")
	}
	exts, _ := dev.Extents(0, dev.Size())
	for _, e := range exts {
		if e.Hole && check(e.Offset, e.Length) {
			t.Fatalf("hole %+v accepted", e)
		}
	}
	m := dev.Map()
	for i := 1; i < m.Devices(); i++ {
		e := m.Device(i)
		start := int64(e.Start) << m.BlockBits()
		size := s[i].Size
		if !check(start, size) {
			t.Fatalf("blob %d's whole data [%d, +%d) refused", i, start, size)
		}
		if check(start-1, 2) {
			t.Fatalf("range crossing into blob %d accepted", i)
		}
		if blocks := int64(e.Blocks) << m.BlockBits(); blocks > size && check(start, size+1) {
			t.Fatalf("blob %d's zero padding accepted", i)
		}
	}
	rng := rand.New(rand.NewSource(1))
	accepted := 0
	for i := 0; i < 2000; i++ {
		n := 1 + rng.Int63n(256<<10)
		off := rng.Int63n(dev.Size() - n + 1)
		if check(off, n) {
			accepted++
		}
	}
	if accepted == 0 {
		t.Fatal("no random range was accepted")
	}
	if check(dev.Size()-10, 20) || check(-1, 10) || check(0, 0) {
		t.Fatal("out-of-range request accepted")
	}
	// Inputs read through a wrapper (as the content cache does) never qualify.
	wrapped := make([]flatdev.Source, len(s))
	for i, src := range s {
		wrapped[i] = src
		wrapped[i].R = io.NewSectionReader(src.R, 0, src.Size)
	}
	wdev, err := flatdev.New(wrapped[0], wrapped[1:], flatdev.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := m.Device(1)
	if _, _, ok := wdev.FileRange(int64(e.Start)<<m.BlockBits(), 4096); ok {
		t.Fatal("a wrapped input was accepted")
	}
}

// TestFileRangeCountingWrapper: a counting wrapper (blobcache.Backend) lets
// zero-copy through and counts the bytes; with an injected delay it does not.
func TestFileRangeCountingWrapper(t *testing.T) {
	_, _, primary, blob := blobImage(t)
	s := sources(t, primary, blob)
	for _, delay := range []time.Duration{0, time.Millisecond} {
		be := &blobcache.Backend{Name: blob, R: s[1].R, Size: s[1].Size, Delay: delay}
		dev, err := flatdev.New(s[0], []flatdev.Source{{Name: blob, R: be, Size: s[1].Size}}, flatdev.Options{})
		if err != nil {
			t.Fatal(err)
		}
		start := int64(dev.Map().Device(1).Start) << dev.Map().BlockBits()
		_, _, ok := dev.FileRange(start, 64<<10)
		if ok != (delay == 0) {
			t.Fatalf("delay %v: FileRange ok=%v", delay, ok)
		}
		if st := be.Stats(); ok && st.Bytes != 64<<10 {
			t.Fatalf("zero-copy bytes not counted: %+v", st)
		}
	}
}
