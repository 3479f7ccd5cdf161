package build

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/verify"
)

// memWriter is an io.WriterAt over a growing buffer.
type memWriter struct{ b []byte }

func (m *memWriter) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed ^ byte(i>>12)
	}
	return b
}

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// fixture builds a tree exercising every writer feature and the expected
// listing (path -> description).
func fixture(dev []byte, bs int) (*Image, map[string]string) {
	want := map[string]string{}
	dir := func(mode uint32, es ...Entry) *Inode {
		return &Inode{Mode: erofs.S_IFDIR | mode, Entries: es}
	}
	file := func(data []byte) *Inode {
		return &Inode{Mode: erofs.S_IFREG | 0o644, Size: int64(len(data)), Data: bytes.NewReader(data)}
	}
	small, page, big := pattern(100, 1), pattern(4096, 2), pattern(3*4096+17, 3)
	hl := file([]byte("linked\n"))
	// chunked: chunk size 2 blocks, size 5 blocks + 10 bytes: dev blocks
	// 2..3, a hole, then a data chunk copied into the image.
	csize := int64(5*bs + 10)
	chunked := &Inode{Mode: erofs.S_IFREG | 0o600, Size: csize, ChunkBits: 1, Chunks: []Chunk{
		{Device: 1, Block: 2}, {Hole: true}, {Data: pattern(bs+10, 9)},
	}}
	cwant := append(append(append([]byte{}, dev[2*bs:4*bs]...), make([]byte, 2*bs)...), pattern(bs+10, 9)...)
	var bigdir []Entry
	for i := 0; i < 600; i++ {
		name := fmt.Sprintf("entry-%04d-%s", i, strings.Repeat("y", i%50))
		bigdir = append(bigdir, Entry{name, file([]byte(name))})
		want["/big/"+name] = "file " + sum([]byte(name))
	}
	ext := file([]byte("ext"))
	ext.UID, ext.GID, ext.Mtime, ext.MtimeNsec = 100000, 70000, 1700000000, 5
	xa := file(nil)
	xa.Xattrs = []Xattr{
		{"user." + strings.Repeat("n", 200), bytes.Repeat([]byte("v"), 300)},
		{"trusted.overlay.custom", []byte{0, 1, 2}},
		{"security.selinux", []byte("system_u:object_r:bin_t:s0\x00")},
		{"system.posix_acl_access", []byte{2, 0, 0, 0}},
		{"user.empty", nil},
	}
	longT := strings.Repeat("t", 4000)
	fatLink := &Inode{Mode: erofs.S_IFLNK | 0o777, Target: "x/" + strings.Repeat("z", 3000),
		Xattrs: []Xattr{{"user.fat", bytes.Repeat([]byte("f"), 2000)}}}
	root := dir(0o755,
		Entry{"small", file(small)}, Entry{"page", file(page)}, Entry{"big", dir(0o700, bigdir...)},
		Entry{"bigfile", file(big)}, Entry{"chunked", chunked}, Entry{"empty", file(nil)},
		Entry{"hl1", hl}, Entry{"sub", dir(0o750, Entry{"hl2", hl}, Entry{"deeper", dir(0o755)})},
		Entry{"ext", ext}, Entry{"xattrs", xa},
		Entry{"link", &Inode{Mode: erofs.S_IFLNK | 0o777, Target: "sub/hl2"}},
		Entry{"longlink", &Inode{Mode: erofs.S_IFLNK | 0o777, Target: longT}},
		Entry{"fatlink", fatLink},
		Entry{"null", &Inode{Mode: erofs.S_IFCHR | 0o666, Rdev: Mkdev(1, 3)}},
		Entry{"bigminor", &Inode{Mode: erofs.S_IFBLK | 0o600, Rdev: Mkdev(259, 70000)}},
		Entry{"fifo", &Inode{Mode: erofs.S_IFIFO | 0o644}},
	)
	for k, v := range map[string]string{
		"/small": "file " + sum(small), "/page": "file " + sum(page), "/bigfile": "file " + sum(big),
		"/chunked": "file " + sum(cwant), "/empty": "file " + sum(nil), "/hl1": "file nlink2",
		"/sub/hl2": "file nlink2", "/ext": "file " + sum([]byte("ext")), "/xattrs": "file " + sum(nil),
		"/link": "symlink sub/hl2", "/longlink": "symlink " + longT, "/fatlink": "symlink " + fatLink.Target,
		"/null": "char 1:3", "/bigminor": "block 259:70000", "/fifo": "fifo", "/": "dir", "/big": "dir",
		"/sub": "dir", "/sub/deeper": "dir",
	} {
		want[k] = v
	}
	return &Image{Root: root, Devices: []Device{{Tag: strings.Repeat("ab", 16), Blocks: uint64(len(dev) / bs)}}}, want
}

