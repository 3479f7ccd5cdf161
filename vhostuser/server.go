package vhostuser

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
)

// Config describes the device served.
type Config struct {
	Device    blockdev.Device
	Queues    int    // queues offered (GET_QUEUE_NUM, num_queues); default 4
	BlockSize uint32 // blk_size; default 4096
	SegMax    uint32 // seg_max; default 126 (queue size 128 - 2)
	Serial    string // VIRTIO_BLK_T_GET_ID (at most 20 bytes)
	Logger    *slog.Logger
}

// Server serves one front-end at a time: vhost-user is one connection per
// device. After a front-end leaves, the next is accepted (a front-end
// with reconnect re-sends the memory table and ring state).
type Server struct {
	cfg Config
	log *slog.Logger
	blk *blkServer

	mu   sync.Mutex
	conn *net.UnixConn
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Device == nil {
		return nil, errors.New("vhostuser: no device")
	}
	if cfg.Queues == 0 {
		cfg.Queues = 4
	}
	if cfg.Queues < 1 || cfg.Queues > 64 {
		return nil, fmt.Errorf("vhostuser: %d queues (1..64)", cfg.Queues)
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 4096
	}
	if cfg.BlockSize < sectorSize || cfg.BlockSize&(cfg.BlockSize-1) != 0 {
		return nil, fmt.Errorf("vhostuser: block size %d", cfg.BlockSize)
	}
	if cfg.SegMax == 0 {
		cfg.SegMax = 126
	}
	if len(cfg.Serial) > blkIDBytes {
		cfg.Serial = cfg.Serial[:blkIDBytes]
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: cfg.Logger, blk: &blkServer{dev: cfg.Device, serial: []byte(cfg.Serial)}}, nil
}

// Serve accepts front-ends on l (a unix listener) one after another until
// ctx is done or l is closed. It returns nil when ctx ends.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() {
		l.Close()
		s.mu.Lock()
		if s.conn != nil {
			s.conn.Close()
		}
		s.mu.Unlock()
	})
	defer stop()
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		c, ok := nc.(*net.UnixConn)
		if !ok {
			nc.Close()
			return fmt.Errorf("vhostuser: %T is not a unix socket", nc)
		}
		s.mu.Lock()
		s.conn = c
		s.mu.Unlock()
		if ctx.Err() != nil {
			c.Close()
			return nil
		}
		s.log.Info("vhost-user front-end connected")
		err = s.ServeConn(c)
		s.mu.Lock()
		s.conn = nil
		s.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			s.log.Warn("vhost-user connection closed", "err", err)
		} else {
			s.log.Info("vhost-user front-end disconnected")
		}
	}
}

// ServeConn serves one front-end until it disconnects or breaks the
// protocol; it closes c. A clean disconnect returns nil.
func (s *Server) ServeConn(c *net.UnixConn) error {
	st := &connState{s: s, c: c, queues: make([]*queue, s.cfg.Queues)}
	for i := range st.queues {
		st.queues[i] = &queue{index: i, kick: -1, call: -1, err: -1}
	}
	defer st.close()
	for {
		m, fds, err := st.readMessage()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := st.handle(m, fds); err != nil {
			return err
		}
	}
}

// queue is one virtqueue's state and its worker.
type queue struct {
	index   int
	num     uint16
	addr    vringAddr
	hasAddr bool
	base    uint16
	enabled bool
	kick    int
	call    int
	err     int

	running bool
	stopFD  int // eventfd waking the worker to stop
	done    chan struct{}
	ring    *vring
	w       *worker
}

