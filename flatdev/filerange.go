package flatdev

import (
	"errors"
	"os"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
	"github.com/erofs-blockd/erofs-blockd/mapping"
)

var (
	_ blockdev.FileRanger = (*Device)(nil)
	_ blockdev.FileLeaser = (*Device)(nil)
)

var errSplit = errors.New("range crosses extents")

// ZeroCopySource is implemented by Source readers that wrap a file but allow
// reads to bypass them (e.g. a counting wrapper without injected latency):
// FileRange then hands out the file and reports the bytes with CountZeroCopy.
type ZeroCopySource interface {
	ZeroCopyFile() (*os.File, bool)
	CountZeroCopy(n int64)
}

// FileRange implements blockdev.FileRanger: ok when [off, off+length) lies
// inside one input's file data (below its size at composition, clear of the
// primary's overlay) and that input's Source.R is an *os.File or a
// ZeroCopySource that allows it. Inputs read through anything else (the
// content cache's readers) never qualify, so zero-copy cannot bypass them.
// Truncation since composition is not checked here.
func (d *Device) FileRange(off, length int64) (*os.File, int64, bool) {
	src, devOff, ok := d.oneRun(off, length)
	if !ok {
		return nil, 0, false
	}
	f, ok := src.R.(*os.File)
	zc, isZC := src.R.(ZeroCopySource)
	if !ok && isZC {
		f, ok = zc.ZeroCopyFile()
	}
	if !ok {
		return nil, 0, false
	}
	if isZC {
		zc.CountZeroCopy(length)
	}
	return f, devOff, true
}

// FileLease implements blockdev.FileLeaser: FileRange, and also ranges of
// an input that lends files itself (a remote blob's stored chunk, through
// its blobcache.Backend), under the same conditions.
func (d *Device) FileLease(off, length int64) (*os.File, int64, func(), bool) {
	src, devOff, ok := d.oneRun(off, length)
	if !ok {
		return nil, 0, nil, false
	}
	if l, ok := src.R.(blockdev.FileLeaser); ok {
		if f, foff, release, ok := l.FileLease(devOff, length); ok {
			return f, foff, release, true
		}
	}
	f, foff, ok := d.FileRange(off, length)
	return f, foff, nil, ok
}

// oneRun returns the input holding all of [off, off+length) as data below
// its size, clear of the primary's overlay.
func (d *Device) oneRun(off, length int64) (*Source, int64, bool) {
	if off < 0 || length <= 0 || length > d.m.Size()-off {
		return nil, 0, false
	}
	var run mapping.Run
	n := 0
	err := d.m.Runs(off, length, func(r mapping.Run) error {
		if n++; n > 1 {
			return errSplit
		}
		run = r
		return nil
	})
	if err != nil || n != 1 || run.Hole || run.Len != length {
		return nil, 0, false
	}
	src := &d.srcs[run.Dev]
	if run.DevOff+length > src.Size {
		return nil, 0, false
	}
	if run.Dev == 0 && d.touchesOverlay(run.DevOff, length) {
		return nil, 0, false
	}
	return src, run.DevOff, true
}

// Prefetch implements blockdev.Prefetcher (NBD_CMD_CACHE, trace replay):
// each input of the range that can prefetch (a remote blob: at low
// priority, into its chunk store) is asked to; others are left alone.
func (d *Device) Prefetch(off, length int64) error {
	if off < 0 || length <= 0 || off >= d.m.Size() {
		return nil
	}
	length = min(length, d.m.Size()-off)
	return d.m.Runs(off, length, func(r mapping.Run) error {
		if r.Hole {
			return nil
		}
		if p, ok := d.srcs[r.Dev].R.(blockdev.Prefetcher); ok {
			return p.Prefetch(r.DevOff, r.Len)
		}
		return nil
	})
}
