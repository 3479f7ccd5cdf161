package mergetest

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Apply overlays the tree layer onto the directory dst, as a container
// runtime unpacking a layer would: entries replace what is below them,
// directories merge unless opaque, whiteouts delete, and neither whiteouts
// nor the opaque marker appear in dst. Hard links within the layer stay
// links.
func Apply(dst, layer string) error {
	a := &applier{links: map[[2]uint64]string{}}
	return a.dir(dst, layer)
}

// ApplyKeepTimes is Apply that also keeps mtimes (a directory present in
// both takes the upper one's metadata), as tar extraction does.
func ApplyKeepTimes(dst, layer string) error {
	a := &applier{links: map[[2]uint64]string{}, keepTimes: true}
	return a.dir(dst, layer)
}

type applier struct {
	links     map[[2]uint64]string // layer (dev, ino) -> first dst path
	keepTimes bool
}

// meta copies metadata (copyMeta) and, with keepTimes, the mtime.
func (a *applier) meta(d, s string, st *unix.Stat_t, skip string) error {
	if st == nil {
		st = &unix.Stat_t{}
		if err := unix.Lstat(s, st); err != nil {
			return err
		}
	}
	if err := copyMeta(d, s, st, skip); err != nil {
		return err
	}
	if !a.keepTimes {
		return nil
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, d, []unix.Timespec{st.Mtim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
}

func isWhiteoutDev(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

func (a *applier) dir(dst, src string) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	opaque := false
	if v, err := getxattr(src, "trusted.overlay.opaque"); err == nil && string(v) == "y" {
		opaque = true
	}
	for _, e := range ents {
		if e.Name() == ".wh..wh..opq" {
			opaque = true
		}
	}
	if opaque {
		old, _ := os.ReadDir(dst)
		for _, o := range old {
			if err := os.RemoveAll(filepath.Join(dst, o.Name())); err != nil {
				return err
			}
		}
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, ".wh.") && n != ".wh..wh..opq" {
			if err := os.RemoveAll(filepath.Join(dst, n[4:])); err != nil {
				return err
			}
		}
	}
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".wh.") {
			continue
		}
		s, d := filepath.Join(src, n), filepath.Join(dst, n)
		var st unix.Stat_t
		if err := unix.Lstat(s, &st); err != nil {
			return err
		}
		if isWhiteoutDev(&st) {
			if err := os.RemoveAll(d); err != nil {
				return err
			}
			continue
		}
		var dt unix.Stat_t
		exists := unix.Lstat(d, &dt) == nil
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if exists && dt.Mode&unix.S_IFMT != unix.S_IFDIR {
				if err := os.RemoveAll(d); err != nil {
					return err
				}
				exists = false
			}
			if !exists {
				if err := os.Mkdir(d, 0o755); err != nil {
					return err
				}
			}
			if err := a.dir(d, s); err != nil {
				return err
			}
			continue
		}
		if exists {
			if err := os.RemoveAll(d); err != nil {
				return err
			}
		}
		if err := a.leaf(d, s, &st); err != nil {
			return err
		}
	}
	return a.meta(dst, src, nil, "trusted.overlay.opaque")
}

func (a *applier) leaf(d, s string, st *unix.Stat_t) error {
	key := [2]uint64{st.Dev, st.Ino}
	if first, ok := a.links[key]; ok && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return os.Link(first, d)
	}
	a.links[key] = d
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		in, err := os.Open(s)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(d, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		if err := out.Close(); err != nil {
			return err
		}
	case unix.S_IFLNK:
		t, err := os.Readlink(s)
		if err != nil {
			return err
		}
		if err := os.Symlink(t, d); err != nil {
			return err
		}
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO, unix.S_IFSOCK:
		if err := unix.Mknod(d, st.Mode, int(st.Rdev)); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%s: unexpected mode %o", s, st.Mode)
	}
	return a.meta(d, s, st, "")
}

// copyMeta copies owner, mode and xattrs (replacing dst's xattrs), except
// the xattr named skip.
func copyMeta(d, s string, st *unix.Stat_t, skip string) error {
	if st == nil {
		st = &unix.Stat_t{}
		if err := unix.Lstat(s, st); err != nil {
			return err
		}
	}
	if err := os.Lchown(d, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Chmod(d, st.Mode&0o7777); err != nil {
			return err
		}
	}
	old, err := listxattr(d)
	if err != nil {
		return err
	}
	for _, n := range old {
		if err := unix.Lremovexattr(d, n); err != nil {
			return fmt.Errorf("removexattr %s %s: %w", d, n, err)
		}
	}
	names, err := listxattr(s)
	if err != nil {
		return err
	}
	for _, n := range names {
		if n == skip {
			continue
		}
		v, err := getxattr(s, n)
		if err != nil {
			return err
		}
		if err := unix.Lsetxattr(d, n, v, 0); err != nil {
			return fmt.Errorf("setxattr %s %s: %w", d, n, err)
		}
	}
	return nil
}

func listxattr(p string) ([]string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if err == unix.ENOTSUP {
			return nil, nil
		}
		return nil, fmt.Errorf("listxattr %s: %w", p, err)
	}
	var out []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out, nil
}

func getxattr(p, name string) ([]byte, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}
