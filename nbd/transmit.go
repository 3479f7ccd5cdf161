package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// transmit runs the transmission phase: this goroutine decodes requests,
// answers cheap ones and small READs it can read without waiting
// (inline.go) itself and hands other READs, CACHE and BLOCK_STATUS to up
// to MaxInFlight workers. Replies go out whole through the reply queue
// (sendq.go), batched into one writev when several are ready.
func (c *conn) transmit() error {
	c.enterTransmission()
	if c.br == nil {
		c.newReader()
	}
	c.work = make(chan request)
	c.budgetCond.L = &c.budgetMu
	c.budget = max(readBudget, 2*int64(c.srv.cfg.MaxRequest))
	err := c.readLoop()
	c.flushPending()
	close(c.work)
	c.wg.Wait() // finish in-flight requests before closing
	if c.lingerAfterReply || errors.Is(err, ErrExportRemoved) {
		// Also when the export was removed: the client may have requests
		// queued that we will not read; over TCP, closing on them would
		// reset the connection and destroy replies not yet read.
		c.linger()
	}
	if cerr := c.nc.Close(); cerr != nil && err == nil && c.werr == nil && !c.stopped() {
		c.srv.log.Debug("nbd: close", "remote", c.remote, "err", cerr)
	}
	if err == nil && c.werr != nil {
		err = fmt.Errorf("nbd: send reply: %w", c.werr)
	}
	return err
}

func (c *conn) readLoop() error {
	maxReq := c.srv.cfg.MaxRequest
	for {
		if c.br.Buffered() < requestHdrLen && len(c.pend) > 0 {
			// Every request already read is answered or handed over:
			// take in requests that arrived meanwhile if that need not
			// wait, else send what is ready before the next read may.
			c.pollRequests()
			if c.br.Buffered() < requestHdrLen {
				c.flushPending()
			}
		}
		if _, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
			if c.stopped() {
				return c.stopErr()
			}
			if errors.Is(err, io.EOF) {
				return nil // client hung up between requests
			}
			return fmt.Errorf("nbd: read request: %w", err)
		}
		r, ok := decodeRequest(&c.hdr)
		if !ok {
			return fmt.Errorf("nbd: bad request magic %#x", binary.BigEndian.Uint32(c.hdr[:4]))
		}
		switch r.typ {
		case CmdRead, CmdBlockStatus, CmdCache:
			c.acquire(c.readCost(r))
			if r.typ == CmdRead && c.tryInline(r) {
				break
			}
			c.dispatch(r)
		case CmdDisc:
			return nil
		case CmdWrite:
			if r.length > maxReq {
				// We will not buffer or skip an oversized payload: answer,
				// then hang up once in-flight requests are done.
				c.inline(r, EPERM, "read-only export")
				c.lingerAfterReply = true
				return fmt.Errorf("nbd: write payload %d exceeds maximum %d", r.length, maxReq)
			}
			if c.br.Buffered() < int(r.length) {
				c.flushPending()
			}
			if _, err := c.br.Discard(int(r.length)); err != nil {
				return fmt.Errorf("nbd: skip write payload: %w", err)
			}
			c.inline(r, EPERM, "read-only export")
		case CmdTrim, CmdWriteZeroes:
			c.inline(r, EPERM, "read-only export")
		case CmdFlush:
			if r.flags&^cmdFlagsKnown != 0 {
				c.inline(r, EINVAL, "unknown command flags")
				break
			}
			c.inline(r, 0, "")
		default:
			c.inline(r, EINVAL, "unknown command")
		}
		if c.writeFailed() {
			return nil // transmit reports werr
		}
	}
}

// inline answers a request from the reader goroutine.
func (c *conn) inline(r request, errno uint32, msg string) {
	obs := c.srv.cfg.Observer
	var t0 time.Time
	if obs != nil {
		obs.RequestStart(c.exp.Name, r.typ, r.length)
		t0 = time.Now()
	}
	c.replyStatus(r, errno, msg)
	if obs != nil {
		obs.RequestDone(RequestInfo{Export: c.exp.Name, Command: r.typ, Offset: r.offset,
			Length: r.length, Errno: errno, Duration: time.Since(t0)})
	}
}

