package nbd

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"
)

// sliceDev is a memDev that lends its memory (blockdev.SliceReader) in
// pieces of at most 5000 bytes, except for ranges starting in the last
// MiB, which it does not lend, and ranges touching [bad, bad+4096), whose
// lending fails.
type sliceDev struct {
	memDev
	bad        int64
	lent, fail atomic.Int64
}

func (d *sliceDev) ReadSlices(dst [][]byte, off int64, n int) ([][]byte, bool, error) {
	if off >= d.Size()-1<<20 {
		return dst, false, nil
	}
	if off < d.bad+4096 && off+int64(n) > d.bad {
		d.fail.Add(1)
		return dst, true, errors.New("injected")
	}
	d.lent.Add(1)
	for n > 0 {
		k := min(n, 5000)
		dst = append(dst, d.data[off:off+int64(k):off+int64(k)])
		off += int64(k)
		n -= k
	}
	return dst, true, nil
}

// TestLentReads: READs the device lends slices for arrive whole and right,
// mixed with copied ones (small, or not lent), in both reply modes; a
// lending that fails is an EIO reply and the connection goes on.
func TestLentReads(t *testing.T) {
	const size = 8 << 20
	dev := &sliceDev{memDev: *newMemDev(size, 31), bad: 3 << 20}
	s := newTestServer(t, Config{MaxInFlight: 4}, Export{Device: dev})
	length := func(i uint64) uint32 { return uint32(4096 * (1 + i%48)) } // up to 192 KiB
	offset := func(i uint64) uint64 { return (i * 7919 * 512) % (size - 256<<10) }
	bad := func(i uint64) bool {
		o, l := int64(offset(i)), int64(length(i))
		return l >= sliceMin && o < size-1<<20 && o < dev.bad+4096 && o+l > dev.bad
	}
	for _, structured := range []bool{false, true} {
		c, _ := startConn(t, s)
		c.goExport("", structured, false)
		const n = 500
		go func() {
			var b []byte
			for i := uint64(0); i < n; i++ {
				b = append(b, reqBytes(0, CmdRead, i, offset(i), length(i))...)
			}
			c.c.Write(b)
		}()
		for range n {
			var cookie uint64
			var data []byte
			var errno uint32
			if structured {
				var ch chunk
				_, errno, ch = c.anyReply()
				cookie = ch.cookie
				if errno == 0 {
					data = ch.payload[8:]
				} else if !bad(cookie) {
					t.Fatalf("reply %d: errno %d", cookie, errno)
				}
			} else {
				errno, cookie = c.simple()
				if errno == 0 {
					data = c.read(int(length(cookie)))
				}
			}
			if bad(cookie) {
				if errno != EIO {
					t.Fatalf("reply %d: errno %d, want EIO", cookie, errno)
				}
				continue
			}
			off := offset(cookie)
			if errno != 0 || len(data) != int(length(cookie)) || !bytes.Equal(data, dev.data[off:off+uint64(len(data))]) {
				t.Fatalf("reply %d wrong (errno %d)", cookie, errno)
			}
		}
		c.req(0, CmdDisc, 0, 0, 0)
		c.expectClosed()
	}
	if dev.lent.Load() == 0 || dev.fail.Load() == 0 {
		t.Fatalf("lent %d, failed %d: want both", dev.lent.Load(), dev.fail.Load())
	}
}
