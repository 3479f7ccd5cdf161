package flatdev_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
)

// synthPrimary crafts a primary image (4 KiB blocks, sb_csum) with n
// all-zero device slots (as mkfs.erofs 1.5 writes them) in the blocks after
// block 0, followed by dataBlocks blocks of data. Enough for flatdev.New,
// which reads only the superblock and the device table.
func synthPrimary(n, dataBlocks int) []byte {
	const bs = 4096
	tblocks := (n*erofs.DeviceSlotSize + bs - 1) / bs
	img := make([]byte, (1+tblocks+dataBlocks)*bs)
	for i := (1 + tblocks) * bs; i < len(img); i++ {
		img[i] = byte(i * 7)
	}
	le := binary.LittleEndian
	s := img[erofs.SuperblockOffset:]
	le.PutUint32(s[0:], erofs.SuperMagic)
	le.PutUint32(s[8:], erofs.CompatSbChksum)
	s[12] = 12 // blkszbits
	le.PutUint32(s[0x24:], uint32(len(img)/bs))
	le.PutUint32(s[0x50:], erofs.IncompatChunkedFile|erofs.IncompatDeviceTable)
	le.PutUint16(s[0x56:], uint16(n))
	le.PutUint16(s[0x58:], bs/erofs.DeviceSlotSize)
	le.PutUint32(s[4:], erofs.SuperblockChecksum(img, 12))
	return img
}

func memSources(n int, blobSize int64) (flatdev.Source, []flatdev.Source) {
	prim := synthPrimary(n, 16)
	p := flatdev.Source{Name: "primary", R: bytes.NewReader(prim), Size: int64(len(prim))}
	var blobs []flatdev.Source
	for i := range n {
		b := make([]byte, blobSize)
		for j := range b {
			b[j] = byte(i + j)
		}
		blobs = append(blobs, flatdev.Source{Name: fmt.Sprintf("blob%d", i+1), R: bytes.NewReader(b), Size: blobSize})
	}
	return p, blobs
}

// BenchmarkNew is device composition at start-up: superblock and table
// parse, planning, overlay and CRC. "files" also opens and stats the n+1
// files each time, as serve does (page-cached, tiny blobs).
func BenchmarkNew(b *testing.B) {
	for _, n := range []int{4, 1000} {
		b.Run(fmt.Sprintf("blobs=%d/mem", n), func(b *testing.B) {
			p, blobs := memSources(n, 4096)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := flatdev.New(p, blobs, flatdev.Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("blobs=%d/files", n), func(b *testing.B) {
			dir := b.TempDir()
			paths := []string{filepath.Join(dir, "primary")}
			if err := os.WriteFile(paths[0], synthPrimary(n, 16), 0o644); err != nil {
				b.Fatal(err)
			}
			blk := make([]byte, 4096)
			for i := range n {
				paths = append(paths, filepath.Join(dir, fmt.Sprintf("b%04d", i)))
				if err := os.WriteFile(paths[i+1], blk, 0o644); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				var srcs []flatdev.Source
				var files []*os.File
				for _, p := range paths {
					f, err := os.Open(p)
					if err != nil {
						b.Fatal(err)
					}
					st, err := f.Stat()
					if err != nil {
						b.Fatal(err)
					}
					files = append(files, f)
					srcs = append(srcs, flatdev.Source{Name: p, R: f, Size: st.Size()})
				}
				if _, err := flatdev.New(srcs[0], srcs[1:], flatdev.Options{}); err != nil {
					b.Fatal(err)
				}
				for _, f := range files {
					f.Close()
				}
			}
		})
	}
}

// BenchmarkReadAt is the composed read path: extent lookup, hole zeroing,
// the primary overlay and the source ReadAt. "mem" sources are
// bytes.Readers (the composition overhead alone, compare with "raw"
// reading the same bytes from one bytes.Reader); "file" sources are
// page-cached files (one pread per extent touched).
func BenchmarkReadAt(b *testing.B) {
	const blobSize = 16 << 20
	type tc struct {
		name string
		size int
		offs func(rng *rand.Rand, d *flatdev.Device) int64
	}
	pblocks := int64(len(synthPrimary(4, 16)))
	inBlob := func(size int) func(*rand.Rand, *flatdev.Device) int64 {
		return func(rng *rand.Rand, d *flatdev.Device) int64 {
			e := d.Map().Device(1 + rng.IntN(4))
			start := int64(e.Start) << 12
			return start + rng.Int64N(blobSize-int64(size))&^4095
		}
	}
	cases := []tc{
		{"4K-random", 4 << 10, inBlob(4 << 10)},
		{"4K-primary-head", 4 << 10, func(*rand.Rand, *flatdev.Device) int64 { return 0 }},
		{"128K-random", 128 << 10, inBlob(128 << 10)},
		{"1M-random", 1 << 20, inBlob(1 << 20)},
		{"1M-across-extents", 1 << 20, func(rng *rand.Rand, d *flatdev.Device) int64 {
			return pblocks - 32<<10 // primary tail + blob1 head
		}},
	}
	for _, kind := range []string{"raw", "mem", "file"} {
		p, blobs := memSources(4, blobSize)
		if kind == "file" {
			dir := b.TempDir()
			for i, s := range append([]flatdev.Source{p}, blobs...) {
				buf := make([]byte, s.Size)
				s.R.ReadAt(buf, 0)
				name := filepath.Join(dir, fmt.Sprint(i))
				if err := os.WriteFile(name, buf, 0o644); err != nil {
					b.Fatal(err)
				}
				f, err := os.Open(name)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { f.Close() })
				s.R = f
				if i == 0 {
					p = s
				} else {
					blobs[i-1] = s
				}
			}
		}
		d, err := flatdev.New(p, blobs, flatdev.Options{})
		if err != nil {
			b.Fatal(err)
		}
		var dev io.ReaderAt = d
		if kind == "raw" {
			flat := make([]byte, d.Size())
			d.ReadAt(flat, 0)
			dev = bytes.NewReader(flat)
		}
		for _, c := range cases {
			b.Run(kind+"/"+c.name, func(b *testing.B) {
				rng := rand.New(rand.NewPCG(1, 2))
				offs := make([]int64, 1024)
				for i := range offs {
					offs[i] = c.offs(rng, d)
				}
				buf := make([]byte, c.size)
				b.SetBytes(int64(c.size))
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					if _, err := dev.ReadAt(buf, offs[i&1023]); err != nil && err != io.EOF {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
