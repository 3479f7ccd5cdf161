package verify

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

type fuzzBase struct {
	prim []byte
	devs [][]byte
}

var (
	fuzzOnce  sync.Once
	fuzzBases []fuzzBase
	fuzzErr   error
)

// smallBases builds a few small real images (plain, lz4, lz4hc, chunked,
// --blobdev) of a small rich tree.
func smallBases(t testing.TB) []fuzzBase {
	needMkfs(t)
	fuzzOnce.Do(func() {
		dir, err := os.MkdirTemp("", "verify-fuzz-")
		if err != nil {
			fuzzErr = err
			return
		}
		tree := filepath.Join(dir, "tree")
		o := testtree.Options{Seed: 3, Files: 6, MaxSize: 9000, BigDir: 40, Xattrs: true, Symlinks: true, Hardlinks: true, Specials: true}
		if fuzzErr = testtree.BuildErr(tree, o); fuzzErr != nil {
			return
		}
		for i, args := range [][]string{nil, {"-zlz4"}, {"-zlz4hc", "-C16384"}, {"--chunksize=4096", "-x1"}, {"blob"}} {
			img := filepath.Join(dir, "img"+string(rune('0'+i)))
			blob := ""
			if len(args) == 1 && args[0] == "blob" {
				blob = img + ".blob"
				args = []string{"--blobdev=" + blob, "--chunksize=4096"}
			}
			if out, err := testtree.MkfsErr(img, tree, args...); err != nil {
				fuzzErr = err
				_ = out
				return
			}
			b, err := os.ReadFile(img)
			if err != nil {
				fuzzErr = err
				return
			}
			fb := fuzzBase{prim: b}
			if blob != "" {
				bb, err := os.ReadFile(blob)
				if err != nil {
					fuzzErr = err
					return
				}
				fb.devs = [][]byte{bb}
			}
			fuzzBases = append(fuzzBases, fb)
		}
		os.RemoveAll(dir)
	})
	if fuzzErr != nil {
		t.Fatal(fuzzErr)
	}
	return fuzzBases
}

// FuzzVerify patches a small real image and runs the whole walk with
// content reading. Input: byte 0 selects the base image (bit 7: flat mode,
// bit 6: fix the superblock CRC); then 4-byte groups: a 24-bit offset into
// the primary (modulo its size) and a value byte.
func FuzzVerify(f *testing.F) {
	bases := smallBases(f)
	f.Add([]byte{0})
	f.Add([]byte{1})
	f.Add([]byte{2})
	f.Add([]byte{3})
	f.Add([]byte{4})
	f.Add([]byte{0x44, 0, 4, 0x10, 0xff})
	f.Add([]byte{0x41, 0, 0x10, 0x00, 0x07, 0, 0x10, 0x08, 0x01})
	f.Add([]byte{0x43, 0, 0x04, 0x5a, 0x02, 0, 0x0c, 0x10, 0x30})
	f.Add([]byte{0xC4, 0, 0x04, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 || len(in) > 4*256+1 {
			return
		}
		base := bases[int(in[0]&0x3F)%len(bases)]
		prim := bytes.Clone(base.prim)
		for p := in[1:]; len(p) >= 4; p = p[4:] {
			off := (int(p[0])<<16 | int(p[1])<<8 | int(p[2])) % len(prim)
			prim[off] = p[3]
		}
		if in[0]&0x40 != 0 && len(prim) >= 4096 {
			le.PutUint32(prim[erofs.SuperblockOffset+4:], erofs.SuperblockChecksum(prim, 12))
		}
		opt := Options{Content: true, MaxProblems: 200, ContentLimit: 32 << 20}
		var rep *Report
		var err error
		start := time.Now()
		defer func() {
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("slow input: %v", d)
			}
		}()
		if in[0]&0x80 != 0 {
			flat := append(prim, make([]byte, 0)...)
			for _, d := range base.devs {
				flat = append(flat, d...)
			}
			rep, err = Flat(bytes.NewReader(flat), int64(len(flat)), opt)
		} else {
			var ds []Dev
			for _, d := range base.devs {
				ds = append(ds, dev(d))
			}
			rep, err = Devices(dev(prim), ds, opt)
		}
		if err != nil {
			return
		}
		if len(rep.Problems) > 200 {
			t.Fatalf("%d problems above the cap", len(rep.Problems))
		}
		for _, p := range rep.Problems {
			if p.Rule == RuleInternal {
				t.Fatalf("internal: %s", p)
			}
		}
		if in[0]&0xC0 == 0 && len(in) == 1 && !rep.OK() {
			var b bytes.Buffer
			rep.WriteText(&b)
			t.Fatalf("unpatched base %d not clean:\n%s", in[0], b.String())
		}
	})
}
