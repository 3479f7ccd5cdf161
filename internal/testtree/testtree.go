// Package testtree builds source trees for tests, turns them into EROFS images
// with the real mkfs.erofs, and describes trees as manifests so a test can
// compare a source tree with an image listing or a kernel mount.
//
// It is test support only; nothing outside _test.go files and the e2e package
// should import it.
package testtree

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Options selects what Build puts into a tree.
type Options struct {
	Seed      int64
	Files     int  // regular files with random content (default 40)
	MaxSize   int  // max size of those files (default 200 KiB)
	BigDir    int  // entries in one big directory (0: none)
	Xattrs    bool // user./trusted./security. xattrs incl. long names
	Specials  bool // device nodes and fifos (needs root)
	Hardlinks bool // a few hard links
	Sparse4G  bool // one sparse file over 4 GiB
	Symlinks  bool // symlinks, relative, absolute and long
	Dup       bool // some files with identical content
}

// Full returns options enabling everything except the 4 GiB sparse file.
func Full(seed int64) Options {
	return Options{Seed: seed, Files: 60, MaxSize: 300 << 10, BigDir: 0, Xattrs: true,
		Specials: true, Hardlinks: true, Symlinks: true, Dup: true}
}

// Build creates a tree under dir (which must exist or will be created).
func Build(t testing.TB, dir string, o Options) {
	t.Helper()
	if err := BuildErr(dir, o); err != nil {
		t.Fatalf("testtree: %v", err)
	}
}

// BuildErr is Build for non-test callers (benchmarks, demo tooling).
func BuildErr(dir string, o Options) error {
	if o.Files == 0 {
		o.Files = 40
	}
	if o.MaxSize == 0 {
		o.MaxSize = 200 << 10
	}
	rng := rand.New(rand.NewSource(o.Seed))
	mk := func(p string) error { return os.MkdirAll(filepath.Join(dir, p), 0o755) }
	for _, d := range []string{"a", "a/b", "a/b/c", "empty-dir", "docs"} {
		if err := mk(d); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "a/b"), 0o750); err != nil {
		return err
	}
	write := func(p string, data []byte, mode os.FileMode) error {
		full := filepath.Join(dir, p)
		if err := os.WriteFile(full, data, mode); err != nil {
			return err
		}
		return os.Chmod(full, mode)
	}
	if err := write("empty", nil, 0o644); err != nil {
		return err
	}
	if err := write("a/b/c/exec.sh", []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		return err
	}
	if err := write("docs/setuid", []byte("s"), 0o4755); err != nil {
		return err
	}
	// Sizes that hit block edges.
	if err := mk("edge"); err != nil {
		return err
	}
	for _, n := range []int{1, 4095, 4096, 4097, 8192, 12289, 65536 + 7} {
		if err := write(fmt.Sprintf("edge/%d", n), randBytes(rng, n, true), 0o644); err != nil {
			return err
		}
	}
	var firstContent []byte
	for i := 0; i < o.Files; i++ {
		sub := []string{"", "a", "a/b", "a/b/c", "docs"}[i%5]
		n := rng.Intn(o.MaxSize)
		data := randBytes(rng, n, i%3 != 0) // a third incompressible
		if i == 0 {
			firstContent = data
		}
		if err := write(filepath.Join(sub, fmt.Sprintf("f%03d.bin", i)), data, 0o644); err != nil {
			return err
		}
	}
	if o.Dup && firstContent != nil {
		if err := write("docs/dup-of-f000.bin", firstContent, 0o600); err != nil {
			return err
		}
	}
	if o.Symlinks {
		links := map[string]string{
			"link-rel":     "a/b/c/exec.sh",
			"a/link-up":    "../docs",
			"link-abs":     "/etc/passwd",
			"link-dangle":  "does/not/exist",
			"link-long":    strings.Repeat("x", 1000) + "/target",
			"a/b/link-dot": ".",
		}
		for p, target := range links {
			if err := os.Symlink(target, filepath.Join(dir, p)); err != nil {
				return err
			}
		}
	}
	if o.Hardlinks {
		if err := write("docs/hl-src", []byte("hard linked content\n"), 0o640); err != nil {
			return err
		}
		for _, p := range []string{"a/hl-1", "a/b/hl-2"} {
			if err := os.Link(filepath.Join(dir, "docs/hl-src"), filepath.Join(dir, p)); err != nil {
				return err
			}
		}
	}
	if o.Specials {
		if err := mk("dev"); err != nil {
			return err
		}
		if err := unix.Mknod(filepath.Join(dir, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			return fmt.Errorf("mknod (needs root): %w", err)
		}
		if err := unix.Mknod(filepath.Join(dir, "dev/sda9"), unix.S_IFBLK|0o660, int(unix.Mkdev(8, 9))); err != nil {
			return err
		}
		if err := unix.Mknod(filepath.Join(dir, "dev/bigminor"), unix.S_IFCHR|0o600, int(unix.Mkdev(259, 70000))); err != nil {
			return err
		}
		if err := unix.Mkfifo(filepath.Join(dir, "dev/fifo"), 0o644); err != nil {
			return err
		}
	}
	if o.Xattrs {
		x := func(p, name string, val []byte) error {
			return unix.Lsetxattr(filepath.Join(dir, p), name, val, 0)
		}
		sets := []struct {
			p, n string
			v    []byte
		}{
			{"empty", "user.comment", []byte("hello")},
			{"empty", "user.empty", nil},
			{"a/b/c/exec.sh", "trusted.overlay.custom", []byte{0, 1, 2, 3}},
			{"a/b/c/exec.sh", "security.selinux", []byte("system_u:object_r:bin_t:s0\x00")},
			{"a", "user." + strings.Repeat("n", 200), bytes.Repeat([]byte("v"), 300)},
			{"docs", "user.shared", []byte("same-everywhere")},
			{"a/b", "user.shared", []byte("same-everywhere")},
			{"edge/4096", "user.shared", []byte("same-everywhere")},
			{"edge/4096", "trusted.big", bytes.Repeat([]byte{0xab}, 2000)},
		}
		for _, s := range sets {
			if err := x(s.p, s.n, s.v); err != nil {
				return fmt.Errorf("setxattr %s %s: %w", s.p, s.n, err)
			}
		}
	}
	if o.BigDir > 0 {
		if err := mk("big"); err != nil {
			return err
		}
		for i := 0; i < o.BigDir; i++ {
			name := fmt.Sprintf("entry-%06d-%s", i, strings.Repeat("z", i%40))
			if err := write(filepath.Join("big", name), []byte(name), 0o644); err != nil {
				return err
			}
		}
	}
	if o.Sparse4G {
		f, err := os.Create(filepath.Join(dir, "sparse-5g"))
		if err != nil {
			return err
		}
		_, err1 := f.WriteAt([]byte("head"), 0)
		_, err2 := f.WriteAt([]byte("tail"), 5<<30-4)
		if err := f.Close(); err != nil || err1 != nil || err2 != nil {
			return fmt.Errorf("sparse file: %v %v %v", err, err1, err2)
		}
	}
	return nil
}

