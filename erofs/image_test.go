package erofs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

var (
	srcOnce sync.Once
	srcDir  string
	srcErr  error
)

// sharedSource builds the rich test tree once per test binary.
func sharedSource(t testing.TB) string {
	t.Helper()
	srcOnce.Do(func() {
		d, err := os.MkdirTemp("", "erofs-src-")
		if err != nil {
			srcErr = err
			return
		}
		srcDir = filepath.Join(d, "tree")
		o := testtree.Full(1)
		srcErr = testtree.BuildErr(srcDir, o)
	})
	if srcErr != nil {
		t.Fatalf("build tree: %v", srcErr)
	}
	return srcDir
}

func openFile(t testing.TB, path string, opts ...Option) *Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(f, st.Size(), opts...)
	if err != nil {
		t.Fatalf("Open %s: %v", path, err)
	}
	return img
}

func toTesttree(es []Entry) []testtree.Entry {
	out := make([]testtree.Entry, len(es))
	for i, e := range es {
		out[i] = testtree.Entry{Path: e.Path, Type: e.Type, Mode: e.Mode, UID: e.UID, GID: e.GID, Size: e.Size,
			Target: e.Target, Rdev: e.Rdev, SHA256: e.SHA256, Nlink: e.Nlink, Xattrs: e.Xattrs}
	}
	return out
}

func manifestFromImage(t testing.TB, img *Image) []testtree.Entry {
	t.Helper()
	es, err := img.List(ListOptions{Xattrs: true, Content: true})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return toTesttree(es)
}

func compareTree(t *testing.T, src string, img *Image) {
	t.Helper()
	want, err := testtree.Manifest(src, true)
	if err != nil {
		t.Fatal(err)
	}
	got := manifestFromImage(t, img)
	if d := testtree.Diff(want, got, 30); len(d) > 0 {
		t.Errorf("manifest differs:\n%s", strings.Join(d, "\n"))
	}
}