// dispatch hands r to an idle worker, starts a worker if fewer than
// MaxInFlight exist, or waits for one to become free.
func (c *conn) dispatch(r request) {
	select {
	case c.work <- r:
		return
	default:
	}
	if c.nworkers < c.srv.cfg.MaxInFlight {
		c.nworkers++
		c.wg.Add(1)
		w := &worker{c: c}
		go w.run(r)
		return
	}
	c.flushPending() // before waiting for a worker
	c.work <- r
}

// replyStatus sends a reply without payload: a simple reply, or with
// structured replies an error chunk for failures.
func (c *conn) replyStatus(r request, errno uint32, msg string) {
	var rp reply
	buf := rp.small[:]
	if errno == 0 || !c.structured {
		putSimpleReply(buf, errno, r.cookie)
		rp.n = simpleHdrLen
		c.enqueue(&rp)
		return
	}
	if len(msg) > len(buf)-structHdrLen-6 {
		msg = msg[:len(buf)-structHdrLen-6]
	}
	putChunkHeader(buf, replyFlagDone, replyTypeError, r.cookie, uint32(6+len(msg)))
	binary.BigEndian.PutUint32(buf[20:24], errno)
	binary.BigEndian.PutUint16(buf[24:26], uint16(len(msg)))
	rp.n = 26 + copy(buf[26:], msg)
	c.enqueue(&rp)
}

// checkRange validates offset and length against the readable range.
func (c *conn) checkRange(r request) (uint32, string) {
	if r.flags&^cmdFlagsKnown != 0 {
		return EINVAL, "unknown command flags"
	}
	if r.length == 0 {
		return EINVAL, "zero length"
	}
	if r.offset > uint64(c.size) || uint64(r.length) > uint64(c.size)-r.offset {
		return EINVAL, "range beyond end of export"
	}
	return 0, ""
}

// worker serves requests handed over by the reader.
type worker struct {
	c *conn
}

func (w *worker) run(first request) {
	defer w.c.wg.Done()
	w.handle(first)
	for r := range w.c.work {
		w.handle(r)
	}
}

func (w *worker) handle(r request) {
	c := w.c
	obs := c.srv.cfg.Observer
	var t0 time.Time
	if obs != nil {
		obs.RequestStart(c.exp.Name, r.typ, r.length)
		t0 = time.Now()
	}
	var errno uint32
	handed := false // the READ budget went to the reply queue with the buffer
	defer func() {
		if !handed {
			c.release(c.readCost(r))
		}
		// A panicking device must not take the whole server down.
		if p := recover(); p != nil {
			c.srv.log.Error("nbd: panic serving request", "export", c.exp.Name, "command", r.typ.String(), "offset", r.offset, "panic", p)
			errno = EIO
			c.replyStatus(r, EIO, "internal error")
			if obs != nil {
				obs.RequestDone(RequestInfo{Export: c.exp.Name, Command: r.typ, Offset: r.offset,
					Length: r.length, Errno: errno, Duration: time.Since(t0)})
			}
		}
	}()
	switch r.typ {
	case CmdRead:
		errno, handed = w.read(r)
	case CmdCache:
		errno = w.cache(r)
	case CmdBlockStatus:
		errno = w.blockStatus(r)
	}
	if obs != nil {
		obs.RequestDone(RequestInfo{Export: c.exp.Name, Command: r.typ, Offset: r.offset,
			Length: r.length, Errno: errno, Duration: time.Since(t0)})
	}
}

