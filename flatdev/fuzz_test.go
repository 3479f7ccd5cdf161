package flatdev_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

var (
	fuzzOnce           sync.Once
	fuzzPrim, fuzzBlob []byte
	fuzzErr            error
)

// fuzzBase is a small real Debian-1.5-style --blobdev image and its blob.
func fuzzBase(t testing.TB) ([]byte, []byte) {
	fuzzOnce.Do(func() {
		dir, err := os.MkdirTemp("", "flatdev-fuzz-")
		if err != nil {
			fuzzErr = err
			return
		}
		defer os.RemoveAll(dir)
		tree := filepath.Join(dir, "tree")
		if fuzzErr = testtree.BuildErr(tree, testtree.Options{Seed: 5, Files: 5, MaxSize: 20000}); fuzzErr != nil {
			return
		}
		p, b := filepath.Join(dir, "p.erofs"), filepath.Join(dir, "d.blob")
		if out, err := testtree.MkfsErr(p, tree, "--blobdev="+b, "--chunksize=4096"); err != nil {
			fuzzErr = errors.New(string(out))
			return
		}
		if fuzzPrim, fuzzErr = os.ReadFile(p); fuzzErr != nil {
			return
		}
		fuzzBlob, fuzzErr = os.ReadFile(b)
	})
	if fuzzErr != nil {
		t.Fatal(fuzzErr)
	}
	return fuzzPrim, fuzzBlob
}

// FuzzCompose mutates the superblock block of a real primary (device count,
// table offset, slots: blocks, uniaddr, tags; optionally with a fixed CRC)
// and the blob's size, and composes. Composition must refuse or succeed
// without panicking; a composed device must carry a superblock that parses,
// a device table equal to Slots(), extents that tile the device exactly, and
// reads that either succeed or fail with an error (never a panic).
// Input: byte 0 flags (bit 0: fix the CRC), bytes 1-2 a signed blob size
// delta in 512-byte units, then 3-byte groups: a 12-bit offset into the
// first 4 KiB of the primary and a value byte.
func FuzzCompose(f *testing.F) {
	prim, blob := fuzzBase(f)
	f.Add([]byte{0, 0, 0})
	f.Add([]byte{1, 0, 0, 0x04, 0x5a, 0x03})                   // extra_devices
	f.Add([]byte{1, 0xff, 0xf0, 0x04, 0x80, 0x00})             // blob shorter
	f.Add([]byte{1, 0, 0x10, 0x04, 0x88, 0x7f})                // slot blocks
	f.Add([]byte{1, 0, 0, 0x04, 0x8c, 0xff, 0x04, 0x8f, 0xff}) // uniaddr
	f.Add([]byte{1, 0, 0, 0x04, 0x5c, 0x20})                   // devt_slotoff
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 3 || len(in) > 3+3*64 {
			return
		}
		p := bytes.Clone(prim)
		for g := in[3:]; len(g) >= 3; g = g[3:] {
			off := (int(g[0])<<4 | int(g[1])>>4) % 4096
			p[off] = g[2]
		}
		if in[0]&1 != 0 {
			binary.LittleEndian.PutUint32(p[erofs.SuperblockOffset+4:], erofs.SuperblockChecksum(p, 12))
		}
		bsize := int64(len(blob)) + int64(int16(binary.BigEndian.Uint16(in[1:3])))*512
		bsize = max(bsize, 0)
		bdata := blob
		if bsize > int64(len(bdata)) {
			bdata = append(bytes.Clone(blob), make([]byte, bsize-int64(len(blob)))...)
		}
		var errs int
		opt := flatdev.Options{OnError: func(string, error) { errs++ }}
		ps := flatdev.Source{Name: "p", R: bytes.NewReader(p), Size: int64(len(p))}
		bs := flatdev.Source{Name: "b", R: bytes.NewReader(bdata[:bsize]), Size: bsize}
		sb, err := erofs.ReadSuperblock(ps.R, ps.Size)
		var blobs []flatdev.Source
		if err == nil {
			for i := 0; i < sb.NumDevices() && i < 4; i++ {
				blobs = append(blobs, bs)
			}
		}
		dev, err := flatdev.New(ps, blobs, opt)
		if err != nil {
			return
		}
		size := dev.Size()
		if size <= 0 {
			t.Fatalf("composed size %d", size)
		}
		head := make([]byte, min(size, 8192))
		if _, err := dev.ReadAt(head, 0); err != nil {
			t.Fatalf("reading the composed superblock block: %v", err)
		}
		csb, err := erofs.ReadSuperblock(bytes.NewReader(head), int64(len(head)))
		if err != nil {
			t.Fatalf("composed superblock does not parse: %v", err)
		}
		if len(csb.Devices) != len(dev.Slots()) {
			t.Fatalf("composed table has %d slots, Slots() %d", len(csb.Devices), len(dev.Slots()))
		}
		for i, s := range dev.Slots() {
			if csb.Devices[i].Blocks != s.Blocks || csb.Devices[i].UniAddr != s.UniAddr {
				t.Fatalf("slot %d: composed %+v, Slots() %+v", i, csb.Devices[i], s)
			}
		}
		exts, err := dev.Extents(0, size)
		if err != nil {
			t.Fatalf("extents: %v", err)
		}
		pos := int64(0)
		buf := make([]byte, 4096)
		for _, e := range exts {
			if e.Offset != pos || e.Length <= 0 {
				t.Fatalf("extents do not tile: %+v at %d", e, pos)
			}
			for _, o := range []int64{e.Offset, e.Offset + e.Length - 1} {
				n, err := dev.ReadAt(buf[:1], o)
				if err != nil && n != 0 {
					t.Fatalf("read at %d: n=%d with error %v", o, n, err)
				}
				if e.Hole && (err != nil || buf[0] != 0) {
					t.Fatalf("hole at %d reads %#x, %v", o, buf[0], err)
				}
			}
			pos += e.Length
		}
		if pos != size {
			t.Fatalf("extents end at %d, size %d", pos, size)
		}
		if n, err := dev.ReadAt(buf, size); n != 0 || err == nil {
			t.Fatalf("read at the end: n=%d err=%v", n, err)
		}
	})
}