func randBytes(rng *rand.Rand, n int, compressible bool) []byte {
	b := make([]byte, n)
	if !compressible {
		rng.Read(b)
		return b
	}
	words := []string{"erofs ", "block ", "device ", "nbd ", "layer ", "blob ", "\n"}
	for i := 0; i < n; {
		w := words[rng.Intn(len(words))]
		i += copy(b[i:], w)
	}
	return b
}

// Mkfs runs mkfs.erofs with args, then the image path, then the source dir.
func Mkfs(t testing.TB, image, src string, args ...string) {
	t.Helper()
	if out, err := MkfsErr(image, src, args...); err != nil {
		t.Fatalf("mkfs.erofs %v: %v\n%s", args, err, out)
	}
}

// MkfsErr is Mkfs for non-test callers.
func MkfsErr(image, src string, args ...string) ([]byte, error) {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		return nil, fmt.Errorf("mkfs.erofs not installed (run scripts/deps.sh): %w", err)
	}
	a := append([]string{"-T0", "--quiet"}, args...)
	a = append(a, image, src)
	// -T0 fixes every timestamp, so mkfs writes compact inodes where it can.
	// (SOURCE_DATE_EPOCH would make mkfs 1.5 write only extended inodes.)
	return exec.Command("mkfs.erofs", a...).CombinedOutput()
}

// Entry describes one path of a tree, in the same terms `erofs-blockd ls`
// and a kernel mount can be compared with.
type Entry struct {
	Path   string            `json:"path"` // "/" for the root, "/a/b" below it
	Type   string            `json:"type"` // file dir symlink char block fifo socket
	Mode   uint32            `json:"mode"` // permission bits incl. setuid/setgid/sticky
	UID    uint32            `json:"uid"`
	GID    uint32            `json:"gid"`
	Size   int64             `json:"size"` // regular files and symlinks only
	Target string            `json:"target,omitempty"`
	Rdev   string            `json:"rdev,omitempty"` // "major:minor"
	SHA256 string            `json:"sha256,omitempty"`
	Nlink  uint32            `json:"nlink,omitempty"`  // regular files only
	Xattrs map[string]string `json:"xattrs,omitempty"` // name -> hex value
}

