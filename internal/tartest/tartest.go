// Package tartest is test support for tar layers ("tar layers as they
// are", issue 13): it writes overlapping OCI-style layer trees with every
// feature a layer tar carries, turns them into one uncompressed tar per
// layer with a choice of real tools (GNU tar in gnu and pax formats,
// bsdtar, Go's archive/tar), compresses tars with the real gzip, pigz and
// zstd binaries, and builds the reference tree: each tar extracted by GNU
// tar, the layers applied in order with OCI whiteouts.
//
// The trees start from merge/mergetest's three layers (overrides, .wh.
// whiteouts, opaque directories, dir↔file replacement, hard links,
// symlinks, devices, xattrs) and add what tar layers need: sparse files
// (4 KiB-aligned data, unaligned data, all hole, more than four segments),
// paths longer than 100 and 255 bytes, long symlink and hard link targets,
// uid/gid 4000000, nanosecond mtimes, fifos, a file hard-linked across
// directories; a fourth layer, always written with archive/tar, has the
// same path several times (last wins), "./x" and "x" spellings of one
// path, a type change within the tar, and a PAX 1.0 sparse file with
// unaligned segments.
//
// Test support only: it needs root (device nodes, chown, trusted.* xattrs).
package tartest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/merge/mergetest"
)

// Tools are the tar writers Tars knows:
//   - "gnu": GNU tar --format=gnu (old GNU sparse headers with extension
//     blocks, ././@LongLink names, base-256 ids, whole-second mtimes, no
//     xattrs), entries named "./x";
//   - "gnu-pax": GNU tar --format=pax --xattrs --xattrs-include='*'
//     (GNU.sparse 1.0, SCHILY.xattr), entries named "x" (no root entry);
//   - "bsdtar": libarchive's bsdtar --format=pax (GNU.sparse 1.0,
//     SCHILY.xattr and LIBARCHIVE.xattr), entries named "./x";
//   - "go": archive/tar PAX with SCHILY.xattr records (no sparse files:
//     holes are written as zeros), entries named "x".
var Tools = []string{"gnu", "gnu-pax", "bsdtar", "go"}

// Compressions are the kinds Compress knows.
var Compressions = []string{"gzip", "pigz", "zstd", "zstd-multi"}

// Paths of the features the trees add to mergetest's layers, for tests
// that check them one by one.
var (
	LongName   = "tar/" + strings.Repeat("n", 120)                                  // path > 100
	LongPath   = "tar/" + strings.Repeat("d", 150) + "/" + strings.Repeat("f", 150) // path > 255
	MaxName    = "tar/" + strings.Repeat("m", 255)                                  // a 255-byte component
	LongTarget = strings.Repeat("t", 200) + "/target"                               // 100 < len < 255
	BigIDs     = "tar/bigids"                                                       // uid/gid 4000000
	CrossLink  = "tar/cross/link-to-big"                                            // hard link of bin/big
	LongHard   = "tar/" + strings.Repeat("h", 110)                                  // hard link of LongPath
)

// BigID is the uid and gid of BigIDs: beyond the 7 octal digits of ustar.
const BigID = 4000000

// Sparse files: name -> size and data segments (offset -> data written by
// SparseData with a seed per segment). Layer 1 has 4k (six 4 KiB segments:
// GNU's header holds four, the rest go to extension blocks), unaligned and
// hole; layer 3 has tail (data in the last bytes); the dup layer has the
// hand-made PAX 1.0 entry with unaligned segments.
type Sparse struct {
	Size int64
	Segs [][2]int64 // offset, length
}

// SparseFiles are the sparse files of the layer trees, by path.
var SparseFiles = map[string]Sparse{
	"tar/sparse-4k":        {1 << 20, [][2]int64{{64 << 10, 4096}, {160 << 10, 4096}, {320 << 10, 8192}, {400 << 10, 4096}, {800 << 10, 4096}, {960 << 10, 4096}}},
	"tar/sparse-unaligned": {200007, [][2]int64{{1000, 300}, {70001, 5000}}},
	"tar/sparse-hole":      {64 << 10, nil},
	"tar/sparse-tail":      {300 << 10, [][2]int64{{(300 << 10) - 777, 777}}},
}

// DupSparse is the PAX 1.0 sparse entry of the dup layer, with a sparse
// map whose offsets are not 512-byte aligned (no real tool writes that,
// but the format allows it).
const DupSparse = "dup/sparse-pax"

// Segment lengths are multiples of 512 but the last: GNU tar pads each
// segment to a block in the archive where archive/tar and libarchive read
// them back to back, so shorter segments would mean different files to
// different readers.
var dupSparse = Sparse{300001, [][2]int64{{1000, 512}, {70001, 5120}, {250000, 1}}}

