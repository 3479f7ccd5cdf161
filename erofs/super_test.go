package erofs

import (
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
)

func TestSuperblockFields(t *testing.T) {
	src := smallTree(t)
	plain := mkImage(t, src)
	big := mkImage(t, src, "-zlz4hc", "-C65536")
	blob := mkImage(t, src, "--blobdev="+filepath.Join(t.TempDir(), "blob"), "--chunksize=4096")

	sb, err := ParseSuperblock(plain[:4096])
	if err != nil {
		t.Fatal(err)
	}
	if f := sb.Features(); !slices.Contains(f, "sb_csum") {
		t.Errorf("features %v", f)
	}
	if c := SuperblockChecksum(plain, sb.BlkSzBits); c != sb.Checksum {
		t.Errorf("checksum %#x != %#x", c, sb.Checksum)
	}
	sb2, err := ReadSuperblock(bytesReader(plain), int64(len(plain)))
	if err != nil || !reflect.DeepEqual(sb, sb2) {
		t.Errorf("ReadSuperblock differs: %v\n%+v\n%+v", err, sb, sb2)
	}

	sb, err = ParseSuperblock(big[:4096])
	if err != nil {
		t.Fatal(err)
	}
	if !sb.HasIncompat(IncompatComprCfgs) || len(sb.ComprCfgs) != 1 || sb.ComprCfgs[0].Alg != 0 || len(sb.ComprCfgs[0].Data) != 14 || sb.ComprCfgs[0].Off != 1024+128 {
		t.Errorf("compression configs %+v (features %v)", sb.ComprCfgs, sb.Features())
	}
	if f := sb.Features(); !slices.Contains(f, "big_pcluster") || !slices.Contains(f, "0padding") {
		t.Errorf("features %v", f)
	}

	sb, err = ParseSuperblock(blob[:4096])
	if err != nil {
		t.Fatal(err)
	}
	if sb.DeviceTableOffset() != 1152 || len(sb.Devices) != 1 || sb.Devices[0].TagKind() != TagEmpty || sb.DeviceMask != 1 {
		t.Errorf("device table %d %+v", sb.DeviceTableOffset(), sb.Devices)
	}
	if _, err := ParseSuperblock(blob[:1100]); err == nil {
		t.Error("short buffer accepted")
	}
	// Rewriting the device table and recomputing the checksum round-trips.
	b := append([]byte(nil), blob[:4096]...)
	d := sb.Devices[0]
	copy(d.Tag[:], "0123456789abcdef0123456789abcdef")
	d.Blocks, d.UniAddr = 8, 3
	PutDeviceSlot(b[sb.DeviceTableOffset():], d)
	c := SuperblockChecksum(b, sb.BlkSzBits)
	b[1028], b[1029], b[1030], b[1031] = byte(c), byte(c>>8), byte(c>>16), byte(c>>24)
	sb3, err := ParseSuperblock(b)
	if err != nil || sb3.Devices[0].TagString() != "0123456789abcdef0123456789abcdef" || sb3.Devices[0].UniAddr != 3 {
		t.Errorf("rewritten table: %v %+v", err, sb3)
	}
}

// TestConcurrentReads reads files of an lz4 and a chunked image from several
// goroutines at once (run with -race).
func TestConcurrentReads(t *testing.T) {
	src := smallTree(t)
	for _, args := range [][]string{{"-zlz4hc", "-Eztailpacking"}, {"--chunksize=4096"}} {
		b := mkImage(t, src, args...)
		im, err := openBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		ino, err := im.Lookup("/big2")
		if err != nil {
			t.Fatal(err)
		}
		f, err := im.OpenFile(ino)
		if err != nil {
			t.Fatal(err)
		}
		want, err := im.ReadAll(ino, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 8)
		for g := 0; g < 8; g++ {
			go func(g int) {
				buf := make([]byte, 1000+g*37)
				for off := int64(g * 11); off < ino.Size; off += int64(len(buf)) {
					n, err := f.ReadAt(buf, off)
					if n == 0 || string(buf[:n]) != string(want[off:off+int64(n)]) {
						errc <- fmt.Errorf("goroutine %d off %d: n=%d err=%v", g, off, n, err)
						return
					}
				}
				errc <- nil
			}(g)
		}
		for g := 0; g < 8; g++ {
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		}
	}
}
