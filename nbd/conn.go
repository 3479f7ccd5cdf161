package nbd

import (
	"bufio"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
)

// conn is the state of one client connection, from handshake to close.
type conn struct {
	srv    *Server
	raw    net.Conn // the accepted connection
	nc     net.Conn // raw, or the TLS connection over it
	br     *bufio.Reader
	sr     *sockReader // br's source when it is the socket itself (no TLS)
	remote string
	done   chan struct{} // closed when the connection has ended

	attached *Export // guarded by srv.mu: the export being served (RemoveExport)

	dmu       sync.Mutex // guards the fields below and deadline changes
	stopping  bool
	stopCause error
	inTrans   bool

	// handshake state
	noZeroes bool
	obuf     []byte
	optbuf   []byte

	// negotiated transmission state (read-only once transmission starts)
	exp        *Export
	dev        blockdev.Device
	mapper     blockdev.Mapper
	prefetcher blockdev.Prefetcher
	ranger     blockdev.FileRanger   // zero-copy READs; nil with TLS
	leaser     blockdev.FileLeaser   // the same for lent files (preferred)
	nowait     blockdev.NoWaitReader // small READs on the reader goroutine (inline.go)
	slicer     blockdev.SliceReader  // READs sent from memory the device lends; nil with TLS
	devSize    int64                 // Device.Size()
	size       int64                 // readable range (devSize, or KernelSize on the kernel path)
	structured bool
	metaAlloc  bool
	flags      uint16

	// transmission machinery
	hdr      [requestHdrLen]byte
	work     chan request
	nworkers int
	wg       sync.WaitGroup

	// replies of inline READs not yet queued (reader-owned, inline.go)
	pend      []reply
	pendBytes int

	// reply queue (sendq.go)
	qmu          sync.Mutex
	queue, spare []reply
	writing      bool          // a goroutine is writing batches from queue
	werr         error         // first write error
	iov          net.Buffers   // writer-owned
	writeTimeout time.Duration // per batch of replies; 0: none (kernel path)

	lingerAfterReply bool // drain input before closing (see linger)

	// READ buffers in flight are bounded by bytes as well as by count, so
	// MaxInFlight large reads cannot pin MaxInFlight*MaxRequest of memory.
	budgetMu   sync.Mutex
	budgetCond sync.Cond
	inflight   int64
	budget     int64
}

// acquire reserves n bytes of read buffer, waiting while other requests
// hold the budget. One request may always proceed alone. The reader
// queues its pending inline replies before it waits (they hold budget).
func (c *conn) acquire(n int64) {
	c.budgetMu.Lock()
	if c.inflight > 0 && c.inflight+n > c.budget && len(c.pend) > 0 {
		c.budgetMu.Unlock()
		c.flushPending()
		c.budgetMu.Lock()
	}
	for c.inflight > 0 && c.inflight+n > c.budget {
		c.budgetCond.Wait()
	}
	c.inflight += n
	c.budgetMu.Unlock()
	if !c.srv.budget.tryAcquire(n) {
		c.flushPending()
		c.srv.budget.acquire(n)
	}
}

func (c *conn) release(n int64) {
	if n == 0 {
		return
	}
	c.srv.budget.release(n)
	c.budgetMu.Lock()
	c.inflight -= n
	c.budgetMu.Unlock()
	c.budgetCond.Signal()
}

// readCost is the buffer budget a request takes while in flight.
func (c *conn) readCost(r request) int64 {
	if r.typ != CmdRead || r.length > c.srv.cfg.MaxRequest {
		return 0
	}
	return int64(r.length)
}

// replyScratch holds a structured error chunk with a short message.
const replyScratch = structHdrLen + 6 + 100

// stop interrupts the connection for Shutdown (cause nil) or a cancelled
// context: reading stops, in-flight replies are still sent.
func (c *conn) stop(cause error) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if !c.stopping {
		c.stopping = true
		c.stopCause = cause
	}
	now := time.Now()
	if c.inTrans {
		c.raw.SetReadDeadline(now)
	} else {
		c.raw.SetDeadline(now)
	}
}

func (c *conn) stopped() bool {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	return c.stopping
}

func (c *conn) stopErr() error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	return c.stopCause
}

func (c *conn) startHandshakeDeadline() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.stopping {
		c.raw.SetDeadline(time.Now())
		return
	}
	c.raw.SetDeadline(time.Now().Add(c.srv.cfg.HandshakeTimeout))
}

func (c *conn) enterTransmission() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.inTrans = true
	c.raw.SetDeadline(time.Time{})
	if c.stopping {
		c.raw.SetReadDeadline(time.Now())
	}
}

func (c *conn) setupTransmission(e *Export, structured, meta, kernel bool) {
	c.exp = e
	c.dev = e.Device
	c.mapper, _ = e.Device.(blockdev.Mapper)
	c.prefetcher, _ = e.Device.(blockdev.Prefetcher)
	if _, sock := c.raw.(syscall.Conn); sock && c.nc == c.raw { // not with TLS
		c.ranger, _ = e.Device.(blockdev.FileRanger)
		c.leaser, _ = e.Device.(blockdev.FileLeaser)
		// TLS would write each lent slice as a record of its own
		c.slicer, _ = e.Device.(blockdev.SliceReader)
	}
	c.nowait, _ = e.Device.(blockdev.NoWaitReader)
	c.devSize = e.Device.Size()
	c.size = c.devSize
	if kernel {
		c.size = KernelSize(c.devSize)
	}
	c.structured = structured
	c.metaAlloc = structured && meta
	c.flags = TransmissionFlags
	if structured {
		c.flags |= FlagSendDF
	}
}
