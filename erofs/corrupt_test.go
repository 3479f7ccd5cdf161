package erofs

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"golang.org/x/sys/unix"
)

// smallTree is a tiny source tree for crafted-corruption tests.
func smallTree(t testing.TB) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "d"), 0o755))
	must(os.WriteFile(filepath.Join(src, "d/f"), []byte("hello\n"), 0o644))
	must(os.WriteFile(filepath.Join(src, "big"), []byte(strings.Repeat("x", 5000)), 0o644))
	must(os.WriteFile(filepath.Join(src, "big2"), []byte(strings.Repeat("y", 9000)), 0o644))
	must(os.Symlink("d/f", filepath.Join(src, "l")))
	must(unix.Setxattr(filepath.Join(src, "d/f"), "user.a", []byte("1"), 0))
	for _, p := range []string{"d", "big", "big2"} {
		must(unix.Setxattr(filepath.Join(src, p), "user.shared", []byte("sv"), 0))
	}
	return src
}

func mkImage(t testing.TB, src string, args ...string) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img")
	testtree.Mkfs(t, p, src, args...)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fixCRC(b []byte) {
	bits := b[1024+12]
	if binary.LittleEndian.Uint32(b[1032:])&CompatSbChksum != 0 && bits >= 9 && bits <= 16 && len(b) >= 1024+ChecksumLen(bits) {
		binary.LittleEndian.PutUint32(b[1028:], SuperblockChecksum(b, bits))
	}
}

func openBytes(b []byte, opts ...Option) (*Image, error) {
	return Open(bytesReader(b), int64(len(b)), opts...)
}

