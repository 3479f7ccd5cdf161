package verify

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/internal/multiblob"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

func needMkfs(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs not installed (scripts/deps.sh)")
	}
}

var (
	treeOnce sync.Once
	treeDir  string
	treeErr  error
)

// sharedTree builds the rich test tree (with a big directory) once.
func sharedTree(t testing.TB) string {
	t.Helper()
	needMkfs(t)
	treeOnce.Do(func() {
		d, err := os.MkdirTemp("", "verify-tree-")
		if err != nil {
			treeErr = err
			return
		}
		treeDir = filepath.Join(d, "tree")
		o := testtree.Full(7)
		o.BigDir = 1500
		treeErr = testtree.BuildErr(treeDir, o)
	})
	if treeErr != nil {
		t.Fatalf("build tree: %v", treeErr)
	}
	return treeDir
}

func mkfs(t testing.TB, args ...string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "img.erofs")
	testtree.Mkfs(t, img, sharedTree(t), args...)
	return img
}

func dev(b []byte) Dev { return Dev{R: bytes.NewReader(b), Size: int64(len(b))} }

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// verifyBytes verifies a primary and devices held in memory.
func verifyBytes(t testing.TB, prim []byte, devs [][]byte, opt Options) *Report {
	t.Helper()
	var ds []Dev
	for _, d := range devs {
		ds = append(ds, dev(d))
	}
	rep, err := Devices(dev(prim), ds, opt)
	if err != nil {
		t.Fatalf("Devices: %v", err)
	}
	return rep
}

func wantClean(t *testing.T, rep *Report) {
	t.Helper()
	if !rep.StrictOK() {
		var b strings.Builder
		rep.WriteText(&b)
		t.Fatalf("want clean, got:\n%s", b.String())
	}
	if rep.Inodes == 0 || rep.Dirs == 0 {
		t.Fatalf("nothing walked: %s", rep.Summary())
	}
}

func wantRules(t *testing.T, rep *Report, rules ...string) {
	t.Helper()
	for _, r := range rules {
		if !rep.Has(r) {
			var b strings.Builder
			rep.WriteText(&b)
			t.Errorf("rule %q not reported; got:\n%s", r, b.String())
		}
	}
}

var variants = []struct {
	name string
	args []string
}{
	{"plain", nil},
	{"lz4", []string{"-zlz4"}},
	{"lz4hc", []string{"-zlz4hc"}},
	{"lz4hc-bigpcluster", []string{"-zlz4hc", "-C65536"}},
	{"noinline", []string{"-Enoinline_data"}},
	{"chunk4k", []string{"--chunksize=4096"}},
	{"chunk64k", []string{"--chunksize=65536"}},
	{"xattr-shared", []string{"-x1"}},
	{"legacy-compress", []string{"-zlz4", "-Elegacy-compress"}},
}

func TestCleanImages(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			img := mkfs(t, v.args...)
			rep := verifyBytes(t, readFile(t, img), nil, Options{Content: true})
			wantClean(t, rep)
			if rep.Bytes == 0 {
				t.Fatalf("no content read: %s", rep.Summary())
			}
			t.Log(rep.Summary())
		})
	}
}

// blobImage builds a Debian-1.5-style --blobdev image.
func blobImage(t testing.TB) (primary, blob string) {
	t.Helper()
	dir := t.TempDir()
	primary, blob = filepath.Join(dir, "p.erofs"), filepath.Join(dir, "data.blob")
	testtree.Mkfs(t, primary, sharedTree(t), "--blobdev="+blob, "--chunksize=4096")
	return
}

func TestCleanBlobdev(t *testing.T) {
	p, b := blobImage(t)
	rep := verifyBytes(t, readFile(t, p), [][]byte{readFile(t, b)}, Options{Content: true})
	wantClean(t, rep)
	if len(rep.Notes) == 0 {
		t.Errorf("want a note about the all-zero slot")
	}
	// Without the device: metadata only, noted.
	rep2, err := Image(openImg(t, readFile(t, p)), Options{Content: true})
	if err != nil {
		t.Fatal(err)
	}
	wantClean(t, rep2)
}