// Manifest walks root (a source tree or a mount point) and returns entries
// sorted by path. Directory sizes and mtimes are not compared: they are
// filesystem specific.
func Manifest(root string, withXattrs bool) ([]Entry, error) {
	var out []Entry
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		name := "/"
		if rel != "." {
			name = "/" + filepath.ToSlash(rel)
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := Entry{Path: name, Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			e.Type, e.Size, e.Nlink = "file", st.Size, uint32(st.Nlink)
			sum, err := hashFile(p)
			if err != nil {
				return err
			}
			e.SHA256 = sum
		case unix.S_IFDIR:
			e.Type = "dir"
		case unix.S_IFLNK:
			e.Type, e.Size = "symlink", st.Size
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.Target = t
		case unix.S_IFCHR:
			e.Type, e.Rdev = "char", fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		case unix.S_IFBLK:
			e.Type, e.Rdev = "block", fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		case unix.S_IFIFO:
			e.Type = "fifo"
		case unix.S_IFSOCK:
			e.Type = "socket"
		}
		if withXattrs {
			x, err := listXattrs(p)
			if err != nil {
				return err
			}
			e.Xattrs = x
		}
		out = append(out, e)
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, err
}

// CompareTrees fails t unless the tree at got (typically a mount point)
// equals the tree at want: types, modes, owners, sizes, targets, rdevs,
// contents and xattrs. It returns the number of entries compared.
func CompareTrees(t testing.TB, want, got string) int {
	t.Helper()
	w, err := Manifest(want, true)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Manifest(got, true)
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(w, g, 0); len(d) > 0 {
		t.Fatalf("tree %s differs from %s:\n%s", got, want, strings.Join(d, "\n"))
	}
	return len(w)
}

// HashFile returns the hex sha256 of a file's content.
func HashFile(p string) (string, error) { return hashFile(p) }

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func listXattrs(p string) (map[string]string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if err == syscall.ENOTSUP {
			return nil, nil
		}
		return nil, fmt.Errorf("listxattr %s: %w", p, err)
	}
	var m map[string]string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		val := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(p, name, val)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s %s: %w", p, name, err)
		}
		if m == nil {
			m = map[string]string{}
		}
		m[name] = hex.EncodeToString(val[:vn])
	}
	return m, nil
}

// Diff compares two manifests and returns human-readable differences
// (at most max lines; 0 means 50).
func Diff(want, got []Entry, max int) []string {
	if max == 0 {
		max = 50
	}
	var diffs []string
	w := map[string]Entry{}
	for _, e := range want {
		w[e.Path] = e
	}
	g := map[string]Entry{}
	for _, e := range got {
		g[e.Path] = e
	}
	for _, e := range want {
		o, ok := g[e.Path]
		if !ok {
			diffs = append(diffs, "missing: "+e.Path)
			continue
		}
		if d := compare(e, o); d != "" {
			diffs = append(diffs, e.Path+": "+d)
		}
	}
	for _, e := range got {
		if _, ok := w[e.Path]; !ok {
			diffs = append(diffs, "unexpected: "+e.Path)
		}
	}
	if len(diffs) > max {
		diffs = append(diffs[:max], fmt.Sprintf("... and %d more", len(diffs)-max))
	}
	return diffs
}

func compare(a, b Entry) string {
	var d []string
	if a.Type != b.Type {
		d = append(d, fmt.Sprintf("type %s != %s", a.Type, b.Type))
	}
	if a.Mode != b.Mode {
		d = append(d, fmt.Sprintf("mode %o != %o", a.Mode, b.Mode))
	}
	if a.UID != b.UID || a.GID != b.GID {
		d = append(d, fmt.Sprintf("owner %d:%d != %d:%d", a.UID, a.GID, b.UID, b.GID))
	}
	if a.Type == "file" || a.Type == "symlink" {
		if a.Size != b.Size {
			d = append(d, fmt.Sprintf("size %d != %d", a.Size, b.Size))
		}
	}
	if a.Target != b.Target {
		d = append(d, fmt.Sprintf("target %q != %q", a.Target, b.Target))
	}
	if a.Rdev != b.Rdev {
		d = append(d, fmt.Sprintf("rdev %s != %s", a.Rdev, b.Rdev))
	}
	if a.SHA256 != b.SHA256 {
		d = append(d, "content differs")
	}
	if a.Type == "file" && a.Nlink != 0 && b.Nlink != 0 && a.Nlink != b.Nlink {
		d = append(d, fmt.Sprintf("nlink %d != %d", a.Nlink, b.Nlink))
	}
	if a.Xattrs != nil || b.Xattrs != nil {
		if fmt.Sprint(a.Xattrs) != fmt.Sprint(b.Xattrs) {
			d = append(d, fmt.Sprintf("xattrs %v != %v", a.Xattrs, b.Xattrs))
		}
	}
	return strings.Join(d, ", ")
}