type connState struct {
	s        *Server
	c        *net.UnixConn
	features uint64
	protocol uint64
	mem      *memTable
	queues   []*queue
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func (st *connState) readMessage() (*message, []int, error) {
	hb := make([]byte, headerSize)
	oob := make([]byte, unix.CmsgSpace(4*maxFDs))
	n, oobn, flags, _, err := st.c.ReadMsgUnix(hb, oob)
	var fds []int
	if oobn > 0 {
		cms, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			return nil, nil, fmt.Errorf("control message: %v", perr)
		}
		for _, cm := range cms {
			f, perr := unix.ParseUnixRights(&cm)
			if perr != nil {
				closeFDs(fds)
				return nil, nil, fmt.Errorf("control message: %v", perr)
			}
			fds = append(fds, f...)
		}
	}
	if flags&unix.MSG_CTRUNC != 0 {
		closeFDs(fds)
		return nil, nil, fmt.Errorf("more than %d fds in one message", maxFDs)
	}
	if err != nil {
		closeFDs(fds)
		return nil, nil, err
	}
	if n == 0 {
		closeFDs(fds)
		return nil, nil, io.EOF
	}
	if _, err := io.ReadFull(st.c, hb[n:]); err != nil {
		closeFDs(fds)
		return nil, nil, fmt.Errorf("header: %w", err)
	}
	h, err := parseHeader(hb)
	if err != nil {
		closeFDs(fds)
		return nil, nil, err
	}
	p := make([]byte, h.Size)
	if _, err := io.ReadFull(st.c, p); err != nil {
		closeFDs(fds)
		return nil, nil, fmt.Errorf("%s payload: %w", reqName(h.Request), err)
	}
	m, err := parseMessage(h, p, len(fds))
	if err != nil {
		closeFDs(fds)
		return nil, nil, err
	}
	return m, fds, nil
}

func (st *connState) reply(req uint32, p []byte) error {
	_, err := st.c.Write(encodeReply(req, p))
	return err
}

// ack answers a request that has no reply of its own, when the front-end
// asked (REPLY_ACK): 0 success, 1 failure.
func (st *connState) ack(m *message, ok bool) error {
	if m.Flags&flagNeedReply == 0 || st.protocol&protoReplyAck == 0 {
		return nil
	}
	v := uint64(0)
	if !ok {
		v = 1
	}
	return st.reply(m.Request, u64Bytes(v))
}

func (st *connState) queue(i uint32, m *message) (*queue, error) {
	if int(i) >= len(st.queues) {
		return nil, fmt.Errorf("%s: queue %d of %d", reqName(m.Request), i, len(st.queues))
	}
	return st.queues[i], nil
}

