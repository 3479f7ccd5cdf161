//go:build unix

package cache

import "syscall"

func allocSeg(n int) []byte {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
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
