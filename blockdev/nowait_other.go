//go:build !linux

package blockdev

import "os"

// NoWaitFile reads a file without waiting for storage where the system
// can (Linux: preadv2 with RWF_NOWAIT); here it always would block.
type NoWaitFile struct{}

// NewNoWaitFile returns nil: no no-wait reads on this system.
func NewNoWaitFile(f *os.File) *NoWaitFile { return nil }

// ReadAtNoWait implements NoWaitReader: always ErrWouldBlock.
func (w *NoWaitFile) ReadAtNoWait(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return 0, ErrWouldBlock
}
