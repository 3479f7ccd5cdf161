package ublk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// userData of the eventfd read; tags use their number.
const eventfdTag = 1 << 63

// queue is one hardware queue: its descriptor mmap, its tag buffers, its
// io_uring (owned by a goroutine locked to one thread) and the eventfd
// through which read goroutines hand results back to that thread.
type queue struct {
	d     *Device
	id    int
	depth int
	maxIO int
	desc  []byte // read-only mmap of the queue's ublksrv_io_desc array
	bufs  []byte // depth * maxIO bytes, anonymous mmap (stable addresses)
	efd   int
	efBuf []byte // 8 bytes the eventfd read lands in (mmap'd page)

	mu    sync.Mutex
	done  []completion   // finished reads, drained by the queue thread
	reads sync.WaitGroup // read goroutines (they use bufs and efd)

	started bool
	stop    atomic.Bool
	exited  chan struct{}
	ready   chan error
}

type completion struct {
	tag uint16
	res int32
}

func newQueue(d *Device, id int) (*queue, error) {
	q := &queue{d: d, id: id, depth: int(d.info.QueueDepth), maxIO: int(d.info.MaxIOBufBytes), efd: -1,
		exited: make(chan struct{}), ready: make(chan error, 1)}
	page := os.Getpagesize()
	roundUp := func(n int) int { return (n + page - 1) / page * page }
	off := int64(cmdBufOffset + id*roundUp(maxQueueDepth*ioDescSize))
	var err error
	q.desc, err = unix.Mmap(d.charFd, off, roundUp(q.depth*ioDescSize), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("ublk: mmap queue %d descriptors: %w", id, err)
	}
	q.bufs, err = unix.Mmap(-1, 0, q.depth*q.maxIO+page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		q.release()
		return nil, fmt.Errorf("ublk: queue %d buffers: %w", id, err)
	}
	q.efBuf = q.bufs[q.depth*q.maxIO : q.depth*q.maxIO+8]
	q.efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		q.release()
		return nil, fmt.Errorf("ublk: queue %d eventfd: %w", id, err)
	}
	return q, nil
}

func (q *queue) buf(tag uint16) []byte {
	return q.bufs[int(tag)*q.maxIO : (int(tag)+1)*q.maxIO]
}

func (q *queue) bufAddr(tag uint16) uint64 {
	return uint64(uintptr(unsafe.Pointer(&q.bufs[int(tag)*q.maxIO])))
}

// start runs the queue thread and waits until it has posted its fetches.
func (q *queue) start() error {
	q.started = true
	go q.run()
	return <-q.ready
}

// run is the queue thread. It stays locked to its OS thread and never
// unlocks: the thread exits with the goroutine.
func (q *queue) run() {
	runtime.LockOSThread()
	defer close(q.exited)
	r, err := newRing(uint32(q.depth+1), setupSQE128)
	if err != nil {
		q.ready <- fmt.Errorf("ublk: queue %d: %w", q.id, err)
		return
	}
	defer r.close()
	for tag := 0; tag < q.depth; tag++ {
		q.postCmd(r, ioFetchReq, uint16(tag), 0)
	}
	efArmed := q.armEventfd(r)
	if err := r.submit(0); err != nil {
		q.ready <- fmt.Errorf("ublk: queue %d: FETCH_REQ: %w", q.id, err)
		return
	}
	// A FETCH_REQ the driver refused completes at once; look before
	// reporting ready (START_DEV would otherwise wait forever).
	var early error
	r.reap(func(c cqe) {
		if c.UserData != eventfdTag && early == nil {
			early = fmt.Errorf("ublk: queue %d: FETCH_REQ tag %d: %w", q.id, c.UserData, unix.Errno(-c.Res))
		}
	})
	if early != nil {
		q.ready <- early
		return
	}
	q.ready <- nil

	live, inflight := q.depth, 0
	for live > 0 && !q.stop.Load() {
		if err := r.submit(1); err != nil {
			q.d.log.Error("ublk queue", "queue", q.id, "err", err)
			break
		}
		r.reap(func(c cqe) {
			if c.UserData == eventfdTag {
				efArmed = false
				q.mu.Lock()
				done := q.done
				q.done = nil
				q.mu.Unlock()
				for _, cp := range done {
					inflight--
					q.postCmd(r, ioCommitFetchReq, cp.tag, cp.res)
				}
				if !q.stop.Load() {
					efArmed = q.armEventfd(r)
				}
				return
			}
			tag := uint16(c.UserData)
			switch c.Res {
			case ioResOK:
				if q.handle(r, tag) {
					inflight++
				}
			case ioResAbort:
				live--
			default:
				live--
				q.d.log.Error("ublk: fetch/commit failed", "queue", q.id, "tag", tag, "err", unix.Errno(-c.Res))
			}
		})
	}
	if inflight > 0 {
		q.d.log.Warn("ublk queue ends with reads in flight", "queue", q.id, "reads", inflight)
	}
	// Let the pending eventfd read complete before the ring (and later the
	// page it reads into) goes away.
	if efArmed {
		var one [8]byte
		one[0] = 1
		unix.Write(q.efd, one[:])
		deadline := time.Now().Add(time.Second)
		for efArmed && time.Now().Before(deadline) {
			r.reap(func(c cqe) {
				if c.UserData == eventfdTag {
					efArmed = false
				}
			})
			if efArmed {
				if r.submit(1) != nil {
					break
				}
			}
		}
	}
}

