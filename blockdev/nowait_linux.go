package blockdev

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// NoWaitFile reads a file without waiting for storage: preadv2(2) with
// RWF_NOWAIT, which the kernel answers from the page cache or refuses
// with EAGAIN. It is the NoWaitReader behind files.
type NoWaitFile struct {
	rc          syscall.RawConn
	unsupported atomic.Bool // the file system refused RWF_NOWAIT once
}

// noWaitCall is one preadv2 call's state, pooled with its function so a
// read allocates nothing.
type noWaitCall struct {
	iov   [1][]byte
	off   int64
	n     int
	errno error
	fn    func(fd uintptr)
}

var noWaitCalls = sync.Pool{New: func() any {
	c := &noWaitCall{}
	c.fn = func(fd uintptr) {
		c.n, c.errno = unix.Preadv2(int(fd), c.iov[:], c.off, unix.RWF_NOWAIT)
	}
	return c
}}

// NewNoWaitFile returns the no-wait reader of f, or nil if f has none.
func NewNoWaitFile(f *os.File) *NoWaitFile {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	return &NoWaitFile{rc: rc}
}

// ReadAtNoWait implements NoWaitReader: all of p, or ErrWouldBlock (also
// for a short read: the rest is not cached, or the file ended early,
// which ReadAt then reports).
func (w *NoWaitFile) ReadAtNoWait(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if w == nil || w.unsupported.Load() {
		return 0, ErrWouldBlock
	}
	c := noWaitCalls.Get().(*noWaitCall)
	c.iov[0], c.off = p, off
	err := w.rc.Control(c.fn)
	n, errno := c.n, c.errno
	c.iov[0], c.errno = nil, nil
	noWaitCalls.Put(c)
	switch {
	case err != nil: // closed
		return 0, ErrWouldBlock
	case errno == unix.EOPNOTSUPP || errno == unix.EINVAL || errno == unix.ENOSYS:
		w.unsupported.Store(true)
		return 0, ErrWouldBlock
	case errno != nil || n != len(p):
		return 0, ErrWouldBlock
	}
	return n, nil
}
