package nbd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// Replies leave through a queue with flat combining: a goroutine with a
// finished reply appends it to the queue; if no one is writing, it becomes
// the writer and sends everything queued, in one writev per batch, until
// the queue is empty. Under load, replies that finish while a write is in
// progress go out together in the next batch, so there is one write
// syscall per batch instead of one per request, and workers never wait
// for the socket unless they are the writer.
//
// Each reply is one element of the writev, so replies never interleave.
// Pooled READ buffers and their budget are released by the writer once
// the bytes are written (or dropped after a write error).

// sendBuffer is the SO_SNDBUF asked for on transmission sockets: large
// replies then leave in fewer, bigger socket writes and the client's reads
// rarely wait on the server (Linux caps it at net.core.wmem_max).
const sendBuffer = 4 << 20

// reply is one queued reply: b (a pooled READ buffer bp or a buffer handed
// over), or up to replyScratch bytes copied into small, optionally followed
// by lent slices segs or by fLen bytes of f at fOff sent with sendfile
// (zero-copy READ).
type reply struct {
	b     []byte
	bp    *[]byte // returned to the pool once written
	cost  int64   // READ budget released once written
	n     int
	small [replyScratch]byte
	segs  [][]byte // lent slices after the header (blockdev.SliceReader)

	f          *os.File
	fOff, fLen int64
	release    func()  // returns a lent f (blockdev.FileLeaser) once sent or dropped
	req        request // for the log when f comes up short
}

func (r *reply) bytes() []byte {
	if r.b != nil {
		return r.b
	}
	return r.small[:r.n]
}

// sendOwned queues b, which the queue now owns: bp goes back to the pool
// and cost back to the budget once b is written.
func (c *conn) sendOwned(b []byte, bp *[]byte, cost int64) {
	c.enqueue(&reply{b: b, bp: bp, cost: cost})
}

// enqueue adds r to the queue and, if no one is writing, writes batches
// until the queue is empty. After the first write error every later reply
// is dropped and the connection is closed so the reader stops.
func (c *conn) enqueue(r *reply) {
	c.qmu.Lock()
	if c.werr != nil {
		c.qmu.Unlock()
		c.written(r)
		return
	}
	c.queue = append(c.queue, *r)
	c.writeQueued()
}

// enqueueAll is enqueue for several replies (the reader's inline ones),
// under one lock. rs may be reused once it returns.
func (c *conn) enqueueAll(rs []reply) {
	c.qmu.Lock()
	if c.werr != nil {
		c.qmu.Unlock()
		for i := range rs {
			c.written(&rs[i])
		}
		return
	}
	c.queue = append(c.queue, rs...)
	c.writeQueued()
}

// writeQueued is called with qmu held and unlocks it: unless someone is
// writing already, it writes batches until the queue is empty.
func (c *conn) writeQueued() {
	if c.writing {
		c.qmu.Unlock()
		return
	}
	c.writing = true
	for len(c.queue) > 0 {
		batch := c.queue
		c.queue = c.spare[:0]
		failed := c.werr != nil
		c.qmu.Unlock()
		var err error
		if !failed {
			err = c.writeBatch(batch)
		}
		for i := range batch {
			c.written(&batch[i])
		}
		clear(batch) // drop references to buffers
		c.qmu.Lock()
		c.spare = batch[:0]
		if err != nil && c.werr == nil {
			c.werr = err
			c.raw.Close()
		}
	}
	c.writing = false
	c.qmu.Unlock()
}

// writeBatch sends the replies of batch in order, under one write deadline.
func (c *conn) writeBatch(batch []reply) error {
	if c.writeTimeout > 0 {
		c.raw.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	}
	if len(batch) == 1 && batch[0].f == nil && batch[0].segs == nil {
		_, err := c.nc.Write(batch[0].bytes())
		return err
	}
	iov := c.iov[:0]
	defer func() { c.iov = iov[:0] }()
	for i := range batch {
		iov = append(iov, batch[i].bytes())
		iov = append(iov, batch[i].segs...)
		if batch[i].f == nil {
			continue
		}
		err := c.writev(iov)
		iov = iov[:0]
		if err == nil {
			err = c.sendFile(&batch[i])
		}
		if err != nil {
			return err
		}
	}
	return c.writev(iov)
}

func (c *conn) writev(iov net.Buffers) error {
	bufs := iov // WriteTo consumes its receiver
	_, err := bufs.WriteTo(c.nc)
	clear(iov) // drop references to buffers
	return err
}

// errShortFile: the file behind a zero-copy READ ended early.
var errShortFile = errors.New("file shorter than when composed (truncated during zero-copy send)")

// sendFile sends r's file range with sendfile(2). Its header is already
// out, so a short file cannot become an error reply: the error closes the
// connection and the client sees a short reply, never wrong bytes.
func (c *conn) sendFile(r *reply) error {
	sc, err := c.raw.(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	fc, err := r.f.SyscallConn()
	if err != nil {
		return err
	}
	off, left := r.fOff, r.fLen
	var serr error
	cerr := fc.Control(func(ffd uintptr) {
		werr := sc.Write(func(sfd uintptr) bool {
			for left > 0 {
				n, err := syscall.Sendfile(int(sfd), int(ffd), &off, int(min(left, 1<<30)))
				switch {
				case err == syscall.EAGAIN:
					return false // wait until the socket is writable
				case err == syscall.EINTR:
				case err != nil:
					serr = err
					return true
				case n == 0:
					serr = errShortFile
					return true
				default:
					left -= int64(n)
				}
			}
			return true
		})
		if serr == nil {
			serr = werr
		}
	})
	if serr == nil {
		serr = cerr
	}
	if errors.Is(serr, errShortFile) || errors.Is(serr, syscall.EIO) {
		// The file's fault, not the client's: worth a (rate-limited) line.
		serr = fmt.Errorf("%s at %d: %w", r.f.Name(), off, serr)
		c.srv.logBackendErr("zero-copy send", c.exp.Name, r.req.offset, r.req.length, serr)
	}
	return serr
}

// written releases what a reply held once it is sent or dropped.
func (c *conn) written(r *reply) {
	if r.bp != nil {
		c.srv.bufs.put(r.bp)
	}
	if r.release != nil {
		r.release()
	}
	c.release(r.cost)
}

func (c *conn) writeFailed() bool {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	return c.werr != nil
}

// setSendBuffer enlarges the socket send buffer when the conn allows it.
func setSendBuffer(nc net.Conn) {
	if s, ok := nc.(interface{ SetWriteBuffer(int) error }); ok {
		s.SetWriteBuffer(sendBuffer)
	}
}