func TestCorruptions(t *testing.T) {
	src := smallTree(t)
	base := mkImage(t, src)
	ext := mkImage(t, src, "-Eforce-inode-extended")
	chunk := mkImage(t, src, "--chunksize=4096", "-Eforce-chunk-indexes")
	blockmap := mkImage(t, src, "--chunksize=4096", "-Eforce-inode-blockmap")
	blobPath := filepath.Join(t.TempDir(), "blob")
	blobImg := mkImage(t, src, "--blobdev="+blobPath, "--chunksize=4096")

	le := binary.LittleEndian
	info := func(b []byte, path string) (*Image, *Inode) {
		t.Helper()
		im, err := openBytes(b, WithFlat())
		if err != nil {
			t.Fatalf("clean image: %v", err)
		}
		ino, err := im.Lookup(path)
		if err != nil {
			t.Fatalf("lookup %s: %v", path, err)
		}
		return im, ino
	}
	_, root := info(base, "/")
	_, f := info(base, "/d/f")

	baseIm, big := info(base, "/big")
	_, extBig := info(ext, "/big")
	_, chunkBig := info(chunk, "/big2")
	_, bmBig := info(blockmap, "/big2")
	_, blobBig := info(blobImg, "/big2")
	rootRanges, err := baseIm.DataRanges(root)
	if err != nil || len(rootRanges) == 0 {
		t.Fatalf("root ranges %v %v", rootRanges, err)
	}
	rootData := rootRanges[0].Phys
	fXattr := f.Off + int64(f.ISize)
	fShared := int64(base[fXattr+4])
	fEntry := fXattr + 12 + 4*fShared
	chunkTab := (chunkBig.DataOff + 7) &^ 7

	walk := func(im *Image) error {
		return im.Walk(func(p string, ino *Inode, d Dirent) error {
			if _, err := im.Xattrs(ino); err != nil {
				return err
			}
			if hasData(ino) {
				if _, err := im.DataRanges(ino); err != nil {
					return err
				}
				if _, err := im.ReadAll(ino, 1<<20); err != nil {
					return err
				}
			}
			return nil
		})
	}

	cases := []struct {
		name   string
		img    []byte
		mod    func(b []byte)
		nocrc  bool
		rule   string
		off    int64
		opts   []Option
		action func(im *Image) error
	}{
		{name: "bad magic", img: base, mod: func(b []byte) { b[1024] ^= 1 }, rule: "bad superblock magic", off: 1024},
		{name: "bad crc", img: base, mod: func(b []byte) { b[1024+0x30] ^= 1 }, nocrc: true, rule: "superblock checksum mismatch", off: 1028},
		{name: "unknown incompat", img: base, mod: func(b []byte) { b[1024+0x51] |= 0x02 }, rule: "unknown incompat feature bits", off: 1024 + 0x50},
		{name: "blkszbits low", img: base, mod: func(b []byte) { b[1024+12] = 8 }, nocrc: true, rule: "blkszbits out of range", off: 1024 + 12},
		{name: "blkszbits high", img: base, mod: func(b []byte) { b[1024+12] = 17 }, nocrc: true, rule: "blkszbits out of range", off: 1024 + 12},
		{name: "dirblkbits", img: base, mod: func(b []byte) { b[1024+0x5A] = 1 }, rule: "dirblkbits must be 0", off: 1024 + 0x5A},
		{name: "devt overlaps sb", img: base, mod: func(b []byte) {
			b[1024+0x50] |= IncompatDeviceTable
			le.PutUint16(b[1024+0x56:], 1)
			le.PutUint16(b[1024+0x58:], 8)
		}, rule: "device table overlaps superblock", off: 1024 + 0x58},
		{name: "devt beyond image", img: base, mod: func(b []byte) {
			b[1024+0x50] |= IncompatDeviceTable
			le.PutUint16(b[1024+0x56:], 1)
			le.PutUint16(b[1024+0x58:], 1000)
		}, rule: "device table beyond end of image", off: 128000},
		{name: "metabox without extslots", img: base, mod: func(b []byte) { b[1024+0x51] |= 0x01 }, rule: "METABOX needs sb_extslots >= 1", off: 1024 + 0x0D},
		{name: "ishare prefix id", img: base, mod: func(b []byte) { b[1024+8] |= CompatIshareXattrs }, rule: "ishare xattr prefix id beyond prefix count", off: 1024 + 0x69},
		{name: "unknown compr algs", img: base, mod: func(b []byte) { b[1024+0x50] |= IncompatComprCfgs; le.PutUint16(b[1024+0x54:], 0x10) }, rule: "unknown compression algorithms", off: 1024 + 0x54},
		{name: "root not dir", img: base, mod: func(b []byte) { le.PutUint16(b[1024+14:], uint16(f.Nid)) }, rule: "root inode is not a directory", off: f.Off},
		{name: "i_format bits", img: base, mod: func(b []byte) { b[root.Off] |= 0x20 }, rule: "inode i_format reserved bits set", off: root.Off},
		{name: "layout 5", img: base, mod: func(b []byte) { b[root.Off] = b[root.Off]&^0xE | 5<<1 }, rule: "inode data layout reserved", off: root.Off},
		{name: "layout 7", img: base, mod: func(b []byte) { b[big.Off] |= 7 << 1 }, rule: "inode data layout reserved", off: big.Off, action: walk},
		{name: "bad mode", img: base, mod: func(b []byte) { le.PutUint16(b[big.Off+4:], 0o644) }, rule: "inode bad file type in i_mode", off: big.Off + 4, action: walk},
		{name: "negative size", img: ext, mod: func(b []byte) { b[extBig.Off+15] |= 0x80 }, rule: "inode negative i_size", off: extBig.Off + 8, action: walk},
		{name: "nid beyond image", img: base, rule: "inode beyond end of image", off: int64(1) << 40 * 32,
			action: func(im *Image) error { _, err := im.Inode(1 << 40); return err }},
		{name: "nid overflow", img: base, rule: "nid overflows inode address",
			action: func(im *Image) error { _, err := im.Inode(1 << 62); return err }},
		{name: "metabox nid without metabox", img: base, rule: "nid has metabox bit but image has no metabox",
			action: func(im *Image) error { _, err := im.Inode(NidMetaboxBit | 5); return err }},
		{name: "dirent nameoff0", img: base, mod: func(b []byte) { le.PutUint16(b[rootData+8:], 13) }, rule: "dirent nameoff0 invalid", off: 8, action: walk},
		{name: "dirent nameoff0 zero", img: base, mod: func(b []byte) { le.PutUint16(b[rootData+8:], 0) }, rule: "dirent nameoff0 invalid", off: 8, action: walk},
		{name: "dirent name length 0", img: base, mod: func(b []byte) { copy(b[rootData+20:rootData+22], b[rootData+8:rootData+10]) }, rule: "dirent name length 0 or negative", off: 0, action: walk},
		{name: "dirent nameoff beyond", img: base, mod: func(b []byte) { le.PutUint16(b[rootData+20:], 4000) }, rule: "dirent nameoff beyond block data", off: 20, action: walk},
		{name: "dirent unsorted", img: base, mod: func(b []byte) {
			// swap the first two names' first bytes: "." / ".." -> make name 1 sort before name 0
			n0 := int64(le.Uint16(b[rootData+8:]))
			b[rootData+n0] = 'z'
		}, rule: "dirent names not in ascending order", off: 12, action: walk},
		{name: "inline tail crosses block", img: base, mod: func(b []byte) { le.PutUint32(b[f.Off+8:], 4096) }, rule: "inline data crosses block boundary", off: f.DataOff, action: walk},
		{name: "xattr icount 1", img: base, mod: func(b []byte) { le.PutUint16(b[f.Off+2:], 1) }, rule: "inode xattr icount 1", off: f.Off + 2, action: walk},
		{name: "xattr shared_count", img: base, mod: func(b []byte) { b[fXattr+4] = 200 }, rule: "xattr shared_count beyond ibody", off: fXattr + 4, action: walk},
		{name: "xattr entry beyond ibody", img: base, mod: func(b []byte) { le.PutUint16(b[fEntry+2:], 3000) }, rule: "xattr entry beyond ibody", off: fEntry, action: walk},
		{name: "xattr long prefix index", img: base, mod: func(b []byte) { b[fEntry+1] = 0x81 }, rule: "xattr long prefix index beyond prefix count", off: fEntry + 1, action: walk},
		{name: "chunk format bits", img: chunk, mod: func(b []byte) { b[chunkBig.Off+0x11] |= 0x80 }, rule: "chunk format reserved bits set", off: chunkBig.Off + 0x10, action: walk},
		{name: "chunk device_id mask", img: chunk, mod: func(b []byte) { le.PutUint16(b[chunkTab+2:], 5) }, rule: "chunk index device_id beyond device mask", off: chunkTab + 2, action: walk},
		{name: "chunk table beyond image", img: blockmap, mod: func(b []byte) { le.PutUint32(b[bmBig.Off+8:], 0xFFFFFFF0) }, rule: "chunk table beyond end of image", off: (bmBig.DataOff + 3) &^ 3, action: walk},
		{name: "chunk data beyond image", img: blockmap, mod: func(b []byte) { le.PutUint32(b[(bmBig.DataOff+3)&^3:], 1000) }, rule: "data beyond end of device 0", off: 1000 * 4096, action: walk},
		{name: "chunk device_id beyond devices", img: blobImg, mod: func(b []byte) {
			le.PutUint16(b[1024+0x56:], 2)
			le.PutUint16(b[(blobBig.DataOff+7)&^7+2:], 3)
		}, rule: "chunk index device_id beyond extra devices", off: (blobBig.DataOff+7)&^7 + 2, opts: []Option{WithFlat()},
			action: func(im *Image) error {
				ino, err := im.Inode(blobBig.Nid)
				if err == nil {
					_, err = im.DataRanges(ino)
				}
				return err
			}},
		{name: "flat data beyond image", img: base, mod: func(b []byte) { le.PutUint32(b[big.Off+0x10:], 5000) }, rule: "data beyond end of device 0", off: 5000 * 4096, action: walk},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := append([]byte(nil), c.img...)
			if c.mod != nil {
				c.mod(b)
			}
			if !c.nocrc {
				fixCRC(b)
			}
			im, err := openBytes(b, c.opts...)
			if err == nil && c.action != nil {
				err = c.action(im)
			}
			if err == nil {
				t.Fatalf("no error, want %q", c.rule)
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("not a FormatError: %v", err)
			}
			if fe.Rule != c.rule {
				t.Fatalf("rule %q, want %q (%v)", fe.Rule, c.rule, err)
			}
			if c.off != 0 && fe.Off != c.off {
				t.Fatalf("offset %#x, want %#x (%v)", fe.Off, c.off, err)
			}
			t.Log(err)
		})
	}
}

