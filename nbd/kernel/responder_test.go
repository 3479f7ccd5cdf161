package kernel

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// responder is a minimal NBD transmission-phase server over a byte slice,
// standing in for package nbd so these tests do not depend on it. It answers
// READ (zeros past the slice, up to size), FLUSH, DISC, and EPERM for WRITE.
type responder struct {
	data []byte
	size int64 // device size (rounded); reads beyond fail with EINVAL

	conns  atomic.Int32 // serve calls
	reads  atomic.Int64
	discs  atomic.Int32
	active atomic.Int32

	mu   sync.Mutex
	open []net.Conn
}

const (
	reqMagic   = 0x25609513
	replyMagic = 0x67446698
	cmdRead    = 0
	cmdWrite   = 1
	cmdDisc    = 2
	cmdFlush   = 3
	errPerm    = 1
	errInval   = 22
)

func (r *responder) serve(c net.Conn) {
	r.conns.Add(1)
	r.active.Add(1)
	defer r.active.Add(-1)
	r.mu.Lock()
	r.open = append(r.open, c)
	r.mu.Unlock()
	var hdr [28]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		if binary.BigEndian.Uint32(hdr[0:4]) != reqMagic {
			return
		}
		typ := binary.BigEndian.Uint16(hdr[6:8])
		off := binary.BigEndian.Uint64(hdr[16:24])
		length := binary.BigEndian.Uint32(hdr[24:28])
		reply := make([]byte, 16)
		binary.BigEndian.PutUint32(reply[0:4], replyMagic)
		copy(reply[8:16], hdr[8:16])
		switch typ {
		case cmdRead:
			end := off + uint64(length)
			if end < off || end > uint64(r.size) {
				binary.BigEndian.PutUint32(reply[4:8], errInval)
				break
			}
			buf := make([]byte, length)
			if off < uint64(len(r.data)) {
				copy(buf, r.data[off:])
			}
			reply = append(reply, buf...)
			r.reads.Add(1)
		case cmdWrite:
			if _, err := io.CopyN(io.Discard, c, int64(length)); err != nil {
				return
			}
			binary.BigEndian.PutUint32(reply[4:8], errPerm)
		case cmdDisc:
			r.discs.Add(1)
			return
		case cmdFlush:
		default:
			binary.BigEndian.PutUint32(reply[4:8], errInval)
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}

// killAll closes every connection served so far, as a crashing server would.
func (r *responder) killAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.open {
		c.Close()
	}
	r.open = nil
}