// handle applies one request; an error closes the connection.
func (st *connState) handle(m *message, fds []int) error {
	log := st.s.log
	log.Debug("vhost-user", "request", reqName(m.Request), "size", m.Size, "fds", len(fds))
	switch m.Request {
	case reqGetFeatures:
		return st.reply(m.Request, u64Bytes(offeredFeatures))
	case reqSetFeatures:
		if m.U64&^uint64(offeredFeatures) != 0 {
			return fmt.Errorf("SET_FEATURES %#x: bits %#x were not offered", m.U64, m.U64&^uint64(offeredFeatures))
		}
		st.features = m.U64
		return st.ack(m, true)
	case reqGetProtocolFeatures:
		return st.reply(m.Request, u64Bytes(offeredProtocolFeats))
	case reqSetProtocolFeatures:
		if m.U64&^uint64(offeredProtocolFeats) != 0 {
			return fmt.Errorf("SET_PROTOCOL_FEATURES %#x: bits %#x were not offered", m.U64, m.U64&^uint64(offeredProtocolFeats))
		}
		st.protocol = m.U64
		return st.ack(m, true)
	case reqGetQueueNum:
		return st.reply(m.Request, u64Bytes(uint64(len(st.queues))))
	case reqSetOwner:
		return st.ack(m, true)
	case reqResetOwner:
		st.stopAll()
		for _, q := range st.queues {
			q.reset()
		}
		st.features = 0
		return st.ack(m, true)
	case reqSetMemTable:
		mem, err := mapMemTable(m.Regions, fds)
		if err != nil {
			return fmt.Errorf("SET_MEM_TABLE: %v", err)
		}
		// Rings running over the old table are stopped, remapped and
		// restarted where they were.
		var restart []*queue
		for _, q := range st.queues {
			if q.running {
				st.stop(q)
				q.base = q.ring.lastAvail
				restart = append(restart, q)
			}
		}
		st.mem.unmap()
		st.mem = mem
		log.Debug("vhost-user memory table", "regions", len(m.Regions))
		for _, q := range restart {
			if err := st.maybeStart(q); err != nil {
				return err
			}
		}
		return st.ack(m, true)
	case reqSetVringNum:
		q, err := st.queue(m.Index, m)
		if err != nil {
			return err
		}
		if m.Num == 0 || m.Num > maxQueueSize || m.Num&(m.Num-1) != 0 {
			return fmt.Errorf("SET_VRING_NUM: queue %d size %d", m.Index, m.Num)
		}
		if q.running {
			return fmt.Errorf("SET_VRING_NUM: queue %d is running", m.Index)
		}
		q.num = uint16(m.Num)
		return st.ack(m, true)
	case reqSetVringAddr:
		q, err := st.queue(m.Index, m)
		if err != nil {
			return err
		}
		if q.running {
			return fmt.Errorf("SET_VRING_ADDR: queue %d is running", m.Index)
		}
		q.addr, q.hasAddr = m.Addr, true
		return st.ack(m, true)
	case reqSetVringBase:
		q, err := st.queue(m.Index, m)
		if err != nil {
			return err
		}
		if m.Num > 0xffff {
			return fmt.Errorf("SET_VRING_BASE: queue %d base %d", m.Index, m.Num)
		}
		if q.running {
			return fmt.Errorf("SET_VRING_BASE: queue %d is running", m.Index)
		}
		q.base = uint16(m.Num)
		return st.ack(m, true)
	case reqGetVringBase:
		q, err := st.queue(m.Index, m)
		if err != nil {
			return err
		}
		if q.running {
			st.stop(q)
			q.base = q.ring.lastAvail
		}
		// The ring is stopped until its next SET_VRING_KICK.
		if q.kick >= 0 {
			unix.Close(q.kick)
			q.kick = -1
		}
		b := make([]byte, 8)
		binary.LittleEndian.PutUint32(b, m.Index)
		binary.LittleEndian.PutUint32(b[4:], uint32(q.base))
		log.Debug("vhost-user ring stopped", "queue", m.Index, "base", q.base)
		return st.reply(m.Request, b)
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		q, err := st.queue(m.Index, m)
		if err != nil {
			closeFDs(fds)
			return err
		}
		fd := -1
		if len(fds) == 1 {
			fd = fds[0]
		}
		switch m.Request {
		case reqSetVringKick:
			if fd < 0 {
				return fmt.Errorf("SET_VRING_KICK: queue %d: polling mode (no kick fd) is not supported", m.Index)
			}
			if q.running {
				st.stop(q)
				q.base = q.ring.lastAvail
			}
			if q.kick >= 0 {
				unix.Close(q.kick)
			}
			q.kick = fd
			// Without VHOST_USER_F_PROTOCOL_FEATURES a ring starts enabled
			// on its kick fd; with it, SET_VRING_ENABLE enables it.
			if st.features&featProtocolFeatures == 0 {
				q.enabled = true
			}
			if err := st.maybeStart(q); err != nil {
				return err
			}
		case reqSetVringCall:
			// The worker reads q.call only while running: restart it.
			wasRunning := q.running
			if wasRunning {
				st.stop(q)
				q.base = q.ring.lastAvail
			}
			if q.call >= 0 {
				unix.Close(q.call)
			}
			q.call = fd
			if wasRunning {
				if err := st.maybeStart(q); err != nil {
					return err
				}
			}
		case reqSetVringErr:
			if q.err >= 0 {
				unix.Close(q.err)
			}
			q.err = fd
		}
		return st.ack(m, true)
	case reqSetVringEnable:
		q, err := st.queue(m.Index, m)
		if err != nil {
			return err
		}
		if st.features&featProtocolFeatures == 0 {
			return errors.New("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES")
		}
		if m.Num > 1 {
			return fmt.Errorf("SET_VRING_ENABLE: queue %d num %d", m.Index, m.Num)
		}
		q.enabled = m.Num == 1
		if !q.enabled && q.running {
			st.stop(q)
			q.base = q.ring.lastAvail
		}
		if err := st.maybeStart(q); err != nil {
			return err
		}
		return st.ack(m, true)
	case reqGetConfig:
		cfg := blkConfig(st.s.cfg.Device.Size(), st.s.cfg.BlockSize, st.s.cfg.SegMax, len(st.queues))
		out := make([]byte, configHeaderSize+int(m.CfgSize))
		copy(out, m.Payload[:configHeaderSize])
		if int(m.CfgOff) < len(cfg) {
			copy(out[configHeaderSize:], cfg[m.CfgOff:])
		}
		return st.reply(m.Request, out)
	case reqSetConfig:
		log.Warn("vhost-user: SET_CONFIG refused (read-only configuration)", "offset", m.CfgOff, "size", m.CfgSize)
		return st.ack(m, false)
	default:
		closeFDs(fds)
		if m.Flags&flagNeedReply != 0 && st.protocol&protoReplyAck != 0 {
			log.Warn("vhost-user: request refused", "request", reqName(m.Request))
			return st.ack(m, false)
		}
		return fmt.Errorf("%s: not supported", reqName(m.Request))
	}
}

