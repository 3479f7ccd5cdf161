package tartest

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/merge/mergetest"
)

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (device nodes, chown, trusted.* xattrs)")
	}
	for _, b := range []string{"tar", "bsdtar", "gzip", "pigz", "zstd"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not installed", b)
		}
	}
}

// TestReference: for every tool, the tars have the intended shape and the
// reference tree applies the layers as intended (whiteouts, opaque
// directories, last entry wins, sparse contents, long names, big ids,
// hard links across directories, nanosecond mtimes where the format has
// them); the three PAX writers give the same reference.
func TestReference(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	refs := map[string]string{}
	for _, tool := range Tools {
		t.Run(tool, func(t *testing.T) {
			d := filepath.Join(dir, tool)
			tars := Tars(t, d, tool)
			if len(tars) != 4 {
				t.Fatalf("%d tars", len(tars))
			}
			checkShape(t, tool, tars)
			ref := Reference(t, d, tars)
			refs[tool] = ref
			checkRef(t, tool, ref, filepath.Join(d, tool+"-trees"))
		})
	}
	for _, tool := range []string{"bsdtar", "go"} {
		if refs[tool] == "" || refs["gnu-pax"] == "" {
			continue
		}
		w, err := Manifest(refs["gnu-pax"])
		if err != nil {
			t.Fatal(err)
		}
		g, err := Manifest(refs[tool])
		if err != nil {
			t.Fatal(err)
		}
		if d := Diff(w, g, DiffOptions{}); len(d) > 0 {
			t.Errorf("reference from %s differs from gnu-pax's:\n%s", tool, strings.Join(d, "\n"))
		}
	}
}

func checkShape(t *testing.T, tool string, tars []string) {
	f, err := os.Open(tars[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	names := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names[h.Name] = h
	}
	dot := tool == "gnu" || tool == "bsdtar"
	if _, ok := names["./bin/big"]; ok != dot {
		t.Errorf("%s: ./bin/big present %v, want %v", tool, ok, dot)
	}
	if _, ok := names["bin/big"]; ok == dot {
		t.Errorf("%s: bin/big present %v, want %v", tool, ok, !dot)
	}
	// The old GNU sparse type with extension blocks in GNU format.
	raw, _ := os.ReadFile(tars[0])
	sparseS := false
	for _, off := range HeaderBlocks(t, tars[0]) {
		if raw[off+156] == 'S' {
			sparseS = true
		}
	}
	if sparseS != (tool == "gnu") {
		t.Errorf("%s: GNU 'S' sparse headers %v", tool, sparseS)
	}
	if tool != "go" && tool != "gnu" && !bytes.Contains(raw, []byte("GNU.sparse.major=1")) {
		t.Errorf("%s: no PAX 1.0 sparse entry", tool)
	}
	// The dup layer: dup/file twice, and a sparse map archive/tar reads.
	f4, err := os.Open(tars[3])
	if err != nil {
		t.Fatal(err)
	}
	defer f4.Close()
	tr = tar.NewReader(f4)
	dups := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch strings.TrimPrefix(h.Name, "./") {
		case "dup/file":
			dups++
		case DupSparse:
			b, _ := io.ReadAll(tr)
			if !bytes.Equal(b, SparseContent(DupSparse, dupSparse)) {
				t.Errorf("archive/tar reads %s wrong", DupSparse)
			}
		}
	}
	if dups != 2 {
		t.Errorf("dup/file %d times in the dup layer", dups)
	}
}

