package erofs

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"golang.org/x/sys/unix"
)

// TestMetabox crafts a METABOX image (mkfs 1.5 cannot make one): image A's
// metadata area, with every dirent nid given bit 63, becomes the content of
// file /mb of image B; B's superblock then points metabox_nid at /mb and the
// root (rootnid_8b, 48BIT) at A's root inside the metabox. All of A's file
// data is inline, so the whole tree must read back from the metabox.
func TestMetabox(t *testing.T) {
	le := binary.LittleEndian
	src1 := filepath.Join(t.TempDir(), "src1")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src1, "d"), 0o755))
	must(os.WriteFile(filepath.Join(src1, "d/f"), []byte("hello\n"), 0o644))
	must(os.WriteFile(filepath.Join(src1, "g"), []byte("world"), 0o600))
	must(os.Symlink("d/f", filepath.Join(src1, "l")))
	must(unix.Setxattr(filepath.Join(src1, "d/f"), "user.a", []byte("1"), 0))
	for _, p := range []string{"d", "g", "d/f"} {
		must(unix.Setxattr(filepath.Join(src1, p), "user.shared", []byte("sv"), 0))
	}
	a := mkImage(t, src1)
	imA, err := openBytes(a)
	must(err)
	metaBase := int64(imA.SB.MetaBlkAddr) << imA.SB.BlkSzBits
	mb := append([]byte(nil), a[metaBase:]...)
	sharedInA := false
	err = imA.Walk(func(p string, ino *Inode, d Dirent) error {
		if xs, _ := imA.Xattrs(ino); len(xs) > 0 {
			for _, x := range xs {
				sharedInA = sharedInA || x.Shared
			}
		}
		if !ino.IsDir() {
			return nil
		}
		rs, err := imA.DataRanges(ino)
		if err != nil {
			return err
		}
		if len(rs) != 1 || rs[0].Kind != KindInline {
			t.Fatalf("%s: directory not inline: %v", p, rs)
		}
		off := rs[0].Phys - metaBase
		n := int64(le.Uint16(mb[off+8:])) / 12
		for i := int64(0); i < n; i++ {
			mb[off+12*i+7] |= 0x80
		}
		return nil
	})
	must(err)
	if !sharedInA {
		t.Log("mkfs made no shared xattrs; shared-in-metabox path untested")
	}

	src2 := filepath.Join(t.TempDir(), "src2")
	must(os.MkdirAll(src2, 0o755))
	must(os.WriteFile(filepath.Join(src2, "mb"), mb, 0o644))
	b := mkImage(t, src2, "-Enoinline_data")
	imB, err := openBytes(b)
	must(err)
	x, err := imB.Lookup("/mb")
	must(err)
	if x.Off < 1024+0x90 && x.Off+int64(x.ISize) > 1024+0x80 {
		t.Skip("mb inode overlaps the superblock extension slot")
	}
	const o = 1024
	b[o+0x0D] = 1 // sb_extslots
	le.PutUint32(b[o+0x50:], le.Uint32(b[o+0x50:])|IncompatMetabox|Incompat48Bit)
	le.PutUint32(b[o+0x08:], le.Uint32(b[o+0x08:])|CompatSharedEaInMetabx)
	le.PutUint32(b[o+0x2C:], imA.SB.XattrBlkAddr-imA.SB.MetaBlkAddr)
	le.PutUint16(b[o+0x0E:], 0) // blocks_hi
	le.PutUint64(b[o+0x70:], imA.SB.RootNid|NidMetaboxBit)
	le.PutUint64(b[o+0x80:], x.Nid)
	le.PutUint64(b[o+0x88:], 0)
	fixCRC(b)
	im, err := openBytes(b)
	must(err)
	if !im.Root().InMetabox || im.Root().Nid != imA.SB.RootNid|NidMetaboxBit {
		t.Fatalf("root %+v", im.Root())
	}
	want, err := testtree.Manifest(src1, true)
	must(err)
	if d := testtree.Diff(want, manifestFromImage(t, im), 20); len(d) > 0 {
		t.Errorf("metabox manifest differs:\n%s", strings.Join(d, "\n"))
	}
	f, err := im.Lookup("/d/f")
	must(err)
	rs, err := im.DataRanges(f)
	if err != nil || len(rs) != 1 || !rs[0].InMetabox || rs[0].Kind != KindInline {
		t.Errorf("inline tail in metabox: %v %v", rs, err)
	}
	// A metabox nid beyond the metabox data.
	if _, err := im.Inode(NidMetaboxBit | uint64(len(mb))); err == nil || !strings.Contains(err.Error(), "beyond end of metabox") {
		t.Errorf("nid beyond metabox: %v", err)
	}
}