func (q *queue) reset() {
	for _, fd := range []*int{&q.kick, &q.call, &q.err} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	*q = queue{index: q.index, kick: -1, call: -1, err: -1}
}

// maybeStart starts q's worker when it has everything a ring needs.
func (st *connState) maybeStart(q *queue) error {
	if q.running || !q.enabled || q.kick < 0 || !q.hasAddr || q.num == 0 || st.mem == nil {
		return nil
	}
	ring, err := newVring(st.mem, q.num, q.addr, st.features&featRingEventIdx != 0)
	if err != nil {
		return fmt.Errorf("queue %d: %v", q.index, err)
	}
	ring.lastAvail = q.base
	if ring.usedIdx, err = loadUsedIdx(ring); err != nil {
		return fmt.Errorf("queue %d: %v", q.index, err)
	}
	if ring.usedIdx != q.base {
		// Requests taken by a previous back-end and never completed:
		// start again from the used index (reads are idempotent).
		st.s.log.Info("vhost-user ring resumes at its used index", "queue", q.index, "base", q.base, "used", ring.usedIdx)
		ring.lastAvail = ring.usedIdx
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("queue %d: eventfd: %v", q.index, err)
	}
	w := &worker{mem: st.mem, ring: ring, kick: q.kick, call: q.call, stop: efd, blk: st.s.blk, bounce: make([]byte, bounceSize), log: st.s.log.With("queue", q.index)}
	q.ring, q.w, q.stopFD, q.done, q.running = ring, w, efd, make(chan struct{}), true
	st.s.log.Debug("vhost-user ring started", "queue", q.index, "size", q.num, "base", ring.lastAvail)
	go func() {
		defer close(q.done)
		w.run()
	}()
	return nil
}

// testHookStopSignaled, when set (tests), runs once a worker has been told
// to stop and before stop waits for it.
var testHookStopSignaled atomic.Pointer[func()]

// stop ends q's worker after the request it is serving.
func (st *connState) stop(q *queue) {
	if !q.running {
		return
	}
	q.w.stopping.Store(true)
	unix.Write(q.stopFD, u64Bytes(1))
	if h := testHookStopSignaled.Load(); h != nil {
		(*h)()
	}
	<-q.done
	unix.Close(q.stopFD)
	q.running, q.w = false, nil
}

func (st *connState) stopAll() {
	for _, q := range st.queues {
		st.stop(q)
	}
}

// close ends the connection's rings and unmaps its memory. The front-end
// is gone (or being dropped): it takes the used index it sees now as where
// every ring resumes (QEMU's restore after a lost back-end, the next
// back-end's SET_VRING_BASE), so the workers finish the request in
// progress without completing it: no used entry, index or interrupt is
// written after this point. A completion published now could land after
// the next back-end has resumed the ring from the older index and served
// the same request again (a double completion, a used index moving back).
func (st *connState) close() {
	for _, q := range st.queues {
		if q.running {
			q.w.abandoned.Store(true)
		}
	}
	st.stopAll()
	for _, q := range st.queues {
		q.reset()
	}
	st.mem.unmap()
	st.c.Close()
}

// worker serves one ring.
type worker struct {
	mem  *memTable
	ring *vring
	kick int
	call int
	stop int
	blk  *blkServer
	// bounce is the buffer the device reads into (bounceSize bytes).
	bounce []byte
	// stopping is set (before the stop eventfd is written) to end drain
	// after the request in progress.
	stopping atomic.Bool
	// abandoned is set (before stopping) when the front-end is gone: the
	// requests served from then on are not completed (see connState.close).
	abandoned atomic.Bool
	log       interface {
		Warn(string, ...any)
	}
}

