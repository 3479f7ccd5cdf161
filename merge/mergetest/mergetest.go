// Package mergetest is test support for `erofs-blockd merge`: it writes
// three overlapping layer trees (overrides, OCI and overlayfs whiteouts,
// opaque directories, a directory replaced by a file and the reverse, hard
// links, symlinks, devices, xattrs), builds them with the real mkfs.erofs,
// and applies layer trees in order with a simple on-disk reference overlay
// so a test can compare the merged image with testtree.Manifest/Diff.
//
// Test support only (needs root for device nodes, chown and trusted.*).
package mergetest

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

type spec struct {
	w    func(p string, data []byte, mode os.FileMode)
	dir  func(p string, mode os.FileMode)
	link func(p, target string)
	hard func(p, existing string)
	dev  func(p string, mode uint32, major, minor uint32)
	x    func(p, name string, val []byte)
	own  func(p string, uid, gid int)
}

func newSpec(root string) (*spec, *error) {
	var err error
	set := func(e error) {
		if e != nil && err == nil {
			err = e
		}
	}
	full := func(p string) string { return filepath.Join(root, p) }
	s := &spec{}
	s.dir = func(p string, mode os.FileMode) {
		set(os.MkdirAll(full(p), 0o755))
		set(os.Chmod(full(p), mode))
	}
	s.w = func(p string, data []byte, mode os.FileMode) {
		set(os.MkdirAll(filepath.Dir(full(p)), 0o755))
		set(os.WriteFile(full(p), data, mode))
		set(os.Chmod(full(p), mode))
	}
	s.link = func(p, target string) {
		set(os.MkdirAll(filepath.Dir(full(p)), 0o755))
		set(os.Symlink(target, full(p)))
	}
	s.hard = func(p, existing string) {
		set(os.MkdirAll(filepath.Dir(full(p)), 0o755))
		set(os.Link(full(existing), full(p)))
	}
	s.dev = func(p string, mode uint32, major, minor uint32) {
		set(os.MkdirAll(filepath.Dir(full(p)), 0o755))
		if mode&unix.S_IFMT == unix.S_IFIFO {
			set(unix.Mkfifo(full(p), mode&0o7777))
			return
		}
		set(unix.Mknod(full(p), mode, int(unix.Mkdev(major, minor))))
	}
	s.x = func(p, name string, val []byte) { set(unix.Lsetxattr(full(p), name, val, 0)) }
	s.own = func(p string, uid, gid int) { set(os.Lchown(full(p), uid, gid)) }
	return s, &err
}

func rnd(seed int64, n int, text bool) []byte {
	rng := rand.New(rand.NewSource(seed))
	b := make([]byte, n)
	if !text {
		rng.Read(b)
		return b
	}
	words := []string{"layer ", "merge ", "erofs ", "index ", "chunk ", "\n"}
	for i := 0; i < n; {
		i += copy(b[i:], words[rng.Intn(len(words))])
	}
	return b
}

// WriteLayers writes the three layer trees under dir/l1, dir/l2, dir/l3
// and returns their paths, lowest first.
func WriteLayers(dir string) ([]string, error) {
	var out []string
	for i, f := range []func(*spec){layer1, layer2, layer3} {
		root := filepath.Join(dir, fmt.Sprintf("l%d", i+1))
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, err
		}
		s, err := newSpec(root)
		f(s)
		if *err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, *err)
		}
		out = append(out, root)
	}
	return out, nil
}

func layer1(s *spec) {
	s.w("etc/hostname", []byte("base-host\n"), 0o644)
	s.x("etc/hostname", "user.comment", []byte("from base"))
	s.w("etc/os-release", []byte("NAME=base\n"), 0o644)
	s.w("bin/tool", []byte("#!/bin/sh\necho tool\n"), 0o755)
	s.x("bin/tool", "security.selinux", []byte("system_u:object_r:bin_t:s0\x00"))
	s.own("bin/tool", 100000, 100001)
	s.w("bin/big", rnd(1, 100<<10+123, false), 0o644)
	s.x("bin/big", "trusted.big", bytes.Repeat([]byte{0xab}, 2000))
	for _, n := range []int{1, 4095, 4096, 4097, 8192, 12289} {
		s.w(fmt.Sprintf("sizes/%d", n), rnd(int64(n), n, n%2 == 0), 0o644)
	}
	s.w("data/gone.txt", []byte("to be deleted by .wh.\n"), 0o644)
	s.w("data/gone-ovl", []byte("to be deleted by a 0/0 char device\n"), 0o644)
	s.w("data/keep/k1", []byte("kept\n"), 0o640)
	s.own("data/keep/k1", 1000, 1000)
	s.w("data/dir-to-delete/a", []byte("a\n"), 0o644)
	s.w("data/dir-to-delete/sub/b", []byte("b\n"), 0o644)
	s.x("data", "user."+strings.Repeat("n", 200), bytes.Repeat([]byte("v"), 300))
	s.w("opq/old1", []byte("old1\n"), 0o644)
	s.w("opq/sub/x", []byte("x\n"), 0o644)
	s.w("opq2/old", []byte("old\n"), 0o644)
	s.w("swap/dir2file/x", []byte("x\n"), 0o644)
	s.w("swap/file2dir", []byte("a file for now\n"), 0o644)
	s.w("hl/a", []byte("hard linked three times\n"), 0o644)
	s.hard("hl/b", "hl/a")
	s.hard("hl/c", "hl/a")
	s.hard("data/keep/k1-link", "data/keep/k1")
	s.link("links/short", "../etc/hostname")
	s.link("links/long", strings.Repeat("l", 1000)+"/target")
	s.dev("dev/null", unix.S_IFCHR|0o666, 1, 3)
	s.dev("dev/sda9", unix.S_IFBLK|0o660, 8, 9)
	s.dev("dev/fifo", unix.S_IFIFO|0o644, 0, 0)
	s.w("empty", nil, 0o600)
	s.dir("emptydir", 0o711)
}

