package ublk

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file is the package's whole io_uring layer: io_uring_setup, the two
// mmap'd rings and the SQE array, io_uring_enter, and SQE preparation for the
// three opcodes ublk needs (URING_CMD, READ, NOP). It follows
// include/uapi/linux/io_uring.h; the layout is checked in uring_linux_test.go.

// io_uring_setup flags and features used here.
const (
	setupSQE128        = 1 << 10 // IORING_SETUP_SQE128: 128-byte SQEs (80-byte URING_CMD payload)
	featSingleMmap     = 1 << 0  // IORING_FEAT_SINGLE_MMAP
	enterGetEvents     = 1 << 0  // IORING_ENTER_GETEVENTS
	offSQRing          = 0       // IORING_OFF_SQ_RING
	offSQEs            = 0x10000000
	opNop              = 0  // IORING_OP_NOP
	opRead             = 22 // IORING_OP_READ
	opUringCmd         = 46 // IORING_OP_URING_CMD
	sqeSize            = 64
	sqeCmdOff          = 48 // offset of sqe->cmd (the URING_CMD payload)
	cqeSize            = 16
	maxRingEntries     = 4096
	sqe128CmdLen       = 80
	sqeUserDataOff     = 32
	sqeOpcodeOff       = 0
	sqeFdOff           = 4
	sqeOffOff          = 8 // off / addr2 / cmd_op (u32) + pad
	sqeAddrOff         = 16
	sqeLenOff          = 24
	sqeUringCmdFlagOff = 28
)

// sqringOffsets is struct io_sqring_offsets.
type sqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

// cqringOffsets is struct io_cqring_offsets.
type cqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, CQEs, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

// uringParams is struct io_uring_params (120 bytes).
type uringParams struct {
	SQEntries, CQEntries, Flags, SQThreadCPU, SQThreadIdle, Features, WQFd uint32
	Resv                                                                   [3]uint32
	SQOff                                                                  sqringOffsets
	CQOff                                                                  cqringOffsets
}

// cqe is struct io_uring_cqe (without the CQE32 extension).
type cqe struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

// ring is one io_uring instance used by one goroutine at a time (the
// control ring under Device.ctrlMu; a queue ring by its locked thread).
type ring struct {
	fd      int
	sqeLen  int
	ringMem []byte
	sqeMem  []byte

	sqHead, sqTail *uint32
	sqMask         uint32
	sqEntries      uint32
	sqeTail        uint32 // next SQE to hand out (local, published by submit)

	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           []cqe
}

// newRing creates an io_uring with at least entries SQEs (rounded up to a
// power of two by the kernel) and the given setup flags.
func newRing(entries uint32, flags uint32) (*ring, error) {
	if entries == 0 || entries > maxRingEntries {
		return nil, fmt.Errorf("io_uring: %d entries", entries)
	}
	var p uringParams
	p.Flags = flags
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &ring{fd: int(fd), sqeLen: sqeSize}
	if flags&setupSQE128 != 0 {
		r.sqeLen = 2 * sqeSize
	}
	if p.Features&featSingleMmap == 0 {
		unix.Close(r.fd)
		return nil, errors.New("io_uring: kernel lacks IORING_FEAT_SINGLE_MMAP (Linux 5.4)")
	}
	sqSize := int(p.SQOff.Array) + int(p.SQEntries)*4
	cqSize := int(p.CQOff.CQEs) + int(p.CQEntries)*cqeSize
	size := max(sqSize, cqSize)
	var err error
	r.ringMem, err = unix.Mmap(r.fd, offSQRing, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		unix.Close(r.fd)
		return nil, fmt.Errorf("io_uring: mmap rings: %w", err)
	}
	r.sqeMem, err = unix.Mmap(r.fd, offSQEs, int(p.SQEntries)*r.sqeLen, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		unix.Munmap(r.ringMem)
		unix.Close(r.fd)
		return nil, fmt.Errorf("io_uring: mmap SQEs: %w", err)
	}
	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&r.ringMem[off])) }
	r.sqHead, r.sqTail = u32(p.SQOff.Head), u32(p.SQOff.Tail)
	r.sqMask, r.sqEntries = *u32(p.SQOff.RingMask), *u32(p.SQOff.RingEntries)
	r.cqHead, r.cqTail = u32(p.CQOff.Head), u32(p.CQOff.Tail)
	r.cqMask = *u32(p.CQOff.RingMask)
	r.cqes = unsafe.Slice((*cqe)(unsafe.Pointer(&r.ringMem[p.CQOff.CQEs])), p.CQEntries)
	// Identity-map the SQ index array once, as liburing does: SQE i is
	// always published through slot i.
	arr := unsafe.Slice((*uint32)(unsafe.Pointer(&r.ringMem[p.SQOff.Array])), p.SQEntries)
	for i := range arr {
		arr[i] = uint32(i)
	}
	r.sqeTail = atomic.LoadUint32(r.sqTail)
	return r, nil
}

