package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// The reference corpus: images made by erofs-utils 1.9.4 (built by
// scripts/erofs-utils.sh, `make reference-deps`) over every block size,
// compressor and layout option it has. For each image the host kernel
// mounts, `verify --content` must report no error (an error is only what
// fs/erofs or fsck.erofs refuses) and `ls -R --sha256 --xattrs` must equal
// the kernel mount, which must equal the source tree. An image the kernel
// refuses must not verify clean either.
//
// EROFS_BLOCKD_CORPUS_KEEP=DIR keeps the images (and a log) in DIR.

// refMkfs is the reference mkfs.erofs; EROFS_UTILS_BIN overrides its directory.
func refMkfs(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("EROFS_UTILS_BIN")
	if dir == "" {
		dir = "/opt/erofs-utils-1.9.4/bin"
	}
	p := filepath.Join(dir, "mkfs.erofs")
	out, err := exec.Command(p, "--version").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("erofs-utils) 1.9.")) {
		t.Fatalf("%s: erofs-utils 1.9.x needed (run scripts/erofs-utils.sh or make reference-deps): %v %s", p, err, out)
	}
	return p
}

// corpusCase is one image of the corpus.
type corpusCase struct {
	name string
	args []string
	// input: "" the source tree; "tar" the tree as a pax tarball (with
	// --tar=f or --tar=i in args); "headerball" the tarball without file
	// data; "rebuild" the layer images L1, L2 (rebuild mode).
	input string
	// devs are the extra devices, in slot order: "blob" (the --blobdev
	// file), "tar", "l1", "l2".
	devs []string
	// noData: a meta-only image whose file data is not in any device
	// (headerball): contents are compared between ls and the mount only.
	noData bool
	// patch edits the image after mkfs (the superblock checksum is
	// recomputed): images the kernel must refuse.
	patch func(b []byte, sb *erofs.Superblock) error
}

// patchCfg sets byte(s) of the first compression config record of alg.
func patchCfg(alg int, at int, val ...byte) func([]byte, *erofs.Superblock) error {
	return func(b []byte, sb *erofs.Superblock) error {
		for _, c := range sb.ComprCfgs {
			if c.Alg == alg {
				copy(b[c.Off+2+int64(at):], val)
				return nil
			}
		}
		return fmt.Errorf("no config record for algorithm %d: %+v", alg, sb.ComprCfgs)
	}
}

