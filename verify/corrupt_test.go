package verify

import (
	"bytes"
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/internal/multiblob"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

var le = binary.LittleEndian

// fixture is a real image held in memory with helpers to find structures.
type fixture struct {
	t    *testing.T
	b    []byte
	devs [][]byte
	img  *erofs.Image
}

func newFixture(t *testing.T, prim []byte, devs ...[]byte) *fixture {
	t.Helper()
	f := &fixture{t: t, b: bytes.Clone(prim)}
	for _, d := range devs {
		f.devs = append(f.devs, bytes.Clone(d))
	}
	var ds []erofs.Dev
	for _, d := range f.devs {
		ds = append(ds, erofs.Dev{R: bytes.NewReader(d), Size: int64(len(d))})
	}
	var opts []erofs.Option
	if len(ds) > 0 {
		opts = append(opts, erofs.WithDevices(ds...))
	}
	// Decode from a pristine copy so patches do not confuse the lookups.
	img, err := erofs.Open(bytes.NewReader(bytes.Clone(prim)), int64(len(prim)), opts...)
	if err != nil {
		t.Fatal(err)
	}
	f.img = img
	return f
}

func (f *fixture) ino(path string) *erofs.Inode {
	f.t.Helper()
	ino, err := f.img.Lookup(path)
	if err != nil {
		f.t.Fatalf("lookup %s: %v", path, err)
	}
	return ino
}

// dirent returns the physical offsets of the dirent of name in dir and of
// its name bytes.
func (f *fixture) dirent(dir, name string) (ent, nameAt int64) {
	f.t.Helper()
	d := f.ino(dir)
	rs, err := f.img.DataRanges(d)
	if err != nil {
		f.t.Fatal(err)
	}
	data, err := f.img.ReadAll(d, 1<<30)
	if err != nil {
		f.t.Fatal(err)
	}
	bs := f.img.BlockSize()
	for bstart := int64(0); bstart < int64(len(data)); bstart += bs {
		blk := data[bstart:min(bstart+bs, int64(len(data)))]
		n := int(le.Uint16(blk[8:])) / 12
		for i := 0; i < n; i++ {
			no := int(le.Uint16(blk[i*12+8:]))
			end := len(blk)
			if i+1 < n {
				end = int(le.Uint16(blk[i*12+20:]))
			} else if z := bytes.IndexByte(blk[no:], 0); z >= 0 {
				end = no + z
			}
			if string(blk[no:end]) == name {
				e, sp1 := physOf(rs, bstart+int64(i)*12)
				nm, sp2 := physOf(rs, bstart+int64(no))
				if sp1 != "" || sp2 != "" {
					f.t.Fatalf("dirent %s/%s not in the primary (%s)", dir, name, sp1)
				}
				return e, nm
			}
		}
	}
	f.t.Fatalf("dirent %s/%s not found", dir, name)
	return
}

func (f *fixture) put16(off int64, v uint16) { le.PutUint16(f.b[off:], v) }
func (f *fixture) put32(off int64, v uint32) { le.PutUint32(f.b[off:], v) }
func (f *fixture) put64(off int64, v uint64) { le.PutUint64(f.b[off:], v) }

// fixCRC recomputes the superblock checksum after superblock edits.
func (f *fixture) fixCRC() {
	if f.img.SB.HasCompat(erofs.CompatSbChksum) {
		f.put32(erofs.SuperblockOffset+4, erofs.SuperblockChecksum(f.b, f.img.SB.BlkSzBits))
	}
}

func (f *fixture) verify(opt Options) *Report {
	f.t.Helper()
	f.fixCRC()
	return verifyBytes(f.t, f.b, f.devs, opt)
}

// chunkEntry returns the offset of chunk index i of path (--blobdev image).
func (f *fixture) chunkEntry(path string, i int64) int64 {
	ino := f.ino(path)
	if ino.Layout != erofs.LayoutChunkBased {
		f.t.Fatalf("%s is not chunk-based", path)
	}
	return (ino.DataOff+7)&^7 + 8*i
}

func plainImage(t *testing.T, args ...string) []byte { return readFile(t, mkfs(t, args...)) }

type corruption struct {
	name  string
	args  []string // mkfs args for the base image
	blob  bool     // --blobdev base image
	patch func(f *fixture)
	rules []string
}

var corruptions = []corruption{
	{name: "dirent-order", patch: func(f *fixture) {
		_, a := f.dirent("/a/b/c", "f003.bin")
		_, b := f.dirent("/a/b/c", "f008.bin")
		f.b[a+3], f.b[b+3] = '8', '3'
	}, rules: []string{RuleDirentOrder}},
	{name: "dirent-duplicate", patch: func(f *fixture) {
		_, a := f.dirent("/a/b/c", "f003.bin")
		f.b[a+3] = '8'
	}, rules: []string{RuleDirentDup}},
	{name: "dirent-bad-nid", patch: func(f *fixture) {
		e, _ := f.dirent("/docs", "setuid")
		f.put64(e, 1<<40)
	}, rules: []string{RuleNidRange, RuleInodeCount}},
	{name: "dirent-nid-misaligned", patch: func(f *fixture) {
		// Point into the middle of another inode: garbage mode/format.
		e, _ := f.dirent("/docs", "setuid")
		f.put64(e, le.Uint64(f.b[e:])+1)
	}, rules: []string{RuleInodeCount}},
	{name: "dirent-file-type", patch: func(f *fixture) {
		e, _ := f.dirent("/", "empty")
		f.b[e+10] = 9
	}, rules: []string{RuleDirentFileType, RuleDirentType}},
	{name: "dirent-type-mismatch", patch: func(f *fixture) {
		e, _ := f.dirent("/", "empty")
		f.b[e+10] = erofs.FtSymlink
	}, rules: []string{RuleDirentType}},
	{name: "dirent-dotdot", patch: func(f *fixture) {
		e, _ := f.dirent("/a/b", "..")
		f.put64(e, f.ino("/docs").Nid)
	}, rules: []string{RuleDirentDotDot}},
	{name: "dirent-dot", patch: func(f *fixture) {
		e, _ := f.dirent("/a", ".")
		f.put64(e, f.ino("/docs").Nid)
	}, rules: []string{RuleDirentDot}},
	{name: "dirent-root-dotdot", patch: func(f *fixture) {
		e, _ := f.dirent("/", "..")
		f.put64(e, f.ino("/a").Nid)
	}, rules: []string{RuleDirentDotDot}},
	{name: "dirent-nameoff0", patch: func(f *fixture) {
		e, _ := f.dirent("/a/b/c", ".")
		f.put16(e+8, 13)
	}, rules: []string{RuleDirentNameoff}},
	{name: "dirent-name-slash", patch: func(f *fixture) {
		_, a := f.dirent("/a/b/c", "f003.bin")
		f.b[a+7] = '/'
	}, rules: []string{RuleDirentNameChar}},
	{name: "dirent-name-empty", patch: func(f *fixture) {
		e, _ := f.dirent("/a/b/c", "f003.bin")
		f.put16(e+20, le.Uint16(f.b[e+8:]))
	}, rules: []string{RuleDirentNameLen}},
	{name: "dir-hardlink", patch: func(f *fixture) {
		e, _ := f.dirent("/a/b/c", "f003.bin")
		f.put64(e, f.ino("/docs").Nid)
		f.b[e+10] = erofs.FtDir
	}, rules: []string{RuleDirCycle}},
	{name: "dir-cycle", patch: func(f *fixture) {
		e, _ := f.dirent("/a/b/c", "f003.bin")
		f.put64(e, f.ino("/a").Nid)
		f.b[e+10] = erofs.FtDir
	}, rules: []string{RuleDirCycle}},
	{name: "inode-mode", patch: func(f *fixture) {
		ino := f.ino("/docs/setuid")
		f.put16(ino.Off+4, 0o170755)
	}, rules: []string{RuleInodeMode}},
	{name: "inode-format", patch: func(f *fixture) {
		ino := f.ino("/docs/setuid")
		f.put16(ino.Off, le.Uint16(f.b[ino.Off:])|0x40)
	}, rules: []string{RuleInodeFormat}},
	{name: "inode-layout-reserved", patch: func(f *fixture) {
		ino := f.ino("/docs/setuid")
		f.put16(ino.Off, le.Uint16(f.b[ino.Off:])&^0xE|6<<1)
	}, rules: []string{RuleInodeFormat}},
	{name: "nlink", patch: func(f *fixture) {
		ino := f.ino("/docs/hl-src")
		if ino.Extended {
			f.put32(ino.Off+0x2C, 7)
		} else {
			f.put16(ino.Off+6, 7)
		}
	}, rules: []string{RuleNlink}},
	{name: "inode-count", patch: func(f *fixture) {
		f.put64(erofs.SuperblockOffset+0x10, f.img.SB.Inos+3)
		f.fixCRC()
	}, rules: []string{RuleInodeCount}},
	{name: "sb-blocks", patch: func(f *fixture) {
		f.put32(erofs.SuperblockOffset+0x24, uint32(len(f.b)/4096+10))
		f.fixCRC()
	}, rules: []string{RuleSbBlocks}},
	{name: "symlink-size", patch: func(f *fixture) {
		ino := f.ino("/link-rel")
		f.put32(ino.Off+8, 0)
	}, rules: []string{RuleSymlink}},
	{name: "flat-beyond-image", args: []string{"-Enoinline_data"}, patch: func(f *fixture) {
		ino := f.ino("/edge/8192")
		f.put32(ino.Off+0x10, uint32(len(f.b)/4096-1))
	}, rules: []string{RuleRangeDevice}},
	{name: "inline-crosses-block", patch: func(f *fixture) {
		ino := f.ino("/docs/setuid") // 1 byte inline
		f.put32(ino.Off+8, 4000)
	}, rules: []string{RuleInlineBlock}},
	{name: "xattr-icount", patch: func(f *fixture) {
		ino := f.ino("/empty")
		f.put16(ino.Off+2, 1)
	}, rules: []string{RuleXattrIcount}},
	{name: "xattr-shared-count", patch: func(f *fixture) {
		ino := f.ino("/empty")
		f.b[ino.Off+int64(ino.ISize)+4] = 200
	}, rules: []string{RuleXattrShareCount}},
	{name: "xattr-prefix-index", patch: func(f *fixture) {
		ino := f.ino("/empty")
		pos := ino.Off + int64(ino.ISize) + 12 + 4*int64(f.b[ino.Off+int64(ino.ISize)+4])
		f.b[pos+1] = 0x85
	}, rules: []string{RuleXattrPrefix}},
	{name: "xattr-entry-size", patch: func(f *fixture) {
		ino := f.ino("/empty")
		pos := ino.Off + int64(ino.ISize) + 12 + 4*int64(f.b[ino.Off+int64(ino.ISize)+4])
		f.put16(pos+2, 0xFFF0)
	}, rules: []string{RuleXattrEntry}},
	{name: "xattr-shared-id", args: []string{"-x1"}, patch: func(f *fixture) {
		ino := f.ino("/docs")
		h := ino.Off + int64(ino.ISize)
		if f.b[h+4] == 0 {
			f.t.Fatal("/docs has no shared xattr with -x1")
		}
		f.put32(h+12, 0x7FFFFFF0)
	}, rules: []string{RuleXattrSharedID}},
	{name: "compressed-index", args: []string{"-zlz4hc"}, patch: func(f *fixture) {
		ino := f.ino("/edge/65543")
		h := (ino.DataOff + 7) &^ 7
		f.b[h+6] = 3 // zstd: not in available algorithms
	}, rules: []string{RuleZmap}},
	{name: "decompress", args: []string{"-zlz4hc"}, patch: func(f *fixture) {
		ino := f.ino("/edge/65543")
		rs, err := f.img.DataRanges(ino)
		if err != nil {
			f.t.Fatal(err)
		}
		for _, r := range rs {
			if r.Kind == erofs.KindPcluster && r.Compressed {
				for i := r.Phys; i < r.Phys+r.PhysLen; i++ {
					f.b[i] = 0xF0
				}
				return
			}
		}
		f.t.Fatal("no compressed pcluster")
	}, rules: []string{RuleDecompress}},
	{name: "compression-config", args: []string{"-zlz4hc", "-C65536"}, patch: func(f *fixture) {
		// max_pclusterblks above 1 MiB: the kernel refuses to mount.
		cfgs := f.img.SB.ComprCfgs
		if len(cfgs) == 0 || cfgs[0].Alg != 0 {
			f.t.Fatalf("no lz4 compression config: %+v", cfgs)
		}
		f.put16(cfgs[0].Off+2+2, 1000)
		f.fixCRC()
	}, rules: []string{RuleComprCfg}},
	{name: "pcluster-beyond-image", args: []string{"-zlz4hc"}, patch: func(f *fixture) {
		// Truncate the image: data pclusters at the end now point beyond it.
		f.b = f.b[:len(f.b)-8192]
	}, rules: []string{RuleRangeDevice}},
	{name: "chunk-device-mask", blob: true, patch: func(f *fixture) {
		f.put16(f.chunkEntry("/edge/12289", 1)+2, 2) // mask is 1
	}, rules: []string{RuleChunkDevMask}},
	{name: "chunk-beyond-blob", blob: true, patch: func(f *fixture) {
		f.put32(f.chunkEntry("/edge/12289", 0)+4, 0x100000)
	}, rules: []string{RuleRangeDevice}},
	{name: "chunk-format", blob: true, patch: func(f *fixture) {
		ino := f.ino("/edge/8192")
		f.put16(ino.Off+0x10, le.Uint16(f.b[ino.Off+0x10:])|0x80)
	}, rules: []string{RuleChunkFormat}},
}

func TestCorruptions(t *testing.T) {
	bases := map[string][]byte{}
	var blobP, blobB []byte
	for _, c := range corruptions {
		t.Run(c.name, func(t *testing.T) {
			var f *fixture
			if c.blob {
				if blobP == nil {
					p, b := blobImage(t)
					blobP, blobB = readFile(t, p), readFile(t, b)
				}
				f = newFixture(t, blobP, blobB)
			} else {
				key := filepath.Join(c.args...)
				if bases[key] == nil {
					bases[key] = plainImage(t, c.args...)
				}
				f = newFixture(t, bases[key])
			}
			c.patch(f)
			rep := f.verify(Options{Content: true})
			wantRules(t, rep, c.rules...)
			if t.Failed() {
				return
			}
			for _, p := range rep.Problems {
				if p.Rule == c.rules[0] {
					t.Logf("%s", p)
					break
				}
			}
		})
	}
}

// TestManyProblems applies several corruptions to one image and expects
// every one of them to be reported.
func TestManyProblems(t *testing.T) {
	base := plainImage(t)
	f := newFixture(t, base)
	var want []string
	for _, c := range corruptions {
		switch c.name {
		case "dirent-order", "dirent-bad-nid", "dirent-dotdot", "nlink", "xattr-prefix-index", "symlink-size", "dirent-file-type":
			c.patch(f)
			want = append(want, c.rules...)
		}
	}
	rep := f.verify(Options{Content: true})
	wantRules(t, rep, want...)
	t.Logf("%d problems: %v", len(rep.Problems), rep.Rules())
}

// multiFixture builds a multiblob image with n devices in layout.
func multiFixture(t *testing.T, n int, layout string, chunk string) *fixture {
	t.Helper()
	dir := t.TempDir()
	p, b := filepath.Join(dir, "p.erofs"), filepath.Join(dir, "data.blob")
	testtree.Mkfs(t, p, sharedTree(t), "--blobdev="+b, "--chunksize="+chunk)
	res, err := multiblob.Split(p, b, filepath.Join(dir, "out"), multiblob.Options{N: n, Layout: layout})
	if err != nil {
		t.Fatal(err)
	}
	var blobs [][]byte
	for _, bp := range res.Blobs {
		blobs = append(blobs, readFile(t, bp))
	}
	return newFixture(t, readFile(t, res.Primary), blobs...)
}

func slotOff(f *fixture, i int) int64 {
	return f.img.SB.DeviceTableOffset() + int64(i)*erofs.DeviceSlotSize
}

func TestCorruptDeviceTable(t *testing.T) {
	t.Run("range-beyond-slot", func(t *testing.T) {
		f := multiFixture(t, 1, multiblob.LayoutContiguous, "4096")
		f.put32(slotOff(f, 0)+0x40, 1)
		f.fixCRC()
		wantRules(t, f.verify(Options{Content: true}), RuleRangeSlot)
	})
	t.Run("slot-beyond-device", func(t *testing.T) {
		f := multiFixture(t, 2, multiblob.LayoutContiguous, "4096")
		f.devs[1] = f.devs[1][:len(f.devs[1])-8192]
		wantRules(t, f.verify(Options{Content: true}), RuleSlotDevice, RuleRangeDevice)
	})
	t.Run("slot-overlap", func(t *testing.T) {
		f := multiFixture(t, 2, multiblob.LayoutContiguous, "4096")
		f.put32(slotOff(f, 1)+0x44, 1)
		f.fixCRC()
		wantRules(t, f.verify(Options{}), RuleSlotOverlap)
	})
	t.Run("slot-hi-reserved", func(t *testing.T) {
		f := multiFixture(t, 2, multiblob.LayoutAligned, "4096")
		f.put16(slotOff(f, 0)+0x4A, 1)
		f.b[slotOff(f, 1)+0x50] = 1
		f.fixCRC()
		wantRules(t, f.verify(Options{}), RuleSlotHi, RuleSlotReserved)
	})
	t.Run("chunk-device-count", func(t *testing.T) {
		f := multiFixture(t, 2, multiblob.LayoutZero, "4096") // mask 3, 2 devices
		f.put16(f.chunkEntry("/edge/12289", 0)+2, 3)
		wantRules(t, f.verify(Options{}), RuleChunkDevCount)
	})
	t.Run("range-straddle", func(t *testing.T) {
		f := multiFixture(t, 1, multiblob.LayoutContiguous, "8192")
		// Device 0, starting at the last primary block: half primary,
		// half device 1.
		e := f.chunkEntry("/edge/12289", 0)
		f.put16(e+2, 0)
		f.put32(e+4, uint32(f.img.SB.Blocks-1))
		wantRules(t, f.verify(Options{Content: true}), RuleRangeStraddle)
	})
	t.Run("flat-unmapped", func(t *testing.T) {
		f := multiFixture(t, 1, multiblob.LayoutZero, "4096")
		rep, err := Flat(bytes.NewReader(f.b), int64(len(f.b)), Options{})
		if err != nil {
			t.Fatal(err)
		}
		wantRules(t, rep, RuleSlotUnmapped)
	})
}

func TestProblemCap(t *testing.T) {
	f := newFixture(t, plainImage(t))
	// Every big/ entry gets a bad file_type.
	for _, p := range []string{"entry-000001-z", "entry-000002-zz", "entry-000003-zzz"} {
		e, _ := f.dirent("/big", p)
		f.b[e+10] = 9
	}
	rep := f.verify(Options{MaxProblems: 2})
	if !rep.Truncated || len(rep.Problems) != 2 || rep.OK() {
		t.Fatalf("want 2 problems and truncated, got %d truncated=%v", len(rep.Problems), rep.Truncated)
	}
}
