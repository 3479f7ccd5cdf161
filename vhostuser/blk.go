package vhostuser

import (
	"encoding/binary"
	"errors"
	"io"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
)

// virtio-blk request types and status.
const (
	blkTIn          = 0
	blkTOut         = 1
	blkTFlush       = 4
	blkTGetID       = 8
	blkTDiscard     = 11
	blkTWriteZeroes = 13
	blkSOK          = 0
	blkSIOErr       = 1
	blkSUnsupp      = 2
	blkIDBytes      = 20
	blkHeaderSize   = 16
	sectorSize      = 512
)

// blkConfig encodes struct virtio_blk_config.
func blkConfig(size int64, blockSize uint32, segMax uint32, queues int) []byte {
	c := make([]byte, virtioBlkConfigLength)
	le := binary.LittleEndian
	le.PutUint64(c[0:], uint64(size)/sectorSize) // capacity
	le.PutUint32(c[12:], segMax)                 // seg_max
	le.PutUint32(c[20:], blockSize)              // blk_size
	le.PutUint16(c[26:], 1)                      // min_io_size (in blocks)
	le.PutUint16(c[34:], uint16(queues))         // num_queues
	return c
}

// blkRequest serves one walked chain and returns the bytes written into
// the device-writable part (the used length). A chain too short to carry
// a header and a status byte is an error for the caller to report.
type blkServer struct {
	dev    blockdev.Device
	serial []byte
}

var errShortRequest = errors.New("request without a 16-byte header or a status byte")

func gather(dst []byte, segs [][]byte) int {
	n := 0
	for _, s := range segs {
		if n == len(dst) {
			break
		}
		n += copy(dst[n:], s)
	}
	return n
}

// bounceSize is the size of a worker's bounce buffer: a read request is
// read from the device in pieces of at most this many bytes.
const bounceSize = 256 << 10

// serve serves one request; bounce is the worker's own buffer (bounceSize
// bytes), which the device reads into before the bytes are copied to the
// guest.
func (b *blkServer) serve(c *chain, bounce []byte) (uint32, error) {
	var hdr [blkHeaderSize]byte
	if c.rlen < blkHeaderSize || c.wlen < 1 {
		return 0, errShortRequest
	}
	gather(hdr[:], c.readable)
	typ := binary.LittleEndian.Uint32(hdr[:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	// The status is the last writable byte; the data is before it.
	data := c.wlen - 1
	status := byte(blkSOK)
	written := uint64(0)
	switch typ {
	case blkTIn:
		status = b.read(c.writable, sector, data, bounce)
		if status == blkSOK {
			written = data
		}
	case blkTGetID:
		n := min(data, blkIDBytes)
		var id [blkIDBytes]byte
		copy(id[:], b.serial)
		scatter(c.writable, id[:n])
		written = n
	case blkTOut:
		status = blkSIOErr // read-only device (VIRTIO_BLK_F_RO)
	case blkTFlush, blkTDiscard, blkTWriteZeroes:
		status = blkSUnsupp
	default:
		status = blkSUnsupp
	}
	setLastByte(c.writable, status)
	return uint32(written + 1), nil
}

// read fills n bytes of segs from the device at sector. The device reads
// into buf, never into guest memory: the guest can change its buffers
// while the device works on them, and devices read back what they wrote
// (the shared cache keeps a fetched page for other readers and exports,
// a decoder uses its output as its window, padding is checked for zeros),
// so a guest writing into its own read buffer could otherwise change
// what other exports are served.
func (b *blkServer) read(segs [][]byte, sector, n uint64, buf []byte) byte {
	if n%sectorSize != 0 {
		return blkSIOErr
	}
	size := uint64(b.dev.Size())
	if sector > size/sectorSize || n > size-sector*sectorSize {
		return blkSIOErr
	}
	off := int64(sector * sectorSize)
	si, so := 0, 0 // the next byte of segs to fill: segs[si][so]
	for n > 0 {
		k := min(n, uint64(len(buf)))
		m, err := b.dev.ReadAt(buf[:k], off)
		if uint64(m) != k || (err != nil && !errors.Is(err, io.EOF)) {
			return blkSIOErr
		}
		for p := buf[:k]; len(p) > 0; {
			c := copy(segs[si][so:], p)
			p, so = p[c:], so+c
			if so == len(segs[si]) {
				si, so = si+1, 0
			}
		}
		off += int64(k)
		n -= k
	}
	return blkSOK
}

func scatter(segs [][]byte, p []byte) {
	for _, s := range segs {
		if len(p) == 0 {
			return
		}
		p = p[copy(s, p):]
	}
}

func setLastByte(segs [][]byte, v byte) {
	for i := len(segs) - 1; i >= 0; i-- {
		if len(segs[i]) > 0 {
			segs[i][len(segs[i])-1] = v
			return
		}
	}
}
