package vmtest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// entry is one file of the initramfs.
type entry struct {
	mode uint32 // full st_mode, including the file type bits
	data []byte // file content or symlink target
	host string // host file to copy instead of data
}

const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
)

// archive is an in-memory list of initramfs entries keyed by guest path
// (absolute, cleaned).
type archive map[string]entry

func (a archive) addDirs(p string) {
	for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
		if _, ok := a[d]; !ok {
			a[d] = entry{mode: modeDir | 0o755}
		}
	}
}

func (a archive) addData(p string, mode uint32, data []byte) {
	p = path.Clean("/" + p)
	a.addDirs(p)
	a[p] = entry{mode: modeRegular | mode&0o7777, data: data}
}

func (a archive) addHost(p, host string, mode uint32) {
	p = path.Clean("/" + p)
	a.addDirs(p)
	a[p] = entry{mode: modeRegular | mode&0o7777, host: host}
}

func (a archive) addDir(p string) {
	p = path.Clean("/" + p)
	a.addDirs(p)
	a[p] = entry{mode: modeDir | 0o755}
}

func (a archive) addSymlink(p, target string) {
	p = path.Clean("/" + p)
	a.addDirs(p)
	a[p] = entry{mode: modeSymlink | 0o777, data: []byte(target)}
}

// writeTo writes the archive as an uncompressed "newc" cpio, the format the
// kernel unpacks as initramfs. Parents sort before their children.
func (a archive) writeFile(name string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	names := make([]string, 0, len(a))
	for p := range a {
		names = append(names, p)
	}
	sort.Strings(names)
	ino := uint32(1)
	for _, p := range names {
		e := a[p]
		if err := writeEntry(w, ino, strings.TrimPrefix(p, "/"), e); err != nil {
			f.Close()
			return fmt.Errorf("initramfs %s: %w", p, err)
		}
		ino++
	}
	if err := writeHeader(w, 0, "TRAILER!!!", 0, 1, 0); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func writeEntry(w *bufio.Writer, ino uint32, name string, e entry) error {
	var (
		size int64
		src  io.Reader
	)
	switch {
	case e.host != "":
		hf, err := os.Open(e.host)
		if err != nil {
			return err
		}
		defer hf.Close()
		st, err := hf.Stat()
		if err != nil {
			return err
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", e.host)
		}
		size, src = st.Size(), hf
	default:
		size, src = int64(len(e.data)), strings.NewReader(string(e.data))
	}
	if size > 0xffffffff {
		return fmt.Errorf("file too large for cpio (%d bytes); use a disk", size)
	}
	nlink := uint32(1)
	if e.mode&0o170000 == modeDir {
		nlink = 2
	}
	if err := writeHeader(w, ino, name, e.mode, nlink, uint32(size)); err != nil {
		return err
	}
	n, err := io.Copy(w, src)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("short copy: %d of %d bytes", n, size)
	}
	return pad4(w, size)
}

func writeHeader(w *bufio.Writer, ino uint32, name string, mode, nlink, size uint32) error {
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check
	_, err := fmt.Fprintf(w, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	if err != nil {
		return err
	}
	w.WriteString(name)
	w.WriteByte(0)
	return pad4(w, int64(110+len(name)+1))
}

func pad4(w *bufio.Writer, n int64) error {
	if r := n % 4; r != 0 {
		_, err := w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}
