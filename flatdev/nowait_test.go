package flatdev_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"path/filepath"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/blobcache"
	"github.com/erofs-blockd/erofs-blockd/blockdev"
	"github.com/erofs-blockd/erofs-blockd/cache"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/internal/multiblob"
)

// TestReadAtNoWait: over page-cached files (direct, through a counting
// Backend, through the content cache) a no-wait read either returns what
// ReadAt returns (overlay, holes and padding included) or would block;
// inputs that cannot read without waiting (a plain wrapper, an injected
// delay) always would block, except for ranges that are all holes.
func TestReadAtNoWait(t *testing.T) {
	dir, _, primary, blob := blobImage(t)
	res, err := multiblob.Split(primary, blob, filepath.Join(dir, "a"), multiblob.Options{N: 3, Layout: multiblob.LayoutAligned})
	if err != nil {
		t.Fatal(err)
	}
	s := sources(t, append([]string{res.Primary}, res.Blobs...)...)
	withR := func(f func(i int, src flatdev.Source) io.ReaderAt) []flatdev.Source {
		out := make([]flatdev.Source, len(s))
		for i, src := range s {
			out[i] = src
			out[i].R = f(i, src)
		}
		return out
	}
	sh := blobcache.NewShared(cache.New(64<<20, blobcache.PageSize))
	var readers []*blobcache.Reader
	cached := withR(func(i int, src flatdev.Source) io.ReaderAt {
		be := &blobcache.Backend{Name: src.Name, R: src.R, Size: src.Size}
		r := sh.NewReader(blobcache.ReaderConfig{Backend: be, FileID: src.Name, BlobID: src.Name})
		readers = append(readers, r)
		return r
	})
	for _, tc := range []struct {
		name   string
		srcs   []flatdev.Source
		always bool // always would block
	}{
		{"files", s, false},
		{"backends", withR(func(_ int, src flatdev.Source) io.ReaderAt {
			return &blobcache.Backend{Name: src.Name, R: src.R, Size: src.Size}
		}), false},
		{"cached", cached, false},
		{"wrapped", withR(func(_ int, src flatdev.Source) io.ReaderAt { return io.NewSectionReader(src.R, 0, src.Size) }), true},
		{"delayed", withR(func(_ int, src flatdev.Source) io.ReaderAt {
			return &blobcache.Backend{Name: src.Name, R: src.R, Size: src.Size, Delay: time.Millisecond}
		}), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev, err := flatdev.New(tc.srcs[0], tc.srcs[1:], flatdev.Options{})
			if err != nil {
				t.Fatal(err)
			}
			var d blockdev.Device = dev
			if tc.name == "cached" {
				d = blobcache.NewDevice(dev, readers)
			}
			nw := d.(blockdev.NoWaitReader)
			rng := rand.New(rand.NewSource(2))
			ok, blocked := 0, 0
			iters := 3000
			if tc.always {
				iters = 300 // ReadAt of "delayed" sleeps
			}
			for i := 0; i < iters; i++ {
				n := 1 + rng.Int63n(64<<10)
				if i%2 == 0 {
					n = 4096
				}
				off := rng.Int63n(d.Size() - n + 1)
				if i%3 == 0 {
					off &^= 4095
				}
				if i < 10 {
					off = int64(i) * 512 // the overlaid head
				}
				want := make([]byte, n)
				if _, err := d.ReadAt(want, off); err != nil && err != io.EOF {
					t.Fatal(err)
				}
				got := make([]byte, n)
				m, err := nw.ReadAtNoWait(got, off)
				switch {
				case errors.Is(err, blockdev.ErrWouldBlock):
					blocked++
				case err != nil || m != int(n):
					t.Fatalf("ReadAtNoWait(%d, %d) = %d, %v", n, off, m, err)
				case !bytes.Equal(got, want):
					t.Fatalf("ReadAtNoWait(%d, %d): bytes differ from ReadAt", n, off)
				default:
					ok++
					if tc.always { // only holes need no input
						exts, _ := dev.Extents(off, n)
						for _, e := range exts {
							if !e.Hole {
								t.Fatalf("ReadAtNoWait(%d, %d) read data without waiting", n, off)
							}
						}
					}
				}
			}
			t.Logf("%d read without waiting, %d would block", ok, blocked)
			if !tc.always && ok == 0 {
				t.Fatal("nothing was read without waiting")
			}
			if _, err := nw.ReadAtNoWait(make([]byte, 10), d.Size()-5); err == nil {
				t.Fatal("a read past the end succeeded")
			}
		})
	}
}
