package blockdev

import (
	"os"
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
	var (
		n     int
		errno error
	)
	iov := [1][]byte{p}
	err := w.rc.Control(func(fd uintptr) {
		n, errno = unix.Preadv2(int(fd), iov[:], off, unix.RWF_NOWAIT)
	})
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
