package nbd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// Inline READs. A small READ whose bytes the device can produce without
// waiting for storage (blockdev.NoWaitReader: page-cached file data via
// preadv2 RWF_NOWAIT, a content-cache hit) is answered on the reader
// goroutine itself, with no hand-off to a worker: its reply joins c.pend,
// and the reader queues all pending replies at once (one writev when no
// one else is writing) when it has decoded every request already
// buffered (and, on a plain socket, those that one read attempt without
// waiting finds: pollRequests), before anything that may wait (reading
// the socket, the READ budget, a busy worker pool), and at the latest
// every inlineBatch replies or inlineBatchBytes bytes. A pipeline of requests that arrive
// together thus costs one read, one preadv2 per request and one writev.
// Whatever would block goes to the workers as before.

const (
	// inlineMax is the largest READ tried inline; larger ones (and those
	// sent with sendfile) go to workers, so the reader never copies much.
	inlineMax = 64 << 10
	// inlineBatch and inlineBatchBytes bound c.pend, so a client that
	// keeps the input buffer full still gets its replies soon.
	inlineBatch      = 64
	inlineBatchBytes = 1 << 20
)

// tryInline answers READ r on the reader goroutine if the device can
// read it without waiting; the caller holds r's budget, which goes with
// the reply on success. It returns false to hand r to a worker.
func (c *conn) tryInline(r request) (ok bool) {
	if r.length >= zeroCopyMin && c.ranger != nil && r.length <= c.srv.cfg.MaxRequest {
		return c.zeroCopyInline(r)
	}
	if c.nowait == nil || r.length > inlineMax || r.length > c.srv.cfg.MaxRequest {
		return false
	}
	if errno, _ := c.checkRange(r); errno != 0 {
		return false // the worker sends the error reply
	}
	obs := c.srv.cfg.Observer
	var t0 time.Time
	if obs != nil {
		t0 = time.Now()
	}
	n := int(r.length)
	bp := c.srv.bufs.get(n)
	buf := *bp
	data := buf[readHeadroom : readHeadroom+n]
	if !c.readAtNoWait(data, int64(r.offset)) {
		c.srv.bufs.put(bp)
		return false
	}
	out := c.frameRead(buf, r, n)
	c.addPending(reply{b: out, bp: bp, cost: c.readCost(r)}, r, t0, len(out))
	return true
}

// addPending adds READ r's reply of size bytes, answered on the reader
// since t0 (zero without an Observer), to c.pend, queueing c.pend when it
// is full.
func (c *conn) addPending(rp reply, r request, t0 time.Time, size int) {
	if obs := c.srv.cfg.Observer; obs != nil {
		obs.RequestStart(c.exp.Name, r.typ, r.length)
		obs.RequestDone(RequestInfo{Export: c.exp.Name, Command: r.typ, Offset: r.offset,
			Length: r.length, Duration: time.Since(t0)})
	}
	c.pend = append(c.pend, rp)
	c.pendBytes += size
	if len(c.pend) >= inlineBatch || c.pendBytes >= inlineBatchBytes {
		c.flushPending()
	}
}

// zeroCopyInline queues READ r's zero-copy reply (header, then the file
// range with sendfile) from the reader goroutine: nothing is read here, so
// a worker would only add a hand-off (and on a busy machine a thread
// wake-up per request). False when r is not zero-copy: the worker then
// reads it (it does not try zero-copy again), or answers the error.
func (c *conn) zeroCopyInline(r request) (ok bool) {
	if errno, _ := c.checkRange(r); errno != 0 {
		return false
	}
	defer func() {
		if p := recover(); p != nil {
			c.srv.logBackendErr("zero-copy lookup", c.exp.Name, r.offset, r.length, fmt.Errorf("panic: %v", p))
			ok = false
		}
	}()
	obs := c.srv.cfg.Observer
	var t0 time.Time
	if obs != nil {
		t0 = time.Now()
	}
	rp, ok := c.zeroCopyReply(r)
	if !ok {
		return false
	}
	rp.cost = c.readCost(r)
	c.addPending(rp, r, t0, rp.n+int(rp.fLen))
	return true
}

// readAtNoWait is readAt without waiting: false if the device would block
// (or panics: the worker then reads again and answers EIO if it must).
func (c *conn) readAtNoWait(data []byte, off int64) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			c.srv.logBackendErr("no-wait read", c.exp.Name, uint64(off), uint32(len(data)), fmt.Errorf("panic: %v", p))
			ok = false
		}
	}()
	if data = c.clipTail(data, off); len(data) == 0 {
		return true
	}
	n, err := c.nowait.ReadAtNoWait(data, off)
	return err == nil && n == len(data)
}

// flushPending queues the pending inline replies, writing them (and
// whatever else is queued) right away when no one is writing.
func (c *conn) flushPending() {
	if len(c.pend) == 0 {
		return
	}
	c.enqueueAll(c.pend)
	clear(c.pend) // drop references to buffers
	c.pend = c.pend[:0]
	c.pendBytes = 0
}

// sockReader is what br reads from a socket without TLS: the socket, or
// with nowait set one read attempt that does not wait for data.
type sockReader struct {
	nc     net.Conn
	rc     syscall.RawConn
	nowait bool

	// the attempt's state, with its function made once (no allocation)
	buf []byte
	n   int
	err error
	fn  func(fd uintptr) bool
}

// errNoData: nothing to read without waiting (bufio keeps its buffer and
// forgets the error once returned).
var errNoData = errors.New("no data without waiting")

func (s *sockReader) Read(p []byte) (int, error) {
	if !s.nowait {
		return s.nc.Read(p)
	}
	s.buf = p
	cerr := s.rc.Read(s.fn)
	n, err := s.n, s.err
	s.buf, s.err = nil, nil
	if cerr != nil || err != nil || n <= 0 {
		return 0, errNoData // the next (waiting) read reports errors and EOF
	}
	return n, nil
}

// newReader sets up br over the connection (through a sockReader when the
// connection is a plain socket).
func (c *conn) newReader() {
	var r io.Reader = c.nc
	if sc, ok := c.nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			s := &sockReader{nc: c.nc, rc: rc}
			s.fn = func(fd uintptr) bool {
				s.n, s.err = syscall.Read(int(fd), s.buf)
				return true // one attempt, never wait
			}
			c.sr = s
			r = c.sr
		}
	}
	c.br = bufio.NewReaderSize(r, 64<<10)
}

// pollRequests reads whatever requests have arrived, without waiting.
func (c *conn) pollRequests() {
	if c.sr == nil {
		return
	}
	c.sr.nowait = true
	c.br.Peek(requestHdrLen)
	c.sr.nowait = false
}