// checkRanges checks DataRanges of every file covers [0,size) contiguously.
func checkRanges(t *testing.T, img *Image) map[RangeKind]int {
	t.Helper()
	kinds := map[RangeKind]int{}
	err := img.Walk(func(p string, ino *Inode, d Dirent) error {
		if !hasData(ino) {
			return nil
		}
		rs, err := img.DataRanges(ino)
		if err != nil {
			t.Errorf("%s: DataRanges: %v", p, err)
			return nil
		}
		var at int64
		for _, r := range rs {
			kinds[r.Kind]++
			if r.Logical != at || r.Length <= 0 {
				t.Errorf("%s: range %v does not continue at %d", p, r, at)
				return nil
			}
			at += r.Length
		}
		if at != ino.Size {
			t.Errorf("%s: ranges cover %d of %d bytes: %v", p, at, ino.Size, rs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return kinds
}

func TestImages(t *testing.T) {
	src := sharedSource(t)
	cases := []struct {
		name  string
		args  []string
		kinds []RangeKind
		comp  bool
	}{
		{"plain", nil, []RangeKind{KindFlat, KindInline}, false},
		{"compact-noenv", []string{"NOENV", "-Eforce-inode-compact"}, []RangeKind{KindFlat, KindInline}, false},
		{"lz4-compact-noenv", []string{"NOENV", "-zlz4hc", "-Eztailpacking"}, []RangeKind{KindPcluster, KindInline}, true},
		{"noinline", []string{"-Enoinline_data"}, []RangeKind{KindFlat}, false},
		{"chunk4k", []string{"--chunksize=4096"}, []RangeKind{KindChunk}, false},
		{"chunk64k", []string{"--chunksize=65536"}, []RangeKind{KindChunk}, false},
		{"lz4", []string{"-zlz4"}, []RangeKind{KindPcluster}, true},
		{"lz4hc", []string{"-zlz4hc"}, []RangeKind{KindPcluster}, true},
		{"extended", []string{"-Eforce-inode-extended"}, []RangeKind{KindFlat, KindInline}, false},
		{"chunkidx", []string{"--chunksize=8192", "-Eforce-chunk-indexes"}, []RangeKind{KindChunk}, false},
		{"blockmap", []string{"--chunksize=4096", "-Eforce-inode-blockmap"}, []RangeKind{KindChunk}, false},
		{"lz4-tail", []string{"-zlz4hc", "-Eztailpacking"}, []RangeKind{KindPcluster, KindInline}, true},
		{"lz4-big", []string{"-zlz4hc", "-C65536", "-Eforce-inode-extended"}, []RangeKind{KindPcluster}, true},
		{"lz4-tail-compact", []string{"-zlz4", "-C16384", "-Eztailpacking,force-inode-compact"}, []RangeKind{KindPcluster, KindInline}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "img")
			if len(c.args) > 0 && c.args[0] == "NOENV" {
				// testtree.Mkfs sets SOURCE_DATE_EPOCH, which makes mkfs 1.5
				// write only extended inodes; run it without to get compact ones.
				a := append([]string{"-T0", "--quiet"}, c.args[1:]...)
				if out, err := exec.Command("mkfs.erofs", append(a, img, src)...).CombinedOutput(); err != nil {
					t.Fatalf("mkfs: %v %s", err, out)
				}
			} else {
				testtree.Mkfs(t, img, src, c.args...)
			}
			im := openFile(t, img)
			if c.name == "compact-noenv" {
				n := 0
				im.Walk(func(p string, ino *Inode, d Dirent) error {
					if !ino.Extended {
						n++
					}
					return nil
				})
				if n == 0 {
					t.Error("no compact inodes")
				}
			}
			if c.comp && !zmapReady {
				t.Skip("compressed layouts not integrated")
			}
			compareTree(t, src, im)
			kinds := checkRanges(t, im)
			for _, k := range c.kinds {
				if kinds[k] == 0 {
					t.Errorf("no %v ranges: %v", k, kinds)
				}
			}
		})
	}
}

func TestBlobdev(t *testing.T) {
	src := sharedSource(t)
	dir := t.TempDir()
	img, blob := filepath.Join(dir, "img"), filepath.Join(dir, "blob")
	testtree.Mkfs(t, img, src, "--blobdev="+blob, "--chunksize=4096")
	bf, err := os.Open(blob)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	st, _ := bf.Stat()
	im := openFile(t, img, WithDevices(Dev{R: bf, Size: st.Size()}))
	if n := im.SB.NumDevices(); n != 1 {
		t.Fatalf("extra devices %d", n)
	}
	if k := im.SB.Devices[0].TagKind(); k != TagEmpty {
		t.Errorf("tag kind %s", k)
	}
	if im.SB.DeviceMask != 1 {
		t.Errorf("mask %d", im.SB.DeviceMask)
	}
	compareTree(t, src, im)
	kinds := checkRanges(t, im)
	if kinds[KindChunk] == 0 {
		t.Errorf("no chunks: %v", kinds)
	}
	// Without the device, reading chunk data must name the missing device.
	im2 := openFile(t, img)
	ino, err := im2.Lookup("/edge/8192")
	if err != nil {
		t.Fatal(err)
	}
	f, err := im2.OpenFile(ino)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 10), 0); err == nil || !strings.Contains(err.Error(), "device 1") {
		t.Errorf("read without device: %v", err)
	}
	rs, err := im2.DataRanges(ino)
	if err != nil || len(rs) != 1 || rs[0].Device != 1 || rs[0].Kind != KindChunk {
		t.Errorf("ranges %v %v", rs, err)
	}
	// Flat: a composed device (primary blocks then the blob at uniaddr).
	pri, _ := os.ReadFile(img)
	blobData, _ := os.ReadFile(blob)
	bs := int(im.BlockSize())
	uni := (len(pri) + bs - 1) / bs
	flat := make([]byte, uni*bs+len(blobData))
	copy(flat, pri)
	copy(flat[uni*bs:], blobData)
	sb, err := ParseSuperblock(flat[:bs])
	if err != nil {
		t.Fatal(err)
	}
	slot := sb.Devices[0]
	slot.UniAddr, slot.Blocks = uint64(uni), uint64((len(blobData)+bs-1)/bs)
	PutDeviceSlot(flat[sb.DeviceTableOffset():], slot)
	if sb.HasCompat(CompatSbChksum) {
		c := SuperblockChecksum(flat, sb.BlkSzBits)
		flat[1028], flat[1029], flat[1030], flat[1031] = byte(c), byte(c>>8), byte(c>>16), byte(c>>24)
	}
	fi, err := Open(bytesReader(flat), int64(len(flat)), WithFlat())
	if err != nil {
		t.Fatal(err)
	}
	if fi.SB.Devices[0].UniAddr != uint64(uni) {
		t.Fatalf("uniaddr %d", fi.SB.Devices[0].UniAddr)
	}
	compareTree(t, src, fi)
}

func TestBigDirAndSparse(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	src := filepath.Join(t.TempDir(), "tree")
	testtree.Build(t, src, testtree.Options{Seed: 2, Files: 5, MaxSize: 10000, BigDir: 3000, Sparse4G: true})
	img := filepath.Join(t.TempDir(), "img")
	testtree.Mkfs(t, img, src, "--chunksize=65536")
	im := openFile(t, img)
	compareTree(t, src, im)
	ino, err := im.Lookup("/sparse-5g")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := im.DataRanges(ino)
	if err != nil {
		t.Fatal(err)
	}
	// mkfs 1.5 has no hole encoding but dedups chunks: the zero chunks all
	// share one block.
	phys := map[int64]bool{}
	var covered int64
	for _, r := range rs {
		covered += r.Length
		phys[r.Phys] = true
	}
	if covered != ino.Size || len(phys) > 4 {
		t.Errorf("sparse file: %d ranges over %d distinct blocks, covering %d", len(rs), len(phys), covered)
	}
	d, err := im.Lookup("/big")
	if err != nil {
		t.Fatal(err)
	}
	ents, err := im.ReadDir(d)
	if err != nil || len(ents) != 3002 {
		t.Fatalf("big dir: %d entries, %v", len(ents), err)
	}
}