// SparseData is the content of segment i of a sparse file.
func SparseData(path string, i int, n int64) []byte {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%d", path, i)
	seed := h.Sum64()
	b := make([]byte, n)
	for j := range b {
		seed = seed*6364136223846793005 + 1442695040888963407
		b[j] = byte(seed >> 56)
		if b[j] == 0 {
			b[j] = 1 // no zero runs for hole detection to find
		}
	}
	return b
}

// SparseContent is the whole expected content of a sparse file.
func SparseContent(path string, s Sparse) []byte {
	b := make([]byte, s.Size)
	for i, sg := range s.Segs {
		copy(b[sg[0]:], SparseData(path, i, sg[1]))
	}
	return b
}

// Dup layer contents, for tests.
var (
	DupFirst  = []byte("first copy of dup/file\n")
	DupSecond = []byte("second copy of dup/file: this one wins\n")
)

// WriteTrees writes the three layer trees under dir/l1..l3 (mergetest's
// layers plus the tar features) and returns them, lowest first. Every
// entry gets a distinct mtime, most with nanoseconds.
func WriteTrees(t testing.TB, dir string) []string {
	t.Helper()
	trees, err := mergetest.WriteLayers(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i, root := range trees {
		if err := extras(i+1, root); err != nil {
			t.Fatalf("layer %d: %v", i+1, err)
		}
		if err := stamp(root); err != nil {
			t.Fatal(err)
		}
	}
	return trees
}

func extras(layer int, root string) error {
	var err error
	set := func(e error) {
		if e != nil && err == nil {
			err = e
		}
	}
	full := func(p string) string { return filepath.Join(root, p) }
	parent := func(p string) { set(os.MkdirAll(filepath.Dir(full(p)), 0o755)) }
	w := func(p string, data []byte, mode os.FileMode) {
		parent(p)
		set(os.WriteFile(full(p), data, mode))
		set(os.Chmod(full(p), mode))
	}
	sparse := func(p string) {
		s := SparseFiles[p]
		parent(p)
		f, e := os.Create(full(p))
		if e != nil {
			set(e)
			return
		}
		set(f.Truncate(s.Size))
		for i, sg := range s.Segs {
			_, e := f.WriteAt(SparseData(p, i, sg[1]), sg[0])
			set(e)
		}
		set(f.Close())
	}
	switch layer {
	case 1:
		for _, p := range []string{"tar/sparse-4k", "tar/sparse-unaligned", "tar/sparse-hole"} {
			sparse(p)
		}
		w(LongName, []byte("a name over 100 bytes\n"), 0o644)
		w(LongPath, []byte("a path over 255 bytes\n"), 0o640)
		w(MaxName, []byte("a 255-byte name\n"), 0o644)
		parent("tar/links/mid")
		set(os.Symlink(LongTarget, full("tar/links/mid")))
		w(BigIDs, []byte("owned by 4000000\n"), 0o644)
		set(os.Lchown(full(BigIDs), BigID, BigID))
		set(os.MkdirAll(full("tar/bigdir"), 0o755))
		set(os.Lchown(full("tar/bigdir"), BigID, BigID+1))
		set(unix.Mkfifo(full("tar/fifo"), 0o600))
		set(unix.Mknod(full("tar/bigminor"), unix.S_IFCHR|0o600, int(unix.Mkdev(259, 70000))))
		parent(CrossLink)
		set(os.Link(full("bin/big"), full(CrossLink)))
		set(os.Link(full(LongPath), full(LongHard)))
		w("tar/setuid", []byte("#!/bin/sh\n"), 0o4755)
		set(os.Chmod(full("tar/setuid"), 0o4755|os.ModeSetuid))
		set(os.MkdirAll(full("tar/sticky"), 0o755))
		set(unix.Chmod(full("tar/sticky"), 0o1777))
		w("tar/mode000", []byte("no permissions\n"), 0)
		w("tar/replaced", []byte("layer 1 content of a file layer 2 replaces, long enough to span a block boundary or two: "+strings.Repeat("x", 1500)), 0o644)
	case 2:
		w("tar/.wh.sparse-hole", nil, 0o644)
		w(LongName, []byte("layer 2 replaced the long name\n"), 0o600)
		w("tar/replaced", []byte("layer 2\n"), 0o644)
		set(unix.Mkfifo(full("tar/fifo2"), 0o644))
	case 3:
		sparse("tar/sparse-tail")
		w("extra/wh-me", []byte("removed again by the dup layer\n"), 0o644)
		w("extra/keep", []byte("kept\n"), 0o644)
		set(os.Lchown(full("extra/keep"), BigID, 7))
	}
	return err
}

// stamp gives every entry under root its own mtime: seconds from a hash
// of the path, nanoseconds too for most.
func stamp(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		h := fnv.New64a()
		h.Write([]byte(rel))
		v := h.Sum64()
		sec := int64(1600000000 + v%100000000)
		nsec := int64(v>>32) % 1000000000
		if v%5 == 0 {
			nsec = 0
		}
		ts := []unix.Timespec{{Sec: sec, Nsec: nsec}, {Sec: sec, Nsec: nsec}}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}

// Tars writes the layer trees under dir/TOOL-trees and one uncompressed
// tar per layer made by tool (see Tools), plus the dup layer (always
// archive/tar), and returns the four tar paths, lowest first.
func Tars(t testing.TB, dir, tool string) []string {
	t.Helper()
	trees := WriteTrees(t, filepath.Join(dir, tool+"-trees"))
	var out []string
	for i, root := range trees {
		p := filepath.Join(dir, fmt.Sprintf("%s-l%d.tar", tool, i+1))
		if err := TarTree(tool, root, p); err != nil {
			t.Fatalf("layer %d: %v", i+1, err)
		}
		out = append(out, p)
	}
	dup := filepath.Join(dir, fmt.Sprintf("%s-l4.tar", tool))
	if err := WriteDupLayer(dup); err != nil {
		t.Fatal(err)
	}
	return append(out, dup)
}

// TarTree writes the tree at root into the tar file out with tool.
func TarTree(tool, root, out string) error {
	var cmd *exec.Cmd
	switch tool {
	case "gnu":
		cmd = exec.Command("tar", "--format=gnu", "--sparse", "--numeric-owner", "--sort=name",
			"-C", root, "-cf", out, ".")
	case "gnu-pax":
		names, err := topNames(root)
		if err != nil {
			return err
		}
		cmd = exec.Command("tar", append([]string{"--format=pax", "--xattrs", "--xattrs-include=*",
			"--sparse", "--numeric-owner", "--sort=name", "-C", root, "-cf", out, "--"}, names...)...)
	case "bsdtar":
		cmd = exec.Command("bsdtar", "--format=pax", "--xattrs", "--numeric-owner", "-C", root, "-cf", out, ".")
	case "go":
		return goTar(root, out)
	default:
		return fmt.Errorf("tartest: unknown tool %q", tool)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, b)
	}
	return nil
}