func (w *worker) run() {
	// Guest memory is a shared mapping the front-end could shrink
	// (ftruncate): a fault while touching it is turned into a panic here,
	// which stops this ring instead of the process.
	debug.SetPanicOnFault(true)
	defer func() {
		if r := recover(); r != nil {
			w.log.Warn("vhost-user ring stopped: fault in guest memory", "err", r)
			w.waitStop([]unix.PollFd{{Fd: int32(w.stop), Events: unix.POLLIN}})
		}
	}()
	pfd := []unix.PollFd{{Fd: int32(w.kick), Events: unix.POLLIN}, {Fd: int32(w.stop), Events: unix.POLLIN}}
	var buf [8]byte
	var c chain
	for {
		// Requests may already wait (a resumed ring): serve before sleeping.
		if err := w.drain(&c); err != nil {
			w.log.Warn("vhost-user ring stopped: bad request from the driver", "err", err)
			w.waitStop(pfd[1:])
			return
		}
		_, err := unix.Poll(pfd, -1)
		if err != nil && err != unix.EINTR {
			w.log.Warn("vhost-user poll", "err", err)
			return
		}
		if pfd[1].Revents != 0 {
			return
		}
		if pfd[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			w.log.Warn("vhost-user kick fd", "revents", pfd[0].Revents)
			w.waitStop(pfd[1:])
			return
		}
		if pfd[0].Revents&unix.POLLIN != 0 {
			unix.Read(w.kick, buf[:])
		}
	}
}

func (w *worker) waitStop(p []unix.PollFd) {
	for {
		_, err := unix.Poll(p, -1)
		if err != nil && err != unix.EINTR {
			return
		}
		if err == nil && p[0].Revents != 0 {
			return
		}
	}
}

// drain serves every available request, publishing used entries and
// interrupting the driver as it asks. It returns early, after the request
// in progress, once the worker is told to stop. Requests served before a
// bad one are published before the error is returned.
func (w *worker) drain(c *chain) error {
	v := w.ring
	published := v.usedIdx
	defer func() {
		if r := recover(); r != nil {
			// A fault in guest memory (run recovers it) in the middle of a
			// batch: its used entries were written but not published. The
			// ring goes back to what the driver sees, so that
			// GET_VRING_BASE reports the first request not completed.
			v.lastAvail -= v.usedIdx - published
			v.usedIdx = published
			panic(r)
		}
	}()
	for !w.stopping.Load() {
		avail := loadAvailIdx(v.avail)
		if uint16(avail-v.lastAvail) > v.num {
			return fmt.Errorf("available index %d is %d entries ahead of %d (queue size %d)", avail, avail-v.lastAvail, v.lastAvail, v.num)
		}
		if avail == v.lastAvail {
			if !v.eventIdx {
				return nil
			}
			v.setAvailEvent(v.lastAvail)
			if loadAvailIdx(v.avail) == v.lastAvail {
				return nil
			}
			continue
		}
		old := v.usedIdx
		var err error
		for v.lastAvail != avail && !w.stopping.Load() {
			head := v.availHead(v.lastAvail)
			if err = walk(w.mem, v.desc, v.num, head, c); err != nil {
				break
			}
			n, serr := w.blk.serve(c, w.bounce)
			if serr != nil {
				err = fmt.Errorf("descriptor %d: %v", head, serr)
				break
			}
			if w.abandoned.Load() {
				break // not even the used entry is written
			}
			v.lastAvail++
			v.pushUsed(head, n)
		}
		if w.abandoned.Load() {
			// Entries written but not published: the next back-end
			// serves those requests again.
			v.usedIdx, v.lastAvail = old, v.lastAvail-(v.usedIdx-old)
			return nil
		}
		if v.usedIdx != old {
			v.storeUsedIdx(v.usedIdx)
			published = v.usedIdx
			if w.call >= 0 && v.needNotify(old) {
				unix.Write(w.call, u64Bytes(1))
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// loadUsedIdx reads the used index the driver left, a fault (shrunk
// memory) being an error.
func loadUsedIdx(v *vring) (idx uint16, err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = fmt.Errorf("fault reading the used ring: %v", r)
		}
	}()
	return le16(v.used[2:]), nil
}
