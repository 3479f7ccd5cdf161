//go:build linux

package diskcache

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// stampOf is the identity and change state of a file as fstat/lstat sees it.
func stampOf(fi os.FileInfo) (stamp, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return stamp{}, false
	}
	return stamp{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}, true
}

// bootIDPath names this boot: a machine that rebooted (or crashed) may hold
// files that were never written back whole, so trust does not survive it.
var bootIDPath = "/proc/sys/kernel/random/boot_id"

// syncfs writes back the file system holding f and reports write-back
// errors on it since f was opened or last synced (Linux >= 5.8).
func syncfs(f *os.File) error {
	for {
		err := unix.Syncfs(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}