func topNames(root string) ([]string, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	var n []string
	for _, e := range ents {
		n = append(n, e.Name())
	}
	sort.Strings(n)
	return n, nil
}

// goTar writes root with archive/tar in PAX format: names without "./",
// numeric owners only, SCHILY.xattr records, hard links as TypeLink to
// the first name of the inode.
func goTar(root, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	links := map[[2]uint64]string{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: int64(st.Mode & 0o7777), Uid: int(st.Uid), Gid: int(st.Gid),
			ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec), Format: tar.FormatPAX}
		xs, err := xattrs(p)
		if err != nil {
			return err
		}
		for k, v := range xs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		var data []byte
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case unix.S_IFREG:
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := links[key]; ok {
				h.Typeflag, h.Linkname = tar.TypeLink, first
				break
			}
			links[key] = h.Name
			if data, err = os.ReadFile(p); err != nil {
				return err
			}
			h.Typeflag, h.Size = tar.TypeReg, int64(len(data))
		case unix.S_IFLNK:
			h.Typeflag = tar.TypeSymlink
			if h.Linkname, err = os.Readlink(p); err != nil {
				return err
			}
		case unix.S_IFCHR, unix.S_IFBLK:
			h.Typeflag = tar.TypeChar
			if st.Mode&unix.S_IFMT == unix.S_IFBLK {
				h.Typeflag = tar.TypeBlock
			}
			h.Devmajor, h.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		case unix.S_IFIFO:
			h.Typeflag = tar.TypeFifo
		default:
			return fmt.Errorf("%s: mode %o not tarred", p, st.Mode)
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		_, err = tw.Write(data)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if e := f.Close(); err == nil {
		err = e
	}
	return err
}

func xattrs(p string) (map[string]string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if err == unix.ENOTSUP {
			return nil, nil
		}
		return nil, err
	}
	m := map[string]string{}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			return nil, err
		}
		m[name] = string(v[:vn])
	}
	return m, nil
}

