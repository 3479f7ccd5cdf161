package erofs

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func Test48Bit(t *testing.T) {
	le := binary.LittleEndian
	src := smallTree(t)
	base := mkImage(t, src)
	// mkfs 1.5 writes extended inodes whenever SOURCE_DATE_EPOCH is set
	// (testtree.Mkfs sets it), so run it directly here.
	cp := filepath.Join(t.TempDir(), "compact")
	if out, err := exec.Command("mkfs.erofs", "-T0", "--quiet", "-Eforce-inode-compact", cp, src).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	compact, err := os.ReadFile(cp)
	if err != nil {
		t.Fatal(err)
	}
	chunk := mkImage(t, src, "--chunksize=4096", "-Eforce-chunk-indexes")
	blob := mkImage(t, src, "--blobdev="+filepath.Join(t.TempDir(), "blob"), "--chunksize=4096")

	t.Run("rootnid_8b", func(t *testing.T) {
		im0, _ := openBytes(base)
		b := append([]byte(nil), base...)
		b[1024+0x50] |= Incompat48Bit
		le.PutUint64(b[1024+0x70:], im0.SB.RootNid)
		le.PutUint16(b[1024+0x0E:], 3) // now blocks_hi
		fixCRC(b)
		im, err := openBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		if im.SB.RootNid != im0.SB.RootNid || im.SB.Blocks != uint64(im0.SB.BlocksLo)|3<<32 {
			t.Fatalf("root %d blocks %#x", im.SB.RootNid, im.SB.Blocks)
		}
		if _, err := im.List(ListOptions{Content: true}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("chunk 48bit", func(t *testing.T) {
		im0, _ := openBytes(chunk)
		ino, err := im0.Lookup("/big2")
		if err != nil {
			t.Fatal(err)
		}
		tab := (ino.DataOff + 7) &^ 7
		b := append([]byte(nil), chunk...)
		b[ino.Off+0x10] |= ChunkFormat48Bit
		le.PutUint16(b[tab:], 0xFFFF) // chunk 0: 48-bit null -> hole
		le.PutUint32(b[tab+4:], 0xFFFFFFFF)
		le.PutUint16(b[tab+8:], 1) // chunk 1: startblk_hi = 1
		fixCRC(b)
		im, _ := openBytes(b)
		ino, err = im.Inode(ino.Nid)
		if err != nil {
			t.Fatal(err)
		}
		// Chunk 1 now points 16 TiB in: beyond the image.
		lo := int64(le.Uint32(chunk[tab+12:]))
		_, err = im.DataRanges(ino)
		var fe *FormatError
		if !errors.As(err, &fe) || fe.Rule != "data beyond end of device 0" || fe.Off != (1<<32|lo)*4096 {
			t.Fatalf("want data beyond end at %#x, got %v", (1<<32|lo)*4096, err)
		}
		var rs []Range
		if err := im.chunkRanges(ino, func(r Range) { rs = append(rs, r) }); err != nil {
			t.Fatal(err)
		}
		if rs[0].Kind != KindHole || rs[1].Kind != KindChunk || rs[1].Phys != (1<<32|lo)*4096 {
			t.Fatalf("ranges %v", rs)
		}
		// Without the 48-bit format the hi half is ignored (and 0xFFFF/0xFFFFFFFF is still a hole).
		b[ino.Off+0x10] &^= ChunkFormat48Bit
		fixCRC(b)
		im, _ = openBytes(b)
		ino, _ = im.Inode(ino.Nid)
		rs, err = im.DataRanges(ino)
		if err != nil || rs[0].Kind != KindHole || rs[1].Phys != lo*4096 {
			t.Fatalf("ranges %v %v", rs, err)
		}
	})
	t.Run("device slot hi", func(t *testing.T) {
		im0, _ := openBytes(blob)
		slot := im0.SB.DeviceTableOffset()
		b := append([]byte(nil), blob...)
		le.PutUint32(b[slot+0x40:], 7)
		le.PutUint16(b[slot+0x48:], 2)
		le.PutUint32(b[slot+0x44:], 9)
		le.PutUint16(b[slot+0x4A:], 1)
		fixCRC(b)
		im, err := openBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		d := im.SB.Devices[0]
		if d.Blocks != 7 || d.UniAddr != 9 || d.BlocksHi != 2 || d.UniAddrHi != 1 {
			t.Fatalf("no 48bit: %+v", d)
		}
		b[1024+0x50] |= Incompat48Bit
		fixCRC(b)
		im, err = openBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		d = im.SB.Devices[0]
		if d.Blocks != 2<<32|7 || d.UniAddr != 1<<32|9 {
			t.Fatalf("48bit: %+v", d)
		}
	})
	t.Run("nlink1", func(t *testing.T) {
		im0, err := openBytes(compact)
		if err != nil {
			t.Fatal(err)
		}
		var ino *Inode
		werr := im0.Walk(func(p string, i *Inode, d Dirent) error {
			if ino == nil && i.IsReg() && !i.Extended && i.Size > 0 {
				ino = i
			}
			return nil
		})
		if werr != nil {
			t.Fatal(werr)
		}
		if ino == nil {
			t.Skip("no compact regular inode")
		}
		want, err := im0.ReadAll(ino, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		b := append([]byte(nil), compact...)
		b[ino.Off] |= 0x10
		le.PutUint16(b[ino.Off+6:], 0)
		fixCRC(b)
		im, _ := openBytes(b)
		got, err := im.Inode(ino.Nid)
		if err != nil || !got.Nlink1 || got.Nlink != 1 || got.StartBlk != ino.StartBlk {
			t.Fatalf("%+v %v", got, err)
		}
		data, err := im.ReadAll(got, 1<<20)
		if err != nil || string(data) != string(want) {
			t.Fatalf("read %d %v", len(data), err)
		}
	})
}

// TestUnifiedRedirect: with WithDevices, device_id 0 addresses inside a
// device's [uniaddr, uniaddr+blocks) go to that device (kernel erofs_map_dev).
func TestUnifiedRedirect(t *testing.T) {
	le := binary.LittleEndian
	src := smallTree(t)
	blobPath := filepath.Join(t.TempDir(), "blob")
	img := mkImage(t, src, "--blobdev="+blobPath, "--chunksize=4096")
	blob, err := os.ReadFile(blobPath)
	if err != nil {
		t.Fatal(err)
	}
	dev := Dev{R: bytesReader(blob), Size: int64(len(blob))}
	im0, err := openBytes(img, WithDevices(dev))
	if err != nil {
		t.Fatal(err)
	}
	ino, err := im0.Lookup("/big2")
	if err != nil {
		t.Fatal(err)
	}
	want, err := im0.ReadAll(ino, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	u := uint32(len(img) / 4096)
	b := append([]byte(nil), img...)
	slot := im0.SB.DeviceTableOffset()
	le.PutUint32(b[slot+0x40:], uint32(len(blob)/4096))
	le.PutUint32(b[slot+0x44:], u)
	tab := (ino.DataOff + 7) &^ 7
	for i := int64(0); i < 3; i++ {
		e := tab + 8*i
		le.PutUint16(b[e+2:], 0)
		le.PutUint32(b[e+4:], le.Uint32(b[e+4:])+u)
	}
	fixCRC(b)
	im, err := openBytes(b, WithDevices(dev))
	if err != nil {
		t.Fatal(err)
	}
	ino, _ = im.Inode(ino.Nid)
	got, err := im.ReadAll(ino, 1<<20)
	if err != nil || string(got) != string(want) {
		t.Fatalf("redirected read: %v", err)
	}
	rs, err := im.DataRanges(ino)
	if err != nil || rs[0].Device != 0 {
		t.Fatalf("ranges %v %v", rs, err)
	}
	if d, off := im.SB.MapUnified(rs[0].Phys); d != 1 || off != rs[0].Phys-int64(u)*4096 {
		t.Fatalf("MapUnified %d %d", d, off)
	}
	// The same image composed flat (primary then blob at uniaddr) reads the same.
	flat := append(append([]byte(nil), b...), blob...)
	imf, err := openBytes(flat, WithFlat())
	if err != nil {
		t.Fatal(err)
	}
	got, err = imf.ReadAll(ino, 1<<20)
	if err != nil || string(got) != string(want) {
		t.Fatalf("flat read: %v", err)
	}
}