func corpusCases() []corpusCase {
	var cs []corpusCase
	add := func(name string, c corpusCase) {
		c.name = name
		cs = append(cs, c)
	}
	a := func(args ...string) corpusCase { return corpusCase{args: args} }
	for _, b := range []string{"512", "1024", "2048", "4096"} {
		add("plain-b"+b, a("-b"+b))
	}
	add("plain-noinline", a("-E^inline_data"))
	add("plain-inode-extended", a("-Eforce-inode-extended"))
	add("plain-dot-omitted", a("-Edot-omitted"))
	add("plain-48bit", a("-E48bit"))
	add("plain-48bit-b512", a("-b512", "-E48bit"))
	for _, z := range []string{"lz4", "lz4hc", "lzma", "deflate", "libdeflate", "zstd"} {
		add("z-"+z, a("-z"+z))
	}
	for _, zb := range [][2]string{{"lz4", "512"}, {"lz4hc", "1024"}, {"zstd", "2048"}, {"deflate", "512"}, {"libdeflate", "1024"}, {"lzma", "512"}} {
		add("z-"+zb[0]+"-b"+zb[1], a("-z"+zb[0], "-b"+zb[1]))
	}
	// Two algorithms in the superblock. (mkfs.erofs 1.9.4 segfaults on a
	// --compress-hints line with an algorithm index, so files cannot be
	// steered to the second one; hints with a pcluster size only work.)
	add("z-lzma:lz4hc", a("-zlzma:lz4hc"))
	add("z-lz4hc:zstd", a("-zlz4hc:zstd"))
	add("z-lz4hc-hints", a("-zlz4hc", "-C65536", "--compress-hints=HINTS"))
	add("z-lz4hc-C64k", a("-zlz4hc", "-C65536"))
	add("z-zstd-C128k", a("-zzstd", "-C131072"))
	add("z-deflate-C32k-b1024", a("-zdeflate", "-C32768", "-b1024"))
	add("z-lzma-C64k", a("-zlzma", "-C65536"))
	add("z-lzma-fragments-dedupe", a("-zlzma", "-C32768", "-Efragments,dedupe,ztailpacking"))
	add("z-lz4-ztailpacking", a("-zlz4", "-Eztailpacking"))
	add("z-lz4hc-ztailpacking-b512", a("-zlz4hc", "-b512", "-Eztailpacking"))
	add("z-lz4hc-fragments", a("-zlz4hc", "-Efragments"))
	add("z-zstd-fragments-C64k", a("-zzstd", "-C65536", "-Efragments"))
	add("z-lz4hc-all-fragments", a("-zlz4hc", "-Eall-fragments"))
	add("z-deflate-all-fragments-b1024", a("-zdeflate", "-b1024", "-Eall-fragments"))
	add("z-lz4hc-dedupe", a("-zlz4hc", "-Ededupe"))
	add("z-lz4hc-fragments-dedupe-ztail", a("-zlz4hc", "-C32768", "-Efragments,dedupe,ztailpacking"))
	add("z-zstd-48bit", a("-zzstd", "-E48bit"))
	add("z-zstd-48bit-C64k", a("-zzstd", "-C65536", "-E48bit"))
	add("z-lz4-48bit-b512", a("-zlz4", "-b512", "-E48bit"))
	add("z-lz4hc-legacy-compress", a("-zlz4hc", "-Elegacy-compress"))
	add("z-lz4hc-zD", a("-zlz4hc", "--zD=1"))
	add("MZ", a("--MZ"))
	add("MZ-lz4hc", a("-zlz4hc", "--MZ"))
	add("m4096", a("-m4096"))
	add("m4096-lz4hc", a("-zlz4hc", "-m4096"))
	// mkfs.erofs 1.9.4 writes a broken directory inode (i_mode 0) when -m
	// and --MZ are combined: the kernel (EUCLEAN on reading it) and
	// fsck.erofs refuse the image, so verify must report errors too.
	add("m4096-zstd-MZ", a("-zzstd", "-m4096:zstd", "--MZ"))
	add("xattr-inode-digest", a("--xattr-inode-digest"))
	add("xattr-inode-digest-named", a("--xattr-inode-digest=trusted.erofs.digest"))
	add("xattr-name-filter", a("-Exattr-name-filter"))
	add("xattr-prefix", a("--xattr-prefix=user.nnnnnnnn", "--xattr-prefix=trusted.overlay."))
	add("xattr-prefix-fragments", a("-zlz4hc", "-Efragments", "--xattr-prefix=user.nnnnnnnn"))
	add("xattr-prefix-plain", a("-zlz4hc", "-Efragments,plain-xattr-prefixes", "--xattr-prefix=user.nnnnnnnn"))
	add("chunk-4k", a("--chunksize=4096"))
	add("chunk-64k-b1024", a("-b1024", "--chunksize=65536"))
	add("chunk-blockmap", a("--chunksize=8192", "-Eforce-inode-blockmap"))
	add("chunk-indexes", a("--chunksize=8192", "-Eforce-chunk-indexes"))
	blob := a("--chunksize=16384", "--blobdev=BLOB")
	blob.devs = []string{"blob"}
	add("blobdev-16k", blob)
	blob48 := a("--chunksize=4096", "--blobdev=BLOB", "-E48bit")
	blob48.devs = []string{"blob"}
	add("blobdev-48bit", blob48)
	tf := a("--tar=f")
	tf.input = "tar"
	add("tar-f", tf)
	tfz := a("--tar=f", "-zlz4hc", "-Efragments")
	tfz.input = "tar"
	add("tar-f-lz4hc-fragments", tfz)
	ti := a("--tar=i")
	ti.input, ti.devs = "tar", []string{"tar"}
	add("tar-i", ti)
	ti48 := a("--tar=i", "-E48bit")
	ti48.input, ti48.devs = "tar", []string{"tar"}
	add("tar-i-48bit", ti48)
	hb := a("--tar=headerball")
	hb.input, hb.noData = "headerball", true
	add("tar-headerball", hb)
	rb := a()
	rb.input, rb.devs = "rebuild", []string{"l1", "l2"}
	add("rebuild-blobidx", rb)
	rbd := a("--clean=data")
	rbd.input = "rebuild"
	add("rebuild-data", rbd)
	// In rebuild mode --blobdev leaves the blob empty: the data stays in
	// the source images, which are the devices.
	// Compression configs the kernel refuses at mount (z_erofs_parse_cfgs).
	bad := func(name string, c corpusCase, p func([]byte, *erofs.Superblock) error) {
		c.patch = p
		add("refused-"+name, c)
	}
	bad("lz4-pclusterblks", a("-zlz4hc", "-C65536"), patchCfg(0, 2, 0x01, 0x01)) // 257 blocks > 1 MiB
	bad("lzma-dictsize", a("-zlzma"), patchCfg(1, 0, 0, 0, 0, 0x01))             // 16 MiB
	bad("deflate-windowbits", a("-zdeflate"), patchCfg(2, 0, 16))
	bad("zstd-windowlog", a("-zzstd"), patchCfg(3, 1, 11))
	rbb := a("--blobdev=BLOB", "--chunksize=4096")
	rbb.input, rbb.devs = "rebuild", []string{"l1", "l2"}
	add("rebuild-blobdev", rbb)
	return cs
}