// postCmd queues a FETCH_REQ or COMMIT_AND_FETCH_REQ for tag.
func (q *queue) postCmd(r *ring, op uint32, tag uint16, res int32) {
	sqe := r.getSQE()
	for sqe == nil { // cannot happen with depth+1 SQEs, but never drop a tag
		r.submit(0)
		sqe = r.getSQE()
	}
	payload := prepUringCmd(sqe, q.d.charFd, op, uint64(tag))
	*(*ioCmd)(unsafe.Pointer(&payload[0])) = ioCmd{QID: uint16(q.id), Tag: tag, Result: res, Addr: q.bufAddr(tag)}
}

func (q *queue) armEventfd(r *ring) bool {
	sqe := r.getSQE()
	for sqe == nil {
		r.submit(0)
		sqe = r.getSQE()
	}
	prepRead(sqe, q.efd, uintptr(unsafe.Pointer(&q.efBuf[0])), 8, -1, eventfdTag)
	return true
}

// handle starts serving the request in tag's descriptor. It returns true
// when a read goroutine will complete it later.
func (q *queue) handle(r *ring, tag uint16) bool {
	if int(tag) >= q.depth {
		return false
	}
	iod := *(*ioDesc)(unsafe.Pointer(&q.desc[int(tag)*ioDescSize]))
	switch iod.OpFlags & 0xff {
	case ioOpRead:
		off := int64(iod.StartSector) << 9
		n := int(iod.NrSectors) << 9
		if n > q.maxIO {
			q.postCmd(r, ioCommitFetchReq, tag, -int32(unix.EINVAL))
			return false
		}
		q.reads.Add(1)
		go q.read(tag, off, n)
		return true
	case ioOpFlush:
		q.postCmd(r, ioCommitFetchReq, tag, 0)
	default: // writes, discards, write-zeroes: the device is read-only
		q.postCmd(r, ioCommitFetchReq, tag, -int32(unix.EPERM))
	}
	return false
}

// read fills tag's buffer from the device; past the device size (the
// rounded-up last block) it reads zeros.
func (q *queue) read(tag uint16, off int64, n int) {
	defer q.reads.Done()
	b := q.buf(tag)[:n]
	res := int32(n)
	size := q.d.size
	want := b
	if off >= size {
		want = nil
	} else if off+int64(n) > size {
		want = b[:size-off]
	}
	if len(want) > 0 {
		m, err := q.d.cfg.Device.ReadAt(want, off)
		if m < len(want) || (err != nil && !errors.Is(err, io.EOF)) {
			q.d.log.Error("ublk read", "offset", off, "length", len(want), "err", err)
			res = -int32(unix.EIO)
		}
	}
	clear(b[len(want):])
	q.mu.Lock()
	wake := len(q.done) == 0
	q.done = append(q.done, completion{tag, res})
	q.mu.Unlock()
	if wake {
		var one [8]byte
		one[0] = 1
		unix.Write(q.efd, one[:])
	}
}

// wait waits for the queue thread to end: at once when force is set,
// otherwise after up to 10 s for the driver's aborts.
func (q *queue) wait(force bool) {
	if !q.started {
		return
	}
	select {
	case <-q.exited:
		return
	default:
	}
	if !force {
		select {
		case <-q.exited:
			return
		case <-time.After(10 * time.Second):
			q.d.log.Warn("ublk queue did not end after STOP_DEV; closing it", "queue", q.id)
		}
	}
	q.stop.Store(true)
	var one [8]byte
	one[0] = 1
	unix.Write(q.efd, one[:])
	select {
	case <-q.exited:
	case <-time.After(10 * time.Second):
		q.d.log.Error("ublk queue thread is stuck", "queue", q.id)
	}
}

// release unmaps the queue's memory and closes its eventfd once the
// thread and every read goroutine have ended; if one is stuck, the memory
// and the eventfd are left alone (leaked) rather than pulled from under it.
func (q *queue) release() {
	select {
	case <-q.exited:
	default:
		if q.started {
			return
		}
	}
	readsDone := make(chan struct{})
	go func() { q.reads.Wait(); close(readsDone) }()
	select {
	case <-readsDone:
	case <-time.After(10 * time.Second):
		q.d.log.Error("ublk: reads still running at close; leaking their buffers", "queue", q.id)
		return
	}
	if q.desc != nil {
		unix.Munmap(q.desc)
		q.desc = nil
	}
	if q.bufs != nil {
		unix.Munmap(q.bufs)
		q.bufs = nil
	}
	if q.efd >= 0 {
		unix.Close(q.efd)
		q.efd = -1
	}
}