// read reads the whole range first and then queues header and data as one
// reply in a pooled buffer that has room for the header in front (READs
// the device lends go out from its slices; zero-copy was tried on the
// reader, inline.go). handed
// reports that the buffer and its budget now belong to the reply queue.
func (w *worker) read(r request) (errno uint32, handed bool) {
	c := w.c
	if errno, msg := c.checkRange(r); errno != 0 {
		c.replyStatus(r, errno, msg)
		return errno, false
	}
	if r.length > c.srv.cfg.MaxRequest {
		c.replyStatus(r, EINVAL, "read larger than maximum payload")
		return EINVAL, false
	}
	if r.length >= sliceMin && c.slicer != nil {
		if errno, ok := c.lent(r); ok {
			return errno, errno == 0
		}
	}
	n := int(r.length)
	bp := c.srv.bufs.get(n)
	buf := *bp
	data := buf[readHeadroom : readHeadroom+n]
	if err := c.readAt(data, int64(r.offset)); err != nil {
		c.srv.bufs.put(bp)
		c.srv.logBackendErr("backend read", c.exp.Name, r.offset, r.length, err)
		c.replyStatus(r, EIO, "backend read error")
		return EIO, false
	}
	out := c.frameRead(buf, r, n)
	c.sendOwned(out, bp, c.readCost(r))
	return 0, true
}

// zeroCopyMin is the smallest READ sent with sendfile(2) when the device
// names the file behind it (blockdev.FileRanger); smaller ones are copied.
const zeroCopyMin = 64 << 10

// zeroCopyReply makes READ r's reply as a header followed by a file range
// sent with sendfile, if the device maps the whole range to one file that
// still holds it. Otherwise it returns false and the range is read as
// usual (so a truncated file gets the read path's EIO reply).
func (c *conn) zeroCopyReply(r request) (reply, bool) {
	off, n := int64(r.offset), int64(r.length)
	if n > c.devSize-off {
		return reply{}, false // the kernel path's zero tail
	}
	var (
		f       *os.File
		foff    int64
		release func()
		ok      bool
	)
	if c.leaser != nil {
		f, foff, release, ok = c.leaser.FileLease(off, n)
	} else {
		f, foff, ok = c.ranger.FileRange(off, n)
	}
	if !ok {
		return reply{}, false
	}
	if st, err := f.Stat(); err != nil || st.Size() < foff+n {
		if release != nil {
			release()
		}
		return reply{}, false
	}
	rp := reply{f: f, fOff: foff, fLen: n, release: release, req: r}
	c.frameSmall(&rp, r, n)
	return rp, true
}

// frameSmall puts the header of READ r's reply, whose n data bytes follow
// from elsewhere (a file, lent slices), in rp.small.
func (c *conn) frameSmall(rp *reply, r request, n int64) {
	if c.structured {
		putChunkHeader(rp.small[:], replyFlagDone, replyTypeData, r.cookie, uint32(8+n))
		binary.BigEndian.PutUint64(rp.small[structHdrLen:], r.offset)
		rp.n = structHdrLen + 8
	} else {
		putSimpleReply(rp.small[:], 0, r.cookie)
		rp.n = simpleHdrLen
	}
}

// sliceMin is the smallest READ sent from slices the device lends
// (blockdev.SliceReader) rather than copied into a buffer.
const sliceMin = 16 << 10

// lent queues READ r's reply from slices the device lends, if it lends
// the range. handled is false when it does not (read as usual); errno is
// the error reply sent when lending failed.
func (c *conn) lent(r request) (errno uint32, handled bool) {
	off, n := int64(r.offset), int(r.length)
	if int64(n) > c.devSize-off {
		return 0, false // the kernel path's zero tail
	}
	segs, ok, err := c.slicer.ReadSlices(make([][]byte, 0, 4), off, n)
	if !ok {
		return 0, false
	}
	if err != nil {
		c.srv.logBackendErr("backend read", c.exp.Name, r.offset, r.length, err)
		c.replyStatus(r, EIO, "backend read error")
		return EIO, true
	}
	rp := reply{segs: segs, cost: c.readCost(r)}
	c.frameSmall(&rp, r, int64(n))
	c.enqueue(&rp)
	return 0, true
}

// frameRead puts the reply header for READ r in the headroom of buf,
// whose n data bytes start at readHeadroom, and returns the whole reply.
func (c *conn) frameRead(buf []byte, r request, n int) []byte {
	if c.structured {
		out := buf[readHeadroom-structHdrLen-8 : readHeadroom+n]
		putChunkHeader(out, replyFlagDone, replyTypeData, r.cookie, uint32(8+n))
		binary.BigEndian.PutUint64(out[structHdrLen:], r.offset)
		return out
	}
	out := buf[readHeadroom-simpleHdrLen : readHeadroom+n]
	putSimpleReply(out, 0, r.cookie)
	return out
}

