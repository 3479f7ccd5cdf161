package tartest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Extract extracts a tar with GNU tar as root, keeping owners, modes,
// xattrs, devices and mtimes, into dir (created).
func Extract(t testing.TB, tarPath, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", tarPath, "-C", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("tar -xpf %s: %v\n%s", tarPath, err, out)
	}
	if err := dirTimes(tarPath, dir); err != nil {
		t.Fatal(err)
	}
}

// dirTimes sets the mtime of every directory the tar has an entry for to
// the last such entry's. GNU tar restores a directory's times when the
// archive leaves it, so files that come later (bsdtar writes directories
// before their files; a layer may name a directory twice) would leave
// the extraction time instead.
func dirTimes(tarPath, dir string) error {
	f, err := os.Open(tarPath)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	times := map[string]time.Time{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", tarPath, err)
		}
		if h.Typeflag == tar.TypeDir {
			times[strings.TrimPrefix(path.Clean("/"+h.Name), "/")] = h.ModTime
		}
	}
	for p, mt := range times {
		ts := unix.NsecToTimespec(mt.UnixNano())
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, p), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

// Reference extracts each tar (uncompressed, lowest first) with GNU tar
// into dir/x1, dir/x2, ..., applies them in order with OCI whiteouts into
// dir/ref (Apply) and returns dir/ref.
func Reference(t testing.TB, dir string, tars []string) string {
	t.Helper()
	ref := filepath.Join(dir, "ref")
	if err := os.MkdirAll(ref, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, tp := range tars {
		x := filepath.Join(dir, fmt.Sprintf("x%d", i+1))
		Extract(t, tp, x)
		if err := Apply(ref, x); err != nil {
			t.Fatalf("applying %s: %v", tp, err)
		}
	}
	return ref
}

// Apply overlays the extracted layer at src onto dst as a runtime
// unpacking a layer would (merge/mergetest.Apply's rules: entries replace
// what is below, directories merge unless opaque by .wh..wh..opq or
// trusted.overlay.opaque=y, .wh.NAME and 0:0 character devices delete,
// neither whiteouts nor the opaque marker appear in dst, hard links within
// the layer stay links) and, unlike mergetest.Apply, keeps mtimes: a
// directory present in both takes the upper one's metadata.
func Apply(dst, src string) error {
	a := &applier{links: map[[2]uint64]string{}}
	return a.dir(dst, src)
}

type applier struct {
	links map[[2]uint64]string // layer (dev, ino) -> first dst path
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
		if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
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
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return err
	}
	if err := copyMeta(dst, src, &st, "trusted.overlay.opaque"); err != nil {
		return err
	}
	return setTimes(dst, &st)
}

func (a *applier) leaf(d, s string, st *unix.Stat_t) error {
	key := [2]uint64{st.Dev, st.Ino}
	if first, ok := a.links[key]; ok {
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
	if err := copyMeta(d, s, st, ""); err != nil {
		return err
	}
	return setTimes(d, st)
}

func setTimes(p string, st *unix.Stat_t) error {
	ts := []unix.Timespec{st.Mtim, st.Mtim}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// copyMeta copies owner, mode and xattrs (replacing dst's), except the
// xattr named skip.
func copyMeta(d, s string, st *unix.Stat_t, skip string) error {
	if err := os.Lchown(d, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Chmod(d, st.Mode&0o7777); err != nil {
			return err
		}
	}
	old, err := xattrs(d)
	if err != nil {
		return err
	}
	for n := range old {
		if err := unix.Lremovexattr(d, n); err != nil {
			return fmt.Errorf("removexattr %s %s: %w", d, n, err)
		}
	}
	xs, err := xattrs(s)
	if err != nil {
		return err
	}
	for n, v := range xs {
		if n == skip {
			continue
		}
		if err := unix.Lsetxattr(d, n, []byte(v), 0); err != nil {
			return fmt.Errorf("setxattr %s %s: %w", d, n, err)
		}
	}
	return nil
}

func getxattr(p, name string) ([]byte, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// Compress compresses tarPath with the real binary of kind (one of
// Compressions) next to it and returns the new file's path:
//   - "gzip": gzip -n (one member), TAR.gz;
//   - "pigz": pigz -n -b 32 (32 KiB independent blocks, sync flushes), TAR.pigz.gz;
//   - "zstd": zstd (one frame with a content checksum), TAR.zst;
//   - "zstd-multi": the tar cut in 64 KiB pieces, each its own zstd frame,
//     with a skippable frame after the first, TAR.multi.zst.
//
// Each output is decompressed again with the same tool and compared.
func Compress(t testing.TB, tarPath, kind string) string {
	t.Helper()
	var out string
	var decomp []string
	switch kind {
	case "gzip":
		out, decomp = tarPath+".gz", []string{"gzip", "-dc"}
		pipe(t, tarPath, out, "gzip", "-n", "-c")
	case "pigz":
		out, decomp = tarPath+".pigz.gz", []string{"pigz", "-dc"}
		pipe(t, tarPath, out, "pigz", "-n", "-c", "-p", "2", "-b", "32")
	case "zstd":
		out, decomp = tarPath+".zst", []string{"zstd", "-dcq"}
		pipe(t, tarPath, out, "zstd", "-q", "-c", "--check")
	case "zstd-multi":
		out, decomp = tarPath+".multi.zst", []string{"zstd", "-dcq"}
		data, err := os.ReadFile(tarPath)
		if err != nil {
			t.Fatal(err)
		}
		var all bytes.Buffer
		for i := 0; i < len(data); i += 64 << 10 {
			piece := data[i:min(i+64<<10, len(data))]
			cmd := exec.Command("zstd", "-q", "-c", "--check")
			cmd.Stdin = bytes.NewReader(piece)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			frame, err := cmd.Output()
			if err != nil {
				t.Fatalf("zstd: %v %s", err, stderr.String())
			}
			all.Write(frame)
			if i == 0 {
				skip := make([]byte, 8+13)
				binary.LittleEndian.PutUint32(skip, 0x184D2A5E)
				binary.LittleEndian.PutUint32(skip[4:], 13)
				copy(skip[8:], "tartest frame")
				all.Write(skip)
			}
		}
		if err := os.WriteFile(out, all.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("tartest: unknown compression %q", kind)
	}
	got, err := exec.Command(decomp[0], append(decomp[1:], out)...).Output()
	if err != nil {
		t.Fatalf("%v %s: %v", decomp, out, err)
	}
	want, err := os.ReadFile(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("%s does not decompress to %s", out, tarPath)
	}
	return out
}

func pipe(t testing.TB, in, out string, name string, args ...string) {
	t.Helper()
	src, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdin, cmd.Stdout = src, dst
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if e := dst.Close(); err == nil {
		err = e
	}
	if err != nil {
		t.Fatalf("%s %v: %v %s", name, args, err, stderr.String())
	}
}

// DiffID is the sha256 hex of a file (for an uncompressed tar: its diffID).
func DiffID(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// CopyFlip copies src to dst with the byte at off inverted (off < 0
// counts from the end).
func CopyFlip(t testing.TB, src, dst string, off int64) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += int64(len(b))
	}
	b[off] ^= 0xff
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// CopyTruncate copies the first n bytes of src to dst.
func CopyTruncate(t testing.TB, src, dst string, n int64) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b[:n], 0o644); err != nil {
		t.Fatal(err)
	}
}
