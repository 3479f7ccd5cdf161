package zmap

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs/decompress"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// Fuzz flags.
const (
	fzCompact = 1 << iota
	fzBig
	fzZeroPad
	fzFrag
	fz48
)

// metaSeed is one fuzz seed: metadata bytes with the map header at hdr.
type metaSeed struct {
	data  []byte
	hdr   uint16
	size  uint64
	flags uint8
}

// realSeeds builds images with mkfs.erofs and cuts each compressed inode's
// metadata (from its block start, two blocks) into a seed. Pcluster
// addresses then point outside the seed, except ztailpacking data.
func realSeeds(t testing.TB, maxPerImage int) []metaSeed {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		return nil
	}
	if _, err := exec.LookPath("dump.erofs"); err != nil {
		return nil
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	o := testtree.Options{Seed: 3, Files: 8, MaxSize: 150 << 10}
	if err := testtree.BuildErr(src, o); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "text"), bytes.Repeat([]byte("erofs zmap fuzz\n"), 30000), 0o644); err != nil {
		t.Fatal(err)
	}
	var seeds []metaSeed
	for i, cfg := range [][]string{{"-zlz4hc,3"}, {"-zlz4hc,3", "-C65536", "-Eztailpacking"}, {"-zlz4", "-Elegacy-compress"}, {"-zlz4", "-Eztailpacking"}} {
		img := filepath.Join(dir, fmt.Sprintf("img%d", i))
		if out, err := testtree.MkfsErr(img, src, cfg...); err != nil {
			t.Fatalf("mkfs %v: %v\n%s", cfg, err, out)
		}
		im := loadImage(t, img)
		n := 0
		for _, f := range regularFiles(t, src) {
			layout, p := im.inodeParams(t, nidOf(t, img, f))
			if layout != 1 && layout != 3 {
				continue
			}
			bs := int64(1) << im.bits
			start := p.HeaderOff &^ (bs - 1)
			end := min(start+2*bs, int64(len(im.data)))
			var fl uint8
			if p.Compact {
				fl |= fzCompact
			}
			if p.BigPcluster {
				fl |= fzBig
			}
			if p.ZeroPadding {
				fl |= fzZeroPad
			}
			seeds = append(seeds, metaSeed{append([]byte(nil), im.data[start:end]...), uint16(p.HeaderOff - start), uint64(p.Size), fl})
			if n++; n >= maxPerImage {
				break
			}
		}
	}
	return seeds
}

func FuzzMap(f *testing.F) {
	for _, s := range realSeeds(f, 6) {
		f.Add(s.data, s.hdr, s.size, s.flags)
	}
	// Synthetic FULL, extents and fragment headers.
	m := newMeta()
	m.header(0, 0, 0x30, 0)
	m.head(0, typeHead1, false, 0, 10)
	m.nonhead(1, 1, 1)
	m.head(2, typeHead2, true, 200, 11)
	m.head(3, typePlain, false, 50, 12)
	f.Add(m.b[:512], uint16(hoff), uint64(3*4096+100), uint8(fzZeroPad|fzBig))
	m = newMeta()
	m.header(3, adviseExtents|2<<1, 0, 0)
	f.Add(m.b[:512], uint16(hoff), uint64(20000), uint8(fzZeroPad|fzFrag))
	m = newMeta()
	m.u64(hoff, 1<<63|777)
	f.Add(m.b[:128], uint16(hoff), uint64(5000), uint8(fzFrag))

	f.Fuzz(func(t *testing.T, data []byte, hdr uint16, size uint64, flags uint8) {
		p := Params{
			Meta:        bytes.NewReader(data),
			MetaSize:    int64(len(data)),
			HeaderOff:   int64(hdr &^ 7),
			Compact:     flags&fzCompact != 0,
			Size:        int64(size % (1 << 40)),
			BlkSzBits:   12,
			BigPcluster: flags&fzBig != 0,
			ZeroPadding: flags&fzZeroPad != 0,
			Fragments:   flags&fzFrag != 0,
			Is48Bit:     flags&fz48 != 0,
			Algs:        0xF,
		}
		exts, err := Map(p)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error %T %v is not *zmap.Error", err, err)
			}
			return
		}
		var next int64
		for _, e := range exts {
			if e.LStart != next || e.LLen <= 0 {
				t.Fatalf("extent %+v does not continue at %d", e, next)
			}
			next += e.LLen
			if e.Kind == Blocks || e.Kind == Inline {
				if e.PLen <= 0 || e.PLen > decompress.MaxPclusterSize || e.LLen > decompress.MaxDecodedSize {
					t.Fatalf("unchecked extent %+v", e)
				}
			}
			// Decode whatever lies inside the fuzz data (inline tails).
			if (e.Kind == Blocks || e.Kind == Inline) && e.PStart+e.PLen <= int64(len(data)) && e.LLen <= 1<<20 {
				dst := make([]byte, e.LLen)
				_ = Decode(e, data[e.PStart:e.PStart+e.PLen], dst, 0, p.ZeroPadding, p.BlkSzBits)
			}
		}
		if next != p.Size {
			t.Fatalf("extents end at %d, size %d", next, p.Size)
		}
	})
}

// TestWriteDecompressSeeds refreshes ../decompress/testdata/fuzz/FuzzDecompress
// with real pclusters (run with ZMAP_WRITE_SEEDS=1).
func TestWriteDecompressSeeds(t *testing.T) {
	if os.Getenv("ZMAP_WRITE_SEEDS") == "" {
		t.Skip("set ZMAP_WRITE_SEEDS=1 to rewrite the FuzzDecompress seed corpus")
	}
	needTools(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	testtree.Build(t, src, testtree.Options{Seed: 5, Files: 6, MaxSize: 100 << 10})
	out := filepath.Join("..", "decompress", "testdata", "fuzz", "FuzzDecompress")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, cfg := range [][]string{{"-zlz4hc", "-Eztailpacking"}, {"-zlz4", "-Elegacy-compress"}, {"-zlz4hc", "-C16384"}} {
		img := filepath.Join(dir, fmt.Sprintf("img%d", i))
		testtree.Mkfs(t, img, src, cfg...)
		im := loadImage(t, img)
		limit := n + 4
		for _, f := range regularFiles(t, src) {
			layout, p := im.inodeParams(t, nidOf(t, img, f))
			if layout != 1 && layout != 3 {
				continue
			}
			exts, err := Map(p)
			if err != nil {
				t.Fatal(err)
			}
			for k, e := range exts {
				if !e.Compressed() || k%3 != 0 || e.PLen > 16<<10 || n >= limit {
					continue
				}
				var fl uint8
				if p.ZeroPadding {
					fl |= 1
				}
				if e.Partial {
					fl |= 2
				}
				raw := im.raw(t, e)
				body := fmt.Sprintf("go test fuzz v1\nbyte(%q)\nbyte(%q)\nuint16(0)\nuint32(%d)\n[]byte(%q)\n",
					byte(e.Alg), fl, e.LLen, raw)
				name := filepath.Join(out, fmt.Sprintf("real-%d-%d", i, n))
				if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
				n++
				break
			}
		}
	}
	t.Logf("wrote %d seeds", n)
	_ = binary.LittleEndian
}