func checkRef(t *testing.T, tool, ref, trees string) {
	p := func(s string) string { return filepath.Join(ref, s) }
	for _, s := range mergetest.Present {
		if _, err := os.Lstat(p(s)); err != nil {
			t.Errorf("missing %s", s)
		}
	}
	for _, s := range mergetest.Absent {
		if s == "/opq2/old" && tool == "gnu" {
			continue // opaque by xattr only, and --format=gnu keeps no xattrs
		}
		if _, err := os.Lstat(p(s)); err == nil {
			t.Errorf("%s present", s)
		}
	}
	if _, err := os.Lstat(p("/opq2/old")); (err == nil) != (tool == "gnu") {
		t.Errorf("/opq2/old: %v", err)
	}
	content := func(s string, want []byte) {
		t.Helper()
		b, err := os.ReadFile(p(s))
		if err != nil {
			t.Error(err)
		} else if !bytes.Equal(b, want) {
			t.Errorf("%s: content %.40q, want %.40q", s, b, want)
		}
	}
	content("data/gone.txt", []byte("resurrected\n"))
	content("etc/hostname", []byte("update-host\n"))
	content(LongName, []byte("layer 2 replaced the long name\n"))
	content(LongPath, []byte("a path over 255 bytes\n"))
	content(MaxName, []byte("a 255-byte name\n"))
	content("tar/replaced", []byte("layer 2\n"))
	content("dup/file", DupSecond)
	content(DupSparse, SparseContent(DupSparse, dupSparse))
	for _, s := range []string{"tar/sparse-4k", "tar/sparse-unaligned", "tar/sparse-tail"} {
		content(s, SparseContent(s, SparseFiles[s]))
	}
	for _, s := range []string{"tar/sparse-hole", "extra/wh-me", "tar/.wh.sparse-hole", "extra/.wh.wh-me"} {
		if _, err := os.Lstat(p(s)); err == nil {
			t.Errorf("%s not whited out", s)
		}
	}
	st := func(s string) *unix.Stat_t {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(p(s), &st); err != nil {
			t.Fatal(err)
		}
		return &st
	}
	same := func(a, b string) {
		t.Helper()
		if sa, sb := st(a), st(b); sa.Ino != sb.Ino {
			t.Errorf("%s and %s are not one inode", a, b)
		}
	}
	same(CrossLink, "bin/big")
	same(LongHard, LongPath)
	same("dup/file", "dup/file-link")
	same("hl/a", "hl/c")
	if sa, sb := st("hl/a"), st("hl/b"); sa.Ino == sb.Ino {
		t.Error("hl/b still linked to hl/a after layer 2 replaced it")
	}
	if s := st(BigIDs); s.Uid != BigID || s.Gid != BigID {
		t.Errorf("%s owner %d:%d", BigIDs, s.Uid, s.Gid)
	}
	if s := st("dup/file"); s.Mode&0o7777 != 0o600 || s.Uid != 1234 || s.Gid != 5678 {
		t.Errorf("dup/file mode %o owner %d:%d: the first copy's metadata", s.Mode, s.Uid, s.Gid)
	}
	if s := st("dup/dir"); s.Mode&0o7777 != 0o750 || s.Uid != 6 {
		t.Errorf("dup/dir mode %o uid %d: not the last entry's", s.Mode, s.Uid)
	}
	if s := st("tar/bigminor"); s.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(s.Rdev) != 259 || unix.Minor(s.Rdev) != 70000 {
		t.Errorf("tar/bigminor mode %o rdev %x", s.Mode, s.Rdev)
	}
	if s := st("tar/fifo"); s.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("tar/fifo mode %o", s.Mode)
	}
	if s := st("tar/setuid"); s.Mode&0o7777 != 0o4755 {
		t.Errorf("tar/setuid mode %o", s.Mode)
	}
	if s := st("tar/sticky"); s.Mode&0o7777 != 0o1777 {
		t.Errorf("tar/sticky mode %o", s.Mode)
	}
	if l, _ := os.Readlink(p("dup/type")); l != "file" {
		t.Errorf("dup/type -> %q", l)
	}
	if l, _ := os.Readlink(p("tar/links/mid")); l != LongTarget {
		t.Errorf("tar/links/mid -> %q", l)
	}
	if l, _ := os.Readlink(p("links/long")); len(l) != 1007 {
		t.Errorf("links/long target %d bytes", len(l))
	}
	// mtimes: the tree's, to the nanosecond where the format keeps them.
	for _, s := range []string{"bin/big2", "tar/sparse-4k", LongPath, "links/short", "tar/sticky"} {
		var tree unix.Stat_t
		l := filepath.Join(trees, "l1", s)
		if _, err := os.Lstat(filepath.Join(trees, "l2", s)); err == nil {
			l = filepath.Join(trees, "l2", s)
		}
		if err := unix.Lstat(l, &tree); err != nil {
			t.Fatal(err)
		}
		want := tree.Mtim
		if tool == "gnu" {
			want.Nsec = 0
		} else if want.Nsec == 0 {
			t.Errorf("%s: the tree's mtime has no nanoseconds", s)
		}
		if got := st(s).Mtim; got != want {
			t.Errorf("%s: mtime %v, want %v", s, got, want)
		}
	}
	x, _ := getxattr(p("bin/big"), "trusted.big")
	if (len(x) == 2000) != (tool != "gnu") {
		t.Errorf("bin/big trusted.big: %d bytes", len(x))
	}
	x, _ = getxattr(p("dup/file"), "user.dup")
	if string(x) != "second" {
		t.Errorf("dup/file user.dup = %q", x)
	}
	m, err := Manifest(ref)
	if err != nil {
		t.Fatal(err)
	}
	links := 0
	for _, e := range m {
		if e.Link != "" {
			links++
		}
	}
	if links < 8 {
		t.Errorf("manifest has %d hard-linked entries", links)
	}
	t.Logf("%s: %d entries", tool, len(m))
}

// TestCompress: every kind decompresses back (Compress checks) and the
// multi-frame zstd has several frames and the skippable one.
func TestCompress(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "l.tar")
	if err := WriteDupLayer(p); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.tar")
	b, _ := os.ReadFile(p)
	os.WriteFile(big, bytes.Repeat(b, 20), 0o644)
	for _, k := range Compressions {
		out := Compress(t, big, k)
		c, _ := os.ReadFile(out)
		switch k {
		case "gzip", "pigz":
			if c[0] != 0x1f || c[1] != 0x8b {
				t.Errorf("%s: not gzip", k)
			}
		case "zstd-multi":
			if n := bytes.Count(c, []byte{0x28, 0xb5, 0x2f, 0xfd}); n < 3 {
				t.Errorf("%d zstd frames", n)
			}
			if !bytes.Contains(c, []byte{0x5e, 0x2a, 0x4d, 0x18}) {
				t.Error("no skippable frame")
			}
		}
	}
}