// WriteDupLayer writes the dup layer with archive/tar: dup/file twice
// (first as "./dup/file", then as "dup/file": the second wins), dup/type a
// file then a symlink, dup/dir twice with different modes, a hard link to
// the surviving dup/file, the whiteout extra/.wh.wh-me, and DupSparse, a
// hand-made PAX 1.0 sparse entry with unaligned segments.
func WriteDupLayer(out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	mt := func(s int64) time.Time { return time.Unix(1700000000+s, s*1000003%1000000000) }
	ents := []struct {
		h    tar.Header
		data []byte
	}{
		{h: tar.Header{Name: "dup/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt(1)}},
		{h: tar.Header{Name: "./dup/file", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mt(2)}, data: DupFirst},
		{h: tar.Header{Name: "dup/type", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mt(3)}, data: []byte("a file before it is a symlink\n")},
		{h: tar.Header{Name: "dup/dir/", Typeflag: tar.TypeDir, Mode: 0o700, ModTime: mt(4), Uid: 5}},
		{h: tar.Header{Name: "dup/dir/inner", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mt(5)}, data: []byte("inner\n")},
		{h: tar.Header{Name: "dup/file", Typeflag: tar.TypeReg, Mode: 0o600, ModTime: mt(6), Uid: 1234, Gid: 5678,
			PAXRecords: map[string]string{"SCHILY.xattr.user.dup": "second"}}, data: DupSecond},
		{h: tar.Header{Name: "dup/type", Typeflag: tar.TypeSymlink, Linkname: "file", Mode: 0o777, ModTime: mt(7)}},
		{h: tar.Header{Name: "./dup/dir/", Typeflag: tar.TypeDir, Mode: 0o750, ModTime: mt(8), Uid: 6}},
		{h: tar.Header{Name: "dup/file-link", Typeflag: tar.TypeLink, Linkname: "dup/file"}},
		{h: tar.Header{Name: "extra/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt(9)}},
		{h: tar.Header{Name: "extra/.wh.wh-me", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mt(10)}},
	}
	for _, e := range ents {
		h := e.h
		h.Size = int64(len(e.data))
		if h.Format == tar.FormatUnknown {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return err
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := writePAXSparse(f, tw, DupSparse, dupSparse, mt(11)); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// writePAXSparse writes a GNU.sparse 1.0 entry: a PAX header (archive/tar
// drops GNU.sparse records, so it is made here) and a ustar entry
// GNUSparseFile.0/NAME whose data is the decimal sparse map padded to a
// block, then the segments back to back.
func writePAXSparse(f *os.File, tw *tar.Writer, name string, s Sparse, mtime time.Time) error {
	var recs bytes.Buffer
	for _, kv := range [][2]string{{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"},
		{"GNU.sparse.name", name}, {"GNU.sparse.realsize", fmt.Sprint(s.Size)}} {
		recs.WriteString(paxRecord(kv[0], kv[1]))
	}
	hdr := ustarHeader("./PaxHeaders.0/sparse-pax", 'x', int64(recs.Len()), 0o644, mtime.Unix())
	body := pad(recs.Bytes())
	var m bytes.Buffer
	fmt.Fprintf(&m, "%d\n", len(s.Segs)+1)
	for _, sg := range s.Segs {
		fmt.Fprintf(&m, "%d\n%d\n", sg[0], sg[1])
	}
	fmt.Fprintf(&m, "%d\n%d\n", s.Size, 0)
	data := pad(m.Bytes())
	for i, sg := range s.Segs {
		data = append(data, SparseData(name, i, sg[1])...)
	}
	if _, err := f.Write(append(hdr, body...)); err != nil {
		return err
	}
	h := &tar.Header{Name: "dup/GNUSparseFile.0/sparse-pax", Typeflag: tar.TypeReg, Mode: 0o644,
		ModTime: mtime.Truncate(time.Second), Size: int64(len(data)), Format: tar.FormatUSTAR}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

func paxRecord(k, v string) string {
	n := len(k) + len(v) + 3
	for {
		s := fmt.Sprintf("%d %s=%s\n", n, k, v)
		if len(s) == n {
			return s
		}
		n = len(s)
	}
}

func pad(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

// ustarHeader is one ustar header block.
func ustarHeader(name string, typ byte, size int64, mode int64, mtime int64) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:108], fmt.Sprintf("%07o\x00", mode))
	copy(b[108:116], fmt.Sprintf("%07o\x00", 0))
	copy(b[116:124], fmt.Sprintf("%07o\x00", 0))
	copy(b[124:136], fmt.Sprintf("%011o\x00", size))
	copy(b[136:148], fmt.Sprintf("%011o\x00", mtime))
	b[156] = typ
	copy(b[257:265], "ustar\x0000")
	for i := 148; i < 156; i++ {
		b[i] = ' '
	}
	sum := 0
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// HeaderBlocks returns the offsets of the ustar header blocks of a plain
// tar (blocks with the ustar magic and a valid checksum), in order.
func HeaderBlocks(t testing.TB, path string) []int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for off := 0; off+512 <= len(b); off += 512 {
		blk := b[off : off+512]
		if !bytes.HasPrefix(blk[257:], []byte("ustar")) {
			continue
		}
		sum := 0
		for i, c := range blk {
			if i >= 148 && i < 156 {
				c = ' '
			}
			sum += int(c)
		}
		var want int
		if _, err := fmt.Sscanf(strings.Trim(string(blk[148:156]), " \x00"), "%o", &want); err == nil && want == sum {
			out = append(out, int64(off))
		}
	}
	return out
}