// close unmaps and closes the ring; the kernel cancels whatever is still
// in flight.
func (r *ring) close() error {
	if r == nil || r.fd < 0 {
		return nil
	}
	unix.Munmap(r.sqeMem)
	unix.Munmap(r.ringMem)
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// getSQE returns the next free SQE, zeroed, or nil when the SQ ring is full.
func (r *ring) getSQE() []byte {
	head := atomic.LoadUint32(r.sqHead)
	if r.sqeTail-head >= r.sqEntries {
		return nil
	}
	i := int(r.sqeTail & r.sqMask)
	r.sqeTail++
	b := r.sqeMem[i*r.sqeLen : (i+1)*r.sqeLen]
	clear(b)
	return b
}

// submit publishes the prepared SQEs and calls io_uring_enter, waiting for
// at least wait completions. It retries on EINTR (nothing was consumed then;
// the count to submit is recomputed from the kernel's head).
func (r *ring) submit(wait uint32) error {
	atomic.StoreUint32(r.sqTail, r.sqeTail)
	for {
		toSubmit := r.sqeTail - atomic.LoadUint32(r.sqHead)
		var flags uintptr
		if wait > 0 {
			flags = enterGetEvents
		}
		if toSubmit == 0 && wait == 0 {
			return nil
		}
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(wait), flags, 0, 0)
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		default:
			return fmt.Errorf("io_uring_enter: %w", errno)
		}
	}
}

// reap calls fn for every available completion and consumes them.
func (r *ring) reap(fn func(c cqe)) int {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	n := 0
	for ; head != tail; head++ {
		fn(r.cqes[head&r.cqMask])
		n++
	}
	atomic.StoreUint32(r.cqHead, head)
	return n
}

func putU8(b []byte, off int, v uint8)   { b[off] = v }
func putU16(b []byte, off int, v uint16) { *(*uint16)(unsafe.Pointer(&b[off])) = v }
func putU32(b []byte, off int, v uint32) { *(*uint32)(unsafe.Pointer(&b[off])) = v }
func putU64(b []byte, off int, v uint64) { *(*uint64)(unsafe.Pointer(&b[off])) = v }

// prepUringCmd fills sqe as IORING_OP_URING_CMD with cmd_op on fd and
// returns the command payload area (16 bytes, or 80 with SQE128).
func prepUringCmd(sqe []byte, fd int, cmdOp uint32, userData uint64) []byte {
	putU8(sqe, sqeOpcodeOff, opUringCmd)
	putU32(sqe, sqeFdOff, uint32(int32(fd)))
	putU32(sqe, sqeOffOff, cmdOp)
	putU64(sqe, sqeUserDataOff, userData)
	return sqe[sqeCmdOff:]
}

// prepRead fills sqe as IORING_OP_READ of len bytes at addr from fd at
// offset off (-1: the file position, as for an eventfd).
func prepRead(sqe []byte, fd int, addr uintptr, n uint32, off int64, userData uint64) {
	putU8(sqe, sqeOpcodeOff, opRead)
	putU32(sqe, sqeFdOff, uint32(int32(fd)))
	putU64(sqe, sqeOffOff, uint64(off))
	putU64(sqe, sqeAddrOff, uint64(addr))
	putU32(sqe, sqeLenOff, n)
	putU64(sqe, sqeUserDataOff, userData)
}

// prepNop fills sqe as IORING_OP_NOP.
func prepNop(sqe []byte, userData uint64) {
	putU8(sqe, sqeOpcodeOff, opNop)
	putU64(sqe, sqeUserDataOff, userData)
}
