package flatdev

import (
	"fmt"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
	"github.com/erofs-blockd/erofs-blockd/mapping"
)

var _ blockdev.SliceReader = (*Device)(nil)

// zeros backs lent holes and padding; nothing ever writes it.
var zeros [64 << 10]byte

// ReadSlices implements blockdev.SliceReader when every input of the range
// lends (a remote blob's fetched chunks, through its blobcache.Backend):
// their slices, with holes and padding as slices of zeros. The primary's
// overlay is never lent around (false when the range touches it), nor are
// inputs that do not lend (false: ReadAt reads the range).
func (d *Device) ReadSlices(dst [][]byte, off int64, n int) ([][]byte, bool, error) {
	if off < 0 || n <= 0 || int64(n) > d.m.Size()-off {
		return dst, false, nil
	}
	lendable := true
	d.m.Runs(off, int64(n), func(r mapping.Run) error {
		if r.Hole {
			return nil
		}
		if _, ok := d.srcs[r.Dev].R.(blockdev.SliceReader); !ok || (r.Dev == 0 && d.touchesOverlay(r.DevOff, r.Len)) {
			lendable = false
			return errSplit // stop
		}
		return nil
	})
	if !lendable {
		return dst, false, nil
	}
	start := len(dst)
	ok := true
	err := d.m.Runs(off, int64(n), func(r mapping.Run) error {
		if r.Hole {
			dst = appendZeros(dst, r.Len)
			return nil
		}
		src := &d.srcs[r.Dev]
		data := min(r.Len, max(src.Size-r.DevOff, 0))
		if data > 0 {
			var lent bool
			var err error
			dst, lent, err = src.R.(blockdev.SliceReader).ReadSlices(dst, r.DevOff, int(data))
			if err != nil {
				if d.onError != nil {
					d.onError(src.Name, err)
				}
				return &Error{File: src.Name, Msg: fmt.Sprintf("read at offset %d", r.DevOff), Err: err}
			}
			if !lent {
				ok = false
				return errSplit
			}
		}
		dst = appendZeros(dst, r.Len-data) // padding after the input's end
		return nil
	})
	if !ok {
		return dst[:start], false, nil
	}
	if err != nil {
		return dst[:start], true, err
	}
	return dst, true, nil
}

func appendZeros(dst [][]byte, n int64) [][]byte {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		dst = append(dst, zeros[:k:k])
		n -= k
	}
	return dst
}

// touchesOverlay reports whether [off, off+n) of the primary meets a patch.
func (d *Device) touchesOverlay(off, n int64) bool {
	for _, p := range d.overlay {
		if p.off < off+n && p.off+int64(len(p.data)) > off {
			return true
		}
	}
	return false
}