type corpusResult struct {
	name                          string
	mounted, fsck, verified, lsEq string
	verifyErrors, verifyWarn      int
	note                          string
}

func TestCorpus(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the corpus needs root (kernel mounts, device nodes)")
	}
	mkfs := refMkfs(t)
	need(t, "tar")
	dir := t.TempDir()
	if k := os.Getenv("EROFS_BLOCKD_CORPUS_KEEP"); k != "" {
		dir = k
		os.MkdirAll(dir, 0o755)
	}
	// The source tree, its tarball, its headerball and two layer trees.
	tree := filepath.Join(dir, "tree")
	os.RemoveAll(tree)
	opt := testtree.Full(7)
	opt.Files, opt.MaxSize, opt.BigDir = 24, 128<<10, 150
	testtree.Build(t, tree, opt)
	os.Chmod(tree, 0o755)
	tarball := filepath.Join(dir, "tree.tar")
	run(t, "tar", "--format=pax", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", tree, "-cf", tarball, ".")
	headerball := filepath.Join(dir, "tree.hb")
	if err := makeHeaderball(tarball, headerball); err != nil {
		t.Fatal(err)
	}
	hints := filepath.Join(dir, "hints")
	os.WriteFile(hints, []byte("16384 a/.*\n4096 docs/.*\n"), 0o644)
	l1, l2, union := filepath.Join(dir, "l1"), filepath.Join(dir, "l2"), filepath.Join(dir, "union")
	for _, d := range []string{l1, l2, union} {
		os.RemoveAll(d)
	}
	testtree.Build(t, l1, testtree.Options{Seed: 11, Files: 12, MaxSize: 100 << 10, Xattrs: true, Symlinks: true, Hardlinks: true})
	if err := os.MkdirAll(filepath.Join(l2, "layer2"), 0o755); err != nil {
		t.Fatal(err)
	}
	testtree.Build(t, filepath.Join(l2, "layer2"), testtree.Options{Seed: 12, Files: 10, MaxSize: 80 << 10})
	os.WriteFile(filepath.Join(l2, "l2-top"), []byte("from layer 2\n"), 0o644)
	for _, d := range []string{l1, l2} {
		os.Chmod(d, 0o755)
		run(t, "cp", "-a", d+"/.", union+"/")
	}
	l1img, l2img := filepath.Join(dir, "l1.erofs"), filepath.Join(dir, "l2.erofs")
	for _, p := range [][2]string{{l1img, l1}, {l2img, l2}} {
		// Blob-index rebuilds need every file's data in blocks of its own.
		if out, err := exec.Command(mkfs, "-T0", "--quiet", "-E^inline_data", p[0], p[1]).CombinedOutput(); err != nil {
			t.Fatalf("mkfs layer: %v %s", err, out)
		}
	}
	srcMan := manifestOrFail(t, tree)
	unionMan := manifestOrFail(t, union)

	var mu sync.Mutex
	var results []corpusResult
	t.Run("img", func(t *testing.T) {
		for _, c := range corpusCases() {
			c := c
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				r := corpusOne(t, mkfs, dir, c, tree, tarball, headerball, hints, l1img, l2img, srcMan, unionMan)
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			})
		}
	})
	var sb strings.Builder
	sort.Slice(results, func(i, j int) bool { return results[i].name < results[j].name })
	fmt.Fprintf(&sb, "%-34s %-8s %-8s %-10s %-8s %s\n", "image", "mounted", "fsck", "verified", "ls=mnt", "note")
	for _, r := range results {
		fmt.Fprintf(&sb, "%-34s %-8s %-8s %-10s %-8s %s\n", r.name, r.mounted, r.fsck, r.verified, r.lsEq, r.note)
	}
	t.Log("\n" + sb.String())
	if k := os.Getenv("EROFS_BLOCKD_CORPUS_KEEP"); k != "" {
		os.WriteFile(filepath.Join(k, "results.txt"), []byte(sb.String()), 0o644)
	}
}