func TestTagKinds(t *testing.T) {
	var d DeviceSlot
	if d.TagKind() != TagEmpty || d.TagString() != "" {
		t.Error("empty")
	}
	copy(d.Tag[:], "0123456789abcdef0123456789abcdef")
	if d.TagKind() != TagUUID {
		t.Error("uuid", d.TagKind())
	}
	copy(d.Tag[:], strings.Repeat("ab", 32))
	if d.TagKind() != TagSHA256 || d.TagString() != strings.Repeat("ab", 32) {
		t.Error("sha", d.TagKind())
	}
	d.Tag = [64]byte{}
	copy(d.Tag[:], "/dev/loop0")
	if d.TagKind() != TagText || d.TagString() != "/dev/loop0" {
		t.Error("text")
	}
	d.Tag[3] = 0xff
	if d.TagKind() != TagBinary || !strings.HasPrefix(d.TagString(), "hex:") {
		t.Error("binary")
	}
	d.Blocks, d.UniAddr = 0x1234_5678_9abc, 0xfedc_ba98_7654
	b, _ := d.MarshalBinary()
	var e DeviceSlot
	if err := e.UnmarshalBinary(b); err != nil || e.Blocks != d.Blocks || e.UniAddr != d.UniAddr || e.Tag != d.Tag {
		t.Errorf("roundtrip %+v", e)
	}
}

func TestFlatWithoutUniaddr(t *testing.T) {
	src := smallTree(t)
	blob := mkImage(t, src, "--blobdev="+filepath.Join(t.TempDir(), "blob"), "--chunksize=4096")
	im, err := openBytes(blob, WithFlat())
	if err != nil {
		t.Fatal(err)
	}
	ino, err := im.Lookup("/big2")
	if err != nil {
		t.Fatal(err)
	}
	_, err = im.DataRanges(ino)
	var fe *FormatError
	if !errors.As(err, &fe) || fe.Rule != "flat device has no uniaddr" || fe.Off != 1152+0x44 {
		t.Fatalf("got %v", err)
	}
	if _, err := im.ReadAll(ino, 1<<20); !errors.As(err, &fe) || fe.Rule != "flat device has no uniaddr" {
		t.Fatalf("read: %v", err)
	}
}
