//go:build unix

package cache

import "syscall"

// allocSeg maps n zeroed bytes; populate faults them in at once (one
// system call instead of a page fault per 4 KiB page as they are first
// written).
func allocSeg(n int, populate bool) []byte {
	flags := syscall.MAP_PRIVATE | syscall.MAP_ANON
	if populate {
		flags |= mapPopulate
	}
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, flags)
	if err != nil {
		return make([]byte, n)
	}
	return b
}

func freeSeg(b []byte) {
	// A segment that came from make (mmap failed) is not a mapping: Munmap
	// then fails with EINVAL and the collector frees it.
	_ = syscall.Munmap(b)
}
