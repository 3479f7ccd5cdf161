package flatdev_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/internal/multiblob"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

func src(t *testing.T, path string) flatdev.Source {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, _ := f.Stat()
	return flatdev.Source{Name: path, R: f, Size: st.Size()}
}

func sources(t *testing.T, paths ...string) []flatdev.Source {
	var out []flatdev.Source
	for _, p := range paths {
		out = append(out, src(t, p))
	}
	return out
}

// blobImage builds a Debian-1.5-style --blobdev image of a fresh tree.
func blobImage(t *testing.T) (dir, tree, primary, blob string) {
	return blobImageChunk(t, 4096)
}

func blobImageChunk(t *testing.T, chunk int) (dir, tree, primary, blob string) {
	t.Helper()
	dir = t.TempDir()
	tree = filepath.Join(dir, "tree")
	os.Mkdir(tree, 0o755)
	o := testtree.Full(3)
	testtree.Build(t, tree, o)
	primary, blob = filepath.Join(dir, "p.erofs"), filepath.Join(dir, "data.blob")
	testtree.Mkfs(t, primary, tree, "--blobdev="+blob, fmt.Sprintf("--chunksize=%d", chunk))
	return
}

// mountCompare writes dev to a file, mounts it with the kernel (file-backed
// EROFS, flatdev mode) and compares the tree with want.
func mountCompare(t *testing.T, dev *flatdev.Device, tree string) {
	t.Helper()
	dir := t.TempDir()
	flat := filepath.Join(dir, "flat.img")
	f, err := os.Create(flat)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", "-t", "erofs", "-o", "ro", flat, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	defer exec.Command("umount", mnt).Run()
	testtree.CompareTrees(t, tree, mnt)
}