func manifestOrFail(t *testing.T, root string) []testtree.Entry {
	t.Helper()
	m, err := testtree.Manifest(root, true)
	if err != nil {
		t.Fatal(err)
	}
	for i := range m {
		if m[i].Path == "/" {
			m[i].Mode, m[i].UID, m[i].GID = 0, 0, 0 // the root's attributes vary by input mode
		}
	}
	return m
}

func corpusOne(t *testing.T, mkfs, dir string, c corpusCase, tree, tarball, headerball, hints, l1img, l2img string, srcMan, unionMan []testtree.Entry) corpusResult {
	r := corpusResult{name: c.name, mounted: "-", fsck: "-", verified: "-", lsEq: "-"}
	sub := filepath.Join(dir, c.name)
	os.RemoveAll(sub)
	os.MkdirAll(sub, 0o755)
	img, blob := filepath.Join(sub, "image.erofs"), filepath.Join(sub, "blob")
	var args []string
	for _, a := range c.args {
		a = strings.ReplaceAll(a, "BLOB", blob)
		a = strings.ReplaceAll(a, "HINTS", hints)
		args = append(args, a)
	}
	args = append([]string{"-T0", "--quiet"}, args...)
	args = append(args, img)
	want := srcMan
	switch c.input {
	case "":
		args = append(args, tree)
	case "tar":
		args = append(args, tarball)
	case "headerball":
		args = append(args, headerball)
	case "rebuild":
		args = append(args, l1img, l2img)
		want = unionMan
	}
	if out, err := exec.Command(mkfs, args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.erofs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if c.patch != nil {
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		sb, err := erofs.ParseSuperblock(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.patch(b, sb); err != nil {
			t.Fatal(err)
		}
		if sb.HasCompat(erofs.CompatSbChksum) {
			binary.LittleEndian.PutUint32(b[erofs.SuperblockOffset+4:], erofs.SuperblockChecksum(b, sb.BlkSzBits))
		}
		if err := os.WriteFile(img, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	devs := map[string]string{"blob": blob, "tar": tarball, "l1": l1img, "l2": l2img}
	blobs := []string{img}
	for _, d := range c.devs {
		blobs = append(blobs, devs[d])
	}
	var blobArgs []string
	for _, b := range blobs {
		blobArgs = append(blobArgs, "--blob", b)
	}

	// The kernel: a file-backed mount, extra devices with device=.
	mnt := filepath.Join(sub, "mnt")
	os.MkdirAll(mnt, 0o755)
	var opts []string
	for _, b := range blobs[1:] {
		opts = append(opts, "device="+b)
	}
	mountErr := unix.Mount(img, mnt, "erofs", unix.MS_RDONLY, strings.Join(opts, ","))
	var mntMan []testtree.Entry
	if mountErr == nil {
		r.mounted = "yes"
		m, err := testtree.Manifest(mnt, true)
		unmount(t, mnt)
		if err != nil {
			// The kernel mounts it but refuses to read part of it.
			r.mounted = "read-err"
			r.note = err.Error()
			mountErr = err
		}
		mntMan = m
	} else {
		r.mounted = "refused"
		r.note = mountErr.Error()
	}

	// The reference checker (it reads and decompresses every file).
	fargs := []string{}
	for _, b := range blobs[1:] {
		fargs = append(fargs, "--device="+b)
	}
	fsckOut, fsckErr := exec.Command(filepath.Join(filepath.Dir(mkfs), "fsck.erofs"), append(fargs, img)...).CombinedOutput()
	r.fsck = "ok"
	if fsckErr != nil {
		r.fsck = "refused"
		t.Logf("fsck.erofs refuses it: %v\n%s", fsckErr, fsckOut)
	}

	vargs := append([]string{"verify", "--json", "--content"}, blobArgs...)
	out, verr := exec.Command(binPath, vargs...).Output()
	var rep struct {
		OK       bool `json:"ok"`
		Errors   int  `json:"errors"`
		Warnings int  `json:"warnings"`
		Notes    []string
		Problems []struct {
			Path, Rule, Detail, Severity string
		}
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		r.verified = "unusable"
		if ee, ok := verr.(*exec.ExitError); ok {
			r.note += " " + strings.TrimSpace(string(ee.Stderr))
		}
	} else {
		r.verifyErrors, r.verifyWarn = rep.Errors, rep.Warnings
		r.verified = fmt.Sprintf("E%d W%d", rep.Errors, rep.Warnings)
	}
	// An error is what the kernel or fsck.erofs refuses: with both
	// accepting the image, verify must find none.
	if mountErr == nil && fsckErr == nil {
		if r.verified == "unusable" || rep.Errors > 0 {
			var ps []string
			for i, p := range rep.Problems {
				if i == 20 {
					break
				}
				ps = append(ps, fmt.Sprintf("%s %s %s: %s", p.Severity, p.Path, p.Rule, p.Detail))
			}
			t.Errorf("the kernel and fsck.erofs accept it but verify reports errors (%s):\n%s%s", r.verified, strings.Join(ps, "\n"), r.note)
		}
	} else if mountErr != nil && r.verified != "unusable" && rep.Errors == 0 {
		t.Errorf("the kernel refuses it (%v) but verify finds no error", mountErr)
	}
	if mountErr != nil {
		return r
	}

	// The kernel mount equals the source tree (contents too, except for
	// headerball images, whose data is nowhere).
	for i := range mntMan {
		if mntMan[i].Path == "/" {
			mntMan[i].Mode, mntMan[i].UID, mntMan[i].GID = 0, 0, 0
		}
	}
	wantCmp := stripForSource(want, c)
	if d := testtree.Diff(wantCmp, stripForSource(mntMan, c), 20); len(d) > 0 {
		t.Errorf("kernel mount differs from the source:\n%s", strings.Join(d, "\n"))
	}

	// ls -R --sha256 --xattrs equals the kernel mount.
	largs := append([]string{"ls", "-R", "--sha256", "--xattrs", "--json"}, blobArgs...)
	lo, lerr := exec.Command(binPath, largs...).Output()
	var got []testtree.Entry
	if lerr != nil || json.Unmarshal(lo, &got) != nil {
		r.lsEq = "fails"
		var stderr string
		if ee, ok := lerr.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Errorf("ls: %v %s", lerr, stderr)
		return r
	}
	for i := range got {
		if got[i].Path == "/" {
			got[i].Mode, got[i].UID, got[i].GID = 0, 0, 0
		}
	}
	if d := testtree.Diff(mntMan, got, 20); len(d) > 0 {
		r.lsEq = "no"
		t.Errorf("ls differs from the kernel mount:\n%s", strings.Join(d, "\n"))
	} else {
		r.lsEq = "yes"
	}
	return r
}

// stripForSource drops what an image legitimately adds to or loses from
// the source tree: digest xattrs mkfs records, and contents that a
// headerball image does not have.
func stripForSource(m []testtree.Entry, c corpusCase) []testtree.Entry {
	out := make([]testtree.Entry, len(m))
	for i, e := range m {
		if c.noData {
			e.SHA256 = ""
		}
		if e.Xattrs != nil {
			x := map[string]string{}
			for k, v := range e.Xattrs {
				if strings.Contains(k, "erofs.") {
					continue
				}
				x[k] = v
			}
			if len(x) == 0 {
				x = nil
			}
			e.Xattrs = x
		}
		out[i] = e
	}
	return out
}

// unmount retries a busy unmount briefly, then detaches.
func unmount(t *testing.T, mnt string) {
	for i := 0; i < 50; i++ {
		err := unix.Unmount(mnt, 0)
		if err == nil {
			return
		}
		if err != unix.EBUSY {
			t.Errorf("umount %s: %v", mnt, err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
		t.Errorf("umount -l %s: %v", mnt, err)
	}
}

// makeHeaderball writes the tarball at src without its file data: the
// stream --tar=headerball expects.
func makeHeaderball(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	cr := &countReader{r: bytes.NewReader(data)}
	tr := tar.NewReader(cr)
	var out bytes.Buffer
	start := int64(0)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		hdrEnd := cr.n
		out.Write(data[start:hdrEnd])
		// Skip the data and its padding.
		size := int64(0)
		if h.Typeflag == tar.TypeReg {
			size = h.Size
		}
		start = hdrEnd + (size+511)/512*512
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return err
		}
	}
	out.Write(make([]byte, 1024))
	return os.WriteFile(dst, out.Bytes(), 0o644)
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