func TestRoundTrip(t *testing.T) {
	for _, bits := range []uint8{0, 9, 10} {
		t.Run(fmt.Sprintf("blockbits-%d", bits), func(t *testing.T) { roundTrip(t, bits) })
	}
}

func roundTrip(t *testing.T, bits uint8) {
	bs := 1 << 12
	if bits != 0 {
		bs = 1 << bits
	}
	dev := pattern(8*4096, 5)
	img, want := fixture(dev, bs)
	img.AlignBlocks = 128
	img.BlockBits = bits
	var out memWriter
	st, err := Write(&out, img)
	if err != nil {
		t.Fatal(err)
	}
	if st.BlockSize != int64(bs) || im0BlockBits(out.b) != uint8(len(fmt.Sprintf("%b", bs))-1) {
		t.Fatalf("block size %d, superblock bits %d, want %d", st.BlockSize, im0BlockBits(out.b), bs)
	}
	if int64(len(out.b)) != int64(st.Blocks)*int64(bs) {
		t.Fatalf("wrote %d bytes, stats say %d blocks", len(out.b), st.Blocks)
	}
	if st.Slots[0].UniAddr%128 != 0 || st.Slots[0].UniAddr < st.Blocks {
		t.Fatalf("uniaddr %d (image %d blocks, align 128)", st.Slots[0].UniAddr, st.Blocks)
	}
	im, err := erofs.Open(bytes.NewReader(out.b), int64(len(out.b)), erofs.WithDevices(erofs.Dev{R: bytes.NewReader(dev), Size: int64(len(dev))}))
	if err != nil {
		t.Fatal(err)
	}
	if !im.SB.HasIncompat(erofs.IncompatChunkedFile|erofs.IncompatDeviceTable) || !im.SB.HasCompat(erofs.CompatSbChksum) {
		t.Fatalf("features %v", im.SB.Features())
	}
	ents, err := im.List(erofs.ListOptions{Xattrs: true, Content: true})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range ents {
		var d string
		switch e.Type {
		case "file":
			d = "file " + e.SHA256
			if e.Nlink == 2 {
				d = "file nlink2"
			}
		case "symlink":
			d = "symlink " + e.Target
		case "char", "block":
			d = e.Type + " " + e.Rdev
		default:
			d = e.Type
		}
		got[e.Path] = d
		if e.Path == "/xattrs" && len(e.Xattrs) != 5 {
			t.Errorf("xattrs: %v", e.Xattrs)
		}
		if e.Path == "/ext" && (e.UID != 100000 || e.GID != 70000) {
			t.Errorf("ext owner %d:%d", e.UID, e.GID)
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %.80q want %.80q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d entries, want %d", len(got), len(want))
	}
	ino, _ := im.Lookup("ext")
	if !ino.Extended || ino.Mtime != 1700000000 || ino.MtimeNsec != 5 {
		t.Errorf("ext: extended %v mtime %d.%d", ino.Extended, ino.Mtime, ino.MtimeNsec)
	}
	ino, _ = im.Lookup("small")
	if ino.Extended || ino.Layout != erofs.LayoutFlatInline {
		t.Errorf("small: extended %v layout %v", ino.Extended, ino.Layout)
	}
	rep, err := verify.Devices(verify.Dev{R: bytes.NewReader(out.b), Size: int64(len(out.b))},
		[]verify.Dev{{R: bytes.NewReader(dev), Size: int64(len(dev))}}, verify.Options{Content: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		var sb strings.Builder
		rep.WriteText(&sb)
		t.Fatalf("verify:\n%s", sb.String())
	}
	// erofs-utils' own checker decodes every file too (1.9.4 where
	// available: Debian's 1.5 knows only 4 KiB blocks).
	fsck := "/opt/erofs-utils-1.9.4/bin/fsck.erofs"
	if _, err := os.Stat(fsck); err != nil && bs == 4096 {
		fsck = "fsck.erofs"
	}
	if _, err := exec.LookPath(fsck); err == nil {
		dir := t.TempDir()
		p, dp := filepath.Join(dir, "x.erofs"), filepath.Join(dir, "dev")
		os.WriteFile(p, out.b, 0o644)
		os.WriteFile(dp, dev, 0o644)
		if o, err := exec.Command(fsck, "--device="+dp, "--extract", p).CombinedOutput(); err != nil {
			t.Errorf("fsck.erofs: %v\n%s", err, o)
		}
	}
}

func im0BlockBits(b []byte) uint8 {
	if len(b) < erofs.SuperblockOffset+13 {
		return 0
	}
	return b[erofs.SuperblockOffset+0x0C]
}

func TestRefusals(t *testing.T) {
	f := &Inode{Mode: erofs.S_IFREG | 0o644}
	d := &Inode{Mode: erofs.S_IFDIR | 0o755}
	cases := []struct {
		name string
		img  *Image
		want string
	}{
		{"no root", &Image{}, "root is not a directory"},
		{"dup", &Image{Root: &Inode{Mode: erofs.S_IFDIR, Entries: []Entry{{"a", f}, {"a", f}}}}, "duplicate"},
		{"slash", &Image{Root: &Inode{Mode: erofs.S_IFDIR, Entries: []Entry{{"a/b", f}}}}, "invalid name"},
		{"dir twice", &Image{Root: &Inode{Mode: erofs.S_IFDIR, Entries: []Entry{{"a", d}, {"b", d}}}}, "reached twice"},
		{"chunk count", &Image{Root: &Inode{Mode: erofs.S_IFDIR, Entries: []Entry{{"a", &Inode{Mode: erofs.S_IFREG, Size: 9000, Chunks: []Chunk{{Hole: true}}}}}}}, "chunks for"},
		{"chunk dev", &Image{Root: &Inode{Mode: erofs.S_IFDIR, Entries: []Entry{{"a", &Inode{Mode: erofs.S_IFREG, Size: 1, Chunks: []Chunk{{Device: 1}}}}}}}, "device 1 of 0"},
		{"chunk beyond", &Image{Devices: []Device{{Blocks: 2}}, Root: &Inode{Mode: erofs.S_IFDIR, Entries: []Entry{{"a", &Inode{Mode: erofs.S_IFREG, Size: 2 * 4096, ChunkBits: 1, Chunks: []Chunk{{Device: 1, Block: 1}}}}}}}, "beyond device"},
		{"xattr prefix", &Image{Root: &Inode{Mode: erofs.S_IFDIR, Xattrs: []Xattr{{"weird.x", nil}}}}, "no EROFS name prefix"},
		{"size no data", &Image{Root: &Inode{Mode: erofs.S_IFDIR, Entries: []Entry{{"a", &Inode{Mode: erofs.S_IFREG, Size: 3}}}}}, "size without"},
	}
	for _, c := range cases {
		_, err := Write(&memWriter{}, c.img)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