func TestDebianZeroSlotMountsFlat(t *testing.T) {
	_, tree, primary, blob := blobImage(t)
	s := sources(t, primary, blob)
	dev, err := flatdev.New(s[0], s[1:], flatdev.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sl := dev.Slots()
	if len(sl) != 1 || sl[0].UniAddr == 0 || sl[0].Blocks == 0 {
		t.Fatalf("slot not filled: %+v", sl)
	}
	// The rewritten superblock must pass the parser's CRC check.
	head := make([]byte, 8192)
	dev.ReadAt(head, 0)
	if _, err := erofs.ParseSuperblock(head); err != nil {
		t.Fatalf("composed superblock: %v", err)
	}
	mountCompare(t, dev, tree)
	// Inputs untouched.
	if b, _ := os.ReadFile(primary); bytes.Count(b[1152:1280], []byte{0}) != 128 {
		t.Fatal("primary was modified")
	}
}

func TestMultiBlobLayoutsMount(t *testing.T) {
	for _, chunk := range []int{4096, 8192, 65536} {
		t.Run(fmt.Sprint(chunk), func(t *testing.T) { testLayouts(t, chunk) })
	}
}

func testLayouts(t *testing.T, chunk int) {
	dir, tree, primary, blob := blobImageChunk(t, chunk)
	for _, layout := range []string{multiblob.LayoutZero, multiblob.LayoutContiguous, multiblob.LayoutAligned} {
		t.Run(layout, func(t *testing.T) {
			res, err := multiblob.Split(primary, blob, filepath.Join(dir, layout), multiblob.Options{N: 3, Layout: layout})
			if err != nil {
				t.Fatal(err)
			}
			s := sources(t, append([]string{res.Primary}, res.Blobs...)...)
			dev, err := flatdev.New(s[0], s[1:], flatdev.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for i, sl := range dev.Slots() {
				if layout != multiblob.LayoutZero && (sl.UniAddr != res.Slots[i].UniAddr || sl.Blocks != res.Slots[i].Blocks) {
					t.Fatalf("slot %d rewritten: %+v, table had %+v", i, sl, res.Slots[i])
				}
			}
			exts, _ := dev.Extents(0, dev.Size())
			holes := 0
			for _, e := range exts {
				if e.Hole {
					holes++
				}
			}
			if (layout == multiblob.LayoutAligned) != (holes > 0) {
				t.Fatalf("layout %s: %d holes in %+v", layout, holes, exts)
			}
			mountCompare(t, dev, tree)
		})
	}
}

func TestAlignOption(t *testing.T) {
	dir, tree, primary, blob := blobImage(t)
	res, err := multiblob.Split(primary, blob, filepath.Join(dir, "z"), multiblob.Options{N: 2, Layout: multiblob.LayoutZero})
	if err != nil {
		t.Fatal(err)
	}
	s := sources(t, append([]string{res.Primary}, res.Blobs...)...)
	dev, err := flatdev.New(s[0], s[1:], flatdev.Options{Align: 512 << 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, sl := range dev.Slots() {
		if sl.UniAddr%128 != 0 {
			t.Fatalf("uniaddr %d not 512 KiB aligned", sl.UniAddr)
		}
	}
	mountCompare(t, dev, tree)
	if _, err := flatdev.New(s[0], s[1:], flatdev.Options{Align: 1000}); err == nil {
		t.Fatal("align not a multiple of the block size accepted")
	}
}

func TestRefusals(t *testing.T) {
	dir, _, primary, blob := blobImage(t)
	res, err := multiblob.Split(primary, blob, filepath.Join(dir, "c"), multiblob.Options{N: 2, Layout: multiblob.LayoutContiguous, SHA256Tags: true})
	if err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short")
	b, _ := os.ReadFile(res.Blobs[1])
	os.WriteFile(short, b[:len(b)-4096], 0o644)
	notErofs := filepath.Join(dir, "not-erofs")
	os.WriteFile(notErofs, bytes.Repeat([]byte{0x55}, 8192), 0o644)
	badCRC := filepath.Join(dir, "badcrc")
	p, _ := os.ReadFile(res.Primary)
	p[1024+0x10] ^= 1 // inos: covered by the CRC
	os.WriteFile(badCRC, p, 0o644)
	overlap := filepath.Join(dir, "overlap")
	p, _ = os.ReadFile(res.Primary)
	sb, _ := erofs.ParseSuperblock(p)
	toff := sb.DeviceTableOffset()
	p[toff+128+0x44] = 1 // slot 2 uniaddr = 1: inside the primary
	p[toff+128+0x45], p[toff+128+0x46], p[toff+128+0x47] = 0, 0, 0
	p[1028], p[1029], p[1030], p[1031] = 0, 0, 0, 0
	crc := erofs.SuperblockChecksum(p, sb.BlkSzBits)
	p[1028], p[1029], p[1030], p[1031] = byte(crc), byte(crc>>8), byte(crc>>16), byte(crc>>24)
	os.WriteFile(overlap, p, 0o644)
	outOfRange := filepath.Join(dir, "out-of-range")
	p[toff+128+0x44], p[toff+128+0x45], p[toff+128+0x46], p[toff+128+0x47] = 0xF0, 0xFF, 0xFF, 0xFF // slot 2 uniaddr near 2^32
	p[1028], p[1029], p[1030], p[1031] = 0, 0, 0, 0
	crc = erofs.SuperblockChecksum(p, sb.BlkSzBits)
	p[1028], p[1029], p[1030], p[1031] = byte(crc), byte(crc>>8), byte(crc>>16), byte(crc>>24)
	os.WriteFile(outOfRange, p, 0o644)

	cases := []struct {
		name  string
		files []string
		opt   flatdev.Options
		want  string
	}{
		{"wrong count", []string{res.Primary, res.Blobs[0]}, flatdev.Options{}, "lists 2 extra device(s) but 1 blob(s)"},
		{"short blob", []string{res.Primary, res.Blobs[0], short}, flatdev.Options{}, "shorter than the"},
		{"not erofs", []string{notErofs}, flatdev.Options{}, "not a usable EROFS primary image"},
		{"bad crc", []string{badCRC, res.Blobs[0], res.Blobs[1]}, flatdev.Options{}, "checksum"},
		{"overlap", []string{overlap, res.Blobs[0], res.Blobs[1]}, flatdev.Options{}, "overlap"},
		{"out of range", []string{outOfRange, res.Blobs[0], res.Blobs[1]}, flatdev.Options{}, "beyond the 32-bit unified address space"},
		{"digest order", []string{res.Primary, res.Blobs[1], res.Blobs[0]}, flatdev.Options{VerifyDigests: true}, "does not match the slot tag"},
	}
	for _, c := range cases {
		s := sources(t, c.files...)
		_, err := flatdev.New(s[0], s[1:], c.opt)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
		if err != nil && !strings.Contains(err.Error(), filepath.Base(c.files[0])) && !strings.Contains(err.Error(), "blob") {
			t.Errorf("%s: error does not name a file: %v", c.name, err)
		}
	}
	// Correct order with digests passes.
	s := sources(t, res.Primary, res.Blobs[0], res.Blobs[1])
	if _, err := flatdev.New(s[0], s[1:], flatdev.Options{VerifyDigests: true}); err != nil {
		t.Fatal(err)
	}
}

// TestUUIDTagOrder: rebuild-mode tags name the source images' UUIDs.
func TestUUIDTagOrder(t *testing.T) {
	dir, _, primary, blob := blobImage(t)
	var layers []string
	var uuids []string
	for i, u := range []string{"11111111-2222-3333-4444-555555555555", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"} {
		tr := filepath.Join(dir, "l"+string(rune('0'+i)))
		os.MkdirAll(filepath.Join(tr, "x"), 0o755)
		img := filepath.Join(dir, "layer"+string(rune('0'+i))+".erofs")
		// Pad the layer images so they are at least as large as the pieces.
		os.WriteFile(filepath.Join(tr, "pad"), bytes.Repeat([]byte{byte(i)}, 4<<20), 0o644)
		testtree.Mkfs(t, img, tr, "-U"+u)
		layers = append(layers, img)
		uuids = append(uuids, strings.ReplaceAll(u, "-", ""))
	}
	res, err := multiblob.Split(primary, blob, filepath.Join(dir, "u"), multiblob.Options{N: 2, Layout: multiblob.LayoutZero, UUIDTags: uuids})
	if err != nil {
		t.Fatal(err)
	}
	s := sources(t, res.Primary, layers[1], layers[0])
	_, err = flatdev.New(s[0], s[1:], flatdev.Options{})
	if err == nil || !strings.Contains(err.Error(), "device-table order") || !strings.Contains(err.Error(), "layer1.erofs") {
		t.Fatalf("wrong order accepted or unclear: %v", err)
	}
	s = sources(t, res.Primary, layers[0], layers[1])
	if _, err := flatdev.New(s[0], s[1:], flatdev.Options{}); err != nil {
		t.Fatal(err)
	}
}

type failReader struct{ flatdev.Source }

func (f failReader) ReadAt(p []byte, off int64) (int, error) {
	return 0, errors.New("injected I/O error")
}

func TestReadErrorsAndTruncation(t *testing.T) {
	_, _, primary, blob := blobImage(t)
	s := sources(t, primary, blob)
	dev, err := flatdev.New(s[0], s[1:], flatdev.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(blob)
	// Serve a blob that shrinks after composition: reads must fail, not return zeros.
	shrunk := flatdev.Source{Name: "shrunk", R: bytes.NewReader(b[:len(b)/2]), Size: int64(len(b))}
	dev2, err := flatdev.New(s[0], []flatdev.Source{shrunk}, flatdev.Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := int64(dev.Slots()[0].UniAddr) * 4096
	buf := make([]byte, 8192)
	if _, err := dev2.ReadAt(buf, start+int64(len(b))-8192); !errors.Is(err, flatdev.ErrTruncated) {
		t.Fatalf("truncated blob read: %v", err)
	}
	if _, err := dev2.ReadAt(buf, start); err != nil {
		t.Fatalf("read inside the remaining part: %v", err)
	}
	bad := flatdev.Source{Name: "bad", R: failReader{}, Size: int64(len(b))}
	dev3, _ := flatdev.New(s[0], []flatdev.Source{bad}, flatdev.Options{})
	if _, err := dev3.ReadAt(buf, start); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("I/O error not reported: %v", err)
	}
	// Past the end: EOF with a short count.
	n, err := dev.ReadAt(buf, dev.Size()-100)
	if n != 100 || err != io.EOF {
		t.Fatalf("tail read n=%d err=%v", n, err)
	}
	// Whole-device digest is stable across reads with odd sizes.
	whole := func(step int) [32]byte {
		h := sha256.New()
		p := make([]byte, step)
		for off := int64(0); off < dev.Size(); off += int64(step) {
			n, _ := dev.ReadAt(p, off)
			h.Write(p[:n])
		}
		var s [32]byte
		copy(s[:], h.Sum(nil))
		return s
	}
	if whole(4096) != whole(1000) {
		t.Fatal("reads at different granularities disagree")
	}
}