// clipTail zeroes the part of data past the device size (the kernel
// path's rounded tail) and returns the rest.
func (c *conn) clipTail(data []byte, off int64) []byte {
	if avail := c.devSize - off; avail < int64(len(data)) {
		avail = max(avail, 0)
		clear(data[avail:])
		data = data[:avail]
	}
	return data
}

// readAt fills data from the device at off; bytes past the device size
// (the kernel path's rounded tail) read as zeros.
func (c *conn) readAt(data []byte, off int64) error {
	if data = c.clipTail(data, off); len(data) == 0 {
		return nil
	}
	n, err := c.dev.ReadAt(data, off)
	if n == len(data) {
		return nil // io.EOF exactly at the end is fine
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func (w *worker) cache(r request) uint32 {
	c := w.c
	errno, msg := c.checkRange(r)
	if errno == 0 && c.prefetcher != nil {
		off := int64(r.offset)
		n := min(int64(r.length), c.devSize-off)
		if n > 0 {
			if err := c.prefetcher.Prefetch(off, n); err != nil {
				c.srv.logBackendErr("prefetch", c.exp.Name, r.offset, r.length, err)
				errno, msg = EIO, "prefetch failed"
			}
		}
	}
	c.replyStatus(r, errno, msg)
	return errno
}

// blockStatus answers base:allocation: holes are HOLE|ZERO, the rest data.
func (w *worker) blockStatus(r request) uint32 {
	c := w.c
	if !c.metaAlloc {
		c.replyStatus(r, EINVAL, "no metadata context negotiated")
		return EINVAL
	}
	if errno, msg := c.checkRange(r); errno != 0 {
		c.replyStatus(r, errno, msg)
		return errno
	}
	off, end := int64(r.offset), int64(r.offset)+int64(r.length)
	b := make([]byte, structHdrLen+4, structHdrLen+4+16*8) // owned by the queue once sent
	ndesc := 0
	var lastStatus uint32
	add := func(length int64, status uint32) {
		if ndesc > 0 && status == lastStatus {
			p := len(b) - 8
			binary.BigEndian.PutUint32(b[p:], binary.BigEndian.Uint32(b[p:])+uint32(length))
			return
		}
		b = binary.BigEndian.AppendUint32(b, uint32(length))
		b = binary.BigEndian.AppendUint32(b, status)
		ndesc++
		lastStatus = status
	}
	pos := off
	if c.mapper != nil {
		exts, err := c.mapper.Extents(off, int64(r.length))
		if err != nil {
			c.srv.logBackendErr("extent lookup", c.exp.Name, r.offset, r.length, err)
			c.replyStatus(r, EIO, "extent lookup failed")
			return EIO
		}
		for _, e := range exts {
			if pos >= end || ndesc >= maxDescriptors {
				break
			}
			eEnd := e.Offset + e.Length
			if e.Length <= 0 || eEnd <= pos || e.Offset > pos {
				if e.Offset > pos {
					break // gap in the mapper's answer: stop here
				}
				continue
			}
			status := uint32(0)
			if e.Hole {
				status = stateHole | stateZero
			}
			if r.flags&cmdFlagReqOne != 0 && ndesc == 1 && status != lastStatus {
				break // REQ_ONE: one descriptor only
			}
			add(min(eEnd, end)-pos, status)
			pos = min(eEnd, end)
		}
	}
	if ndesc == 0 {
		add(end-pos, 0) // unknown: report data
	}
	putChunkHeader(b, replyFlagDone, replyTypeBS, r.cookie, uint32(len(b)-structHdrLen))
	binary.BigEndian.PutUint32(b[structHdrLen:], metaAllocID)
	c.sendOwned(b, nil, 0)
	return 0
}

// linger half-closes the connection and briefly drains what the client
// still sends, so that over TCP the last reply is not destroyed by a reset
// when the server hangs up on unread input (an oversized WRITE payload).
func (c *conn) linger() {
	cw, ok := c.nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	c.raw.SetReadDeadline(time.Now().Add(time.Second))
	io.CopyN(io.Discard, c.br, 4<<20)
}
