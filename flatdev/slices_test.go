package flatdev_test

import (
	"bytes"
	"io"
	"math/rand"
	"path/filepath"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/internal/multiblob"
)

// lender lends an input's bytes from a copy in memory (as a remote blob
// lends its fetched chunks), in pieces of at most 3000 bytes.
type lender struct {
	io.ReaderAt
	b []byte
}

func (l *lender) ReadSlices(dst [][]byte, off int64, n int) ([][]byte, bool, error) {
	if off < 0 || off+int64(n) > int64(len(l.b)) {
		return dst, false, nil
	}
	for n > 0 {
		k := min(n, 3000)
		dst = append(dst, l.b[off:off+int64(k)])
		off, n = off+int64(k), n-k
	}
	return dst, true, nil
}

// TestReadSlices: when every input lends, the lent slices of any range
// equal ReadAt's bytes (holes and padding as zeros); a range touching the
// primary's overlay, or an input that does not lend, is not lent (a range
// of holes only always is).
func TestReadSlices(t *testing.T) {
	dir, _, primary, blob := blobImage(t)
	res, err := multiblob.Split(primary, blob, filepath.Join(dir, "a"), multiblob.Options{N: 3, Layout: multiblob.LayoutAligned})
	if err != nil {
		t.Fatal(err)
	}
	s := sources(t, append([]string{res.Primary}, res.Blobs...)...)
	lending := make([]flatdev.Source, len(s))
	for i, src := range s {
		b := make([]byte, src.Size)
		if _, err := src.R.ReadAt(b, 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		lending[i] = src
		lending[i].R = &lender{ReaderAt: src.R, b: b}
	}
	dev, err := flatdev.New(lending[0], lending[1:], flatdev.Options{})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := flatdev.New(s[0], s[1:], flatdev.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(4))
	lent, refused := 0, 0
	for i := 0; i < 3000; i++ {
		n := 1 + rng.Int63n(300<<10)
		off := rng.Int63n(dev.Size() - n + 1)
		if i%10 == 0 {
			off = rng.Int63n(64 << 10) // often the primary's head (overlay)
			n = min(n, dev.Size()-off)
		}
		want := make([]byte, n)
		if _, err := dev.ReadAt(want, off); err != nil {
			t.Fatal(err)
		}
		segs, ok, err := dev.ReadSlices(nil, off, int(n))
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			refused++
			continue
		}
		lent++
		if got := bytes.Join(segs, nil); !bytes.Equal(got, want) {
			t.Fatalf("lent %d+%d: wrong bytes (%d in %d slices)", off, n, len(got), len(segs))
		}
		if _, ok, _ := plain.ReadSlices(nil, off, int(n)); ok && !bytes.Equal(want, make([]byte, n)) {
			t.Fatal("inputs that do not lend were lent (only holes may be)")
		}
	}
	if lent == 0 || refused == 0 {
		t.Fatalf("lent %d, refused %d: want both (the overlay is never lent)", lent, refused)
	}
	if _, ok, _ := dev.ReadSlices(nil, dev.Size()-5, 6); ok {
		t.Fatal("a range past the end was lent")
	}
}