func layer2(s *spec) {
	s.w("etc/hostname", []byte("update-host\n"), 0o644)
	s.w("data/.wh.gone.txt", nil, 0o644)
	s.dev("data/gone-ovl", unix.S_IFCHR, 0, 0)
	s.w("data/.wh.dir-to-delete", nil, 0o644)
	s.w("data/keep/added", rnd(7, 9000, true), 0o644)
	s.dir("data", 0o700)
	s.x("data", "user.layer", []byte("2"))
	s.w("opq/.wh..wh..opq", nil, 0o644)
	s.w("opq/new", []byte("new in layer 2\n"), 0o644)
	s.w("opq2/new2", []byte("new2\n"), 0o644)
	s.x("opq2", "trusted.overlay.opaque", []byte("y"))
	s.w("swap/dir2file", []byte("now a file\n"), 0o644)
	s.w("swap/file2dir/inner", []byte("now a dir\n"), 0o644)
	s.w("hl/b", []byte("b replaced\n"), 0o644)
	s.w("bin/big2", rnd(2, 300<<10, true), 0o644)
	s.link("links/short", "../etc/os-release")
}

func layer3(s *spec) {
	s.w("data/gone.txt", []byte("resurrected\n"), 0o644)
	s.w("sizes/.wh.4097", nil, 0o644)
	s.w("opq/new", []byte("new replaced in layer 3\n"), 0o600)
	s.dev("bin/tool", unix.S_IFCHR, 0, 0)
	s.w("new/deep/er/file", rnd(3, 5000, true), 0o644)
	s.w("hl/e", []byte("pair\n"), 0o644)
	s.hard("hl/f", "hl/e")
	s.dir("emptydir", 0o755)
	s.dir("data", 0o750) // replaces layer 2's mode and xattrs
}

// Variant is a way of building the layer images.
type Variant struct {
	Name string
	Args [3][]string // mkfs.erofs arguments per layer
	// Addressable: every file can be referenced in place (--no-copy works).
	Addressable bool
}

// Variants: every layer plain with -Enoinline_data; mkfs defaults (inline
// tails); and a mix with lz4/lz4hc compression.
var Variants = []Variant{
	{Name: "noinline", Args: [3][]string{{"-Enoinline_data"}, {"-Enoinline_data"}, {"-Enoinline_data"}}, Addressable: true},
	{Name: "inline", Args: [3][]string{nil, nil, nil}},
	{Name: "lz4", Args: [3][]string{{"-Enoinline_data"}, {"-zlz4hc"}, {"-zlz4"}}},
}

// Layers writes the trees under dir and builds one image per layer with
// mkfs.erofs. It returns the trees and the image paths, lowest first.
func Layers(t testing.TB, dir string, v Variant) (trees, images []string) {
	t.Helper()
	trees, err := WriteLayers(filepath.Join(dir, "trees"))
	if err != nil {
		t.Fatal(err)
	}
	for i, tr := range trees {
		img := filepath.Join(dir, fmt.Sprintf("layer%d.erofs", i+1))
		testtree.Mkfs(t, img, tr, v.Args[i]...)
		images = append(images, img)
	}
	return trees, images
}

// Reference applies the layer trees in order into dir/ref (a simple
// overlay: later layers win, whiteouts and opaque directories applied) and
// returns its path.
func Reference(t testing.TB, dir string, trees []string) string {
	t.Helper()
	ref := filepath.Join(dir, "ref")
	if err := os.MkdirAll(ref, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tr := range trees {
		if err := Apply(ref, tr); err != nil {
			t.Fatal(err)
		}
	}
	return ref
}

// Present and Absent are paths the merged tree must and must not have: a
// check that the reference overlay itself applies the layers as intended.
var (
	Present = []string{"/data/gone.txt", "/opq/new", "/opq2/new2", "/swap/dir2file", "/swap/file2dir/inner",
		"/hl/a", "/hl/b", "/hl/c", "/hl/e", "/hl/f", "/data/keep/added", "/data/keep/k1-link", "/bin/big2", "/dev/null"}
	Absent = []string{"/data/gone-ovl", "/data/dir-to-delete", "/opq/old1", "/opq/sub", "/opq2/old", "/swap/dir2file/x",
		"/sizes/4097", "/bin/tool", "/data/.wh.gone.txt", "/opq/.wh..wh..opq", "/sizes/.wh.4097"}
)