func openImg(t testing.TB, b []byte, opts ...erofs.Option) *erofs.Image {
	t.Helper()
	img, err := erofs.Open(bytes.NewReader(b), int64(len(b)), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestCleanMultiblob(t *testing.T) {
	p, b := blobImage(t)
	for _, layout := range []string{multiblob.LayoutZero, multiblob.LayoutContiguous, multiblob.LayoutAligned} {
		for _, n := range []int{1, 3} {
			t.Run(layout+"-"+string(rune('0'+n)), func(t *testing.T) {
				res, err := multiblob.Split(p, b, t.TempDir(), multiblob.Options{N: n, Layout: layout, SHA256Tags: true})
				if err != nil {
					t.Fatal(err)
				}
				var blobs [][]byte
				for _, bp := range res.Blobs {
					blobs = append(blobs, readFile(t, bp))
				}
				prim := readFile(t, res.Primary)
				wantClean(t, verifyBytes(t, prim, blobs, Options{Content: true}))

				// The composed flat device, as serve --check full sees it.
				srcs := []flatdev.Source{{Name: "p", R: bytes.NewReader(prim), Size: int64(len(prim))}}
				for i, bb := range blobs {
					srcs = append(srcs, flatdev.Source{Name: res.Blobs[i], R: bytes.NewReader(bb), Size: int64(len(bb))})
				}
				fd, err := flatdev.New(srcs[0], srcs[1:], flatdev.Options{})
				if err != nil {
					t.Fatal(err)
				}
				rep, err := Flat(fd, fd.Size(), Options{Content: true})
				if err != nil {
					t.Fatal(err)
				}
				wantClean(t, rep)
			})
		}
	}
}

// BenchmarkImage verifies $VERIFY_BENCH_IMAGE with content reading (see
// scripts/bench-verify.sh, which leaves images in its WORKDIR).
func BenchmarkImage(b *testing.B) {
	p := os.Getenv("VERIFY_BENCH_IMAGE")
	if p == "" {
		b.Skip("set VERIFY_BENCH_IMAGE")
	}
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	b.SetBytes(st.Size())
	for b.Loop() {
		rep, err := Devices(Dev{R: f, Size: st.Size()}, nil, Options{Content: true})
		if err != nil || !rep.OK() {
			b.Fatalf("%v %v", err, rep.Problems)
		}
	}
}

// clearChunkedFeature clears CHUNKED_FILE in feature_incompat (le32 at
// superblock offset 80) and rewrites the superblock checksum if the image
// has one, as erofs-utils 1.9 rebuild mode and --tar=i images look.
func clearChunkedFeature(t testing.TB, img []byte) []byte {
	t.Helper()
	b := append([]byte(nil), img...)
	sb, err := erofs.ParseSuperblock(b)
	if err != nil {
		t.Fatal(err)
	}
	if !sb.HasIncompat(erofs.IncompatChunkedFile) {
		t.Fatal("mkfs did not set CHUNKED_FILE")
	}
	off := erofs.SuperblockOffset + 80
	v := binary.LittleEndian.Uint32(b[off:])
	binary.LittleEndian.PutUint32(b[off:], v&^uint32(erofs.IncompatChunkedFile))
	if sb.HasCompat(erofs.CompatSbChksum) {
		binary.LittleEndian.PutUint32(b[erofs.SuperblockOffset+4:], erofs.SuperblockChecksum(b, sb.BlkSzBits))
	}
	sb2, err := erofs.ParseSuperblock(b)
	if err != nil || sb2.HasIncompat(erofs.IncompatChunkedFile) {
		t.Fatalf("patched superblock: %v", err)
	}
	return b
}

// TestChunkedWithoutFeature: chunk-based inodes without CHUNKED_FILE (what
// erofs-utils 1.9 writes; the kernel and fsck.erofs accept it) are warnings,
// not errors.
func TestChunkedWithoutFeature(t *testing.T) {
	img := clearChunkedFeature(t, readFile(t, mkfs(t, "--chunksize=4096")))
	rep := verifyBytes(t, img, nil, Options{Content: true})
	var b strings.Builder
	rep.WriteText(&b)
	if !rep.OK() || rep.Errors() != 0 {
		t.Fatalf("want no errors, got:\n%s", b.String())
	}
	if rep.Warnings() == 0 || rep.StrictOK() || !rep.Has(RuleInodeLayout) {
		t.Fatalf("want inode-layout warnings, got:\n%s", b.String())
	}
	for _, p := range rep.Problems {
		if !p.IsWarning() || p.Rule != RuleInodeLayout {
			t.Fatalf("unexpected problem %s", p)
		}
	}
	if !strings.HasPrefix(b.String(), "warning: ") || !strings.Contains(rep.Summary(), "warning(s)") {
		t.Fatalf("text output:\n%s", b.String())
	}
	if rep.Bytes == 0 {
		t.Fatalf("no content read: %s", rep.Summary())
	}
	// A tiny cap: warnings past it are counted, the walk is not truncated.
	rep = verifyBytes(t, img, nil, Options{MaxProblems: 1})
	if !rep.OK() || rep.Truncated || rep.WarningsDropped == 0 || len(rep.Problems) != 1 {
		t.Fatalf("capped: ok=%v truncated=%v dropped=%d kept=%d", rep.OK(), rep.Truncated, rep.WarningsDropped, len(rep.Problems))
	}
	// The unpatched image has no warnings at all.
	wantClean(t, verifyBytes(t, readFile(t, mkfs(t, "--chunksize=4096")), nil, Options{}))
}
