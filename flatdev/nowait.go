package flatdev

import (
	"os"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
)

var _ blockdev.NoWaitReader = (*Device)(nil)

// noWaitReaders returns, per input, what reads it without waiting: its
// Source.R when that is a blockdev.NoWaitReader (the content cache's
// readers, counting backends), preadv2 with RWF_NOWAIT for an *os.File,
// else nil (such inputs always would block).
func noWaitReaders(srcs []Source) []blockdev.NoWaitReader {
	out := make([]blockdev.NoWaitReader, len(srcs))
	for i, s := range srcs {
		switch r := s.R.(type) {
		case blockdev.NoWaitReader:
			out[i] = r
		case *os.File:
			if w := blockdev.NewNoWaitFile(r); w != nil {
				out[i] = w
			}
		}
	}
	return out
}

// ReadAtNoWait implements blockdev.NoWaitReader: ReadAt when every input
// of the range can be read without waiting, else blockdev.ErrWouldBlock.
// Holes, padding and the overlay are served as by ReadAt; a short input
// read is ErrWouldBlock (ReadAt then reports the truncation).
func (d *Device) ReadAtNoWait(p []byte, off int64) (int, error) {
	size := d.m.Size()
	if off < 0 || off > size || int64(len(p)) > size-off {
		return 0, blockdev.ErrWouldBlock // ReadAt's errors and io.EOF
	}
	for done := 0; done < len(p); {
		at := off + int64(done)
		e, devOff, n, ok := d.m.Lookup(at)
		n = min(n, int64(len(p)-done))
		if n <= 0 {
			return 0, blockdev.ErrWouldBlock // cannot happen inside Size
		}
		buf := p[done : done+int(n)]
		if !ok {
			clear(buf)
		} else if err := d.readDevNoWait(e.Dev, buf, devOff); err != nil {
			return 0, err
		}
		done += int(n)
	}
	return len(p), nil
}

// readDevNoWait is readDev without waiting: nothing is reported to
// OnError, since ReadAt retries whatever would block.
func (d *Device) readDevNoWait(dev int, buf []byte, devOff int64) error {
	src := &d.srcs[dev]
	n := len(buf)
	if avail := src.Size - devOff; int64(n) > avail {
		avail = max(avail, 0)
		clear(buf[avail:])
		n = int(avail)
	}
	if n > 0 {
		r := d.nowait[dev]
		if r == nil {
			return blockdev.ErrWouldBlock
		}
		if got, err := r.ReadAtNoWait(buf[:n], devOff); err != nil || got < n {
			return blockdev.ErrWouldBlock
		}
	}
	if dev == 0 {
		d.applyOverlay(buf, devOff)
	}
	return nil
}
