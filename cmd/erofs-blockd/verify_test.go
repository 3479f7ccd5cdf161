package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/internal/multiblob"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestVerifyCommand(t *testing.T) {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs not installed")
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	testtree.Build(t, tree, testtree.Options{Seed: 5, Files: 20, Xattrs: true, Symlinks: true, Hardlinks: true})
	img := filepath.Join(dir, "img.erofs")
	testtree.Mkfs(t, img, tree, "-zlz4hc")

	code, out, errs := runCmd("verify", "--content", img)
	if code != exitOK || !strings.HasPrefix(out, "clean:") {
		t.Fatalf("clean image: code %d\n%s%s", code, out, errs)
	}

	// --blob form with a multi-device image.
	p, b := filepath.Join(dir, "p.erofs"), filepath.Join(dir, "d.blob")
	testtree.Mkfs(t, p, tree, "--blobdev="+b, "--chunksize=4096")
	res, err := multiblob.Split(p, b, filepath.Join(dir, "mb"), multiblob.Options{N: 2, Layout: multiblob.LayoutAligned})
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"verify", "--content", "--json", "--blob", res.Primary}
	for _, bp := range res.Blobs {
		args = append(args, "--blob", bp)
	}
	code, out, errs = runCmd(args...)
	var js struct {
		OK       bool              `json:"ok"`
		Problems []json.RawMessage `json:"problems"`
		Files    int               `json:"files"`
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil || code != exitOK || !js.OK || js.Files == 0 {
		t.Fatalf("multiblob: code %d err %v\n%s%s", code, err, out, errs)
	}
	// Missing device: unusable.
	if code, _, _ := runCmd("verify", res.Primary); code != exitUnusable {
		t.Fatalf("missing devices: code %d, want %d", code, exitUnusable)
	}

	// Corrupt: truncate the last blob -> problems, exit 1, one line each.
	short := filepath.Join(dir, "short")
	data, _ := os.ReadFile(res.Blobs[1])
	os.WriteFile(short, data[:len(data)/2], 0o644)
	code, out, errs = runCmd("verify", "--blob", res.Primary, "--blob", res.Blobs[0], "--blob", short)
	if code != exitProblems {
		t.Fatalf("truncated blob: code %d\n%s%s", code, out, errs)
	}
	line := regexp.MustCompile(`(?m)^\S+ \(inode \d+\) offset 0x[0-9a-f]+( \([^)]*\))?: [a-z0-9-]+: .+$`)
	if !line.MatchString(out) || !strings.Contains(out, "range-beyond-device") {
		t.Fatalf("problem lines:\n%s", out)
	}

	// Unusable: bad magic.
	bad := filepath.Join(dir, "bad")
	data, _ = os.ReadFile(img)
	binary.LittleEndian.PutUint32(data[erofs.SuperblockOffset:], 0)
	os.WriteFile(bad, data, 0o644)
	if code, _, _ := runCmd("verify", bad); code != exitUnusable {
		t.Fatalf("bad magic: code %d", code)
	}
	if code, _, _ := runCmd("verify"); code != exitUnusable {
		t.Fatalf("no image: code %d", code)
	}
}

// TestVerifyChunkedWithoutFeature: a chunk-based image with CHUNKED_FILE
// cleared (as erofs-utils 1.9 rebuild mode and --tar=i write them) verifies
// with warnings only (exit 0), --strict exits 1, the host kernel mounts it,
// and `ls -R --sha256` lists exactly the source tree.
func TestVerifyChunkedWithoutFeature(t *testing.T) {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs not installed")
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	testtree.Build(t, tree, testtree.Options{Seed: 9, Files: 30, Xattrs: true, Symlinks: true, Hardlinks: true, Dup: true})
	orig := filepath.Join(dir, "orig.erofs")
	testtree.Mkfs(t, orig, tree, "--chunksize=4096")
	data, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := erofs.ParseSuperblock(data)
	if err != nil || !sb.HasIncompat(erofs.IncompatChunkedFile) {
		t.Fatalf("mkfs image: %v, incompat %#x", err, sb.FeatureIncompat)
	}
	off := erofs.SuperblockOffset + 80
	binary.LittleEndian.PutUint32(data[off:], binary.LittleEndian.Uint32(data[off:])&^uint32(erofs.IncompatChunkedFile))
	if sb.HasCompat(erofs.CompatSbChksum) {
		binary.LittleEndian.PutUint32(data[erofs.SuperblockOffset+4:], erofs.SuperblockChecksum(data, sb.BlkSzBits))
	}
	img := filepath.Join(dir, "nofeature.erofs")
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}

	code, out, errs := runCmd("verify", "--content", img)
	if code != exitOK || !strings.Contains(out, "\nclean (") || !strings.Contains(out, "warning(s))") {
		t.Fatalf("verify: code %d\n%s%s", code, out, errs)
	}
	warn := regexp.MustCompile(`(?m)^warning: \S+ \(inode \d+\) offset 0x[0-9a-f]+: inode-layout: chunk-based inode without the CHUNKED_FILE feature`)
	if !warn.MatchString(out) {
		t.Fatalf("no warning line:\n%s", out)
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(l, "warning: ") && !strings.HasPrefix(l, "clean (") && !strings.HasPrefix(l, "note: ") {
			t.Fatalf("non-warning line %q in:\n%s", l, out)
		}
	}

	code, out, errs = runCmd("verify", "--json", img)
	var js struct {
		OK       bool `json:"ok"`
		Errors   int  `json:"errors"`
		Warnings int  `json:"warnings"`
		Problems []struct {
			Rule     string `json:"rule"`
			Severity string `json:"severity"`
		} `json:"problems"`
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil || code != exitOK || !js.OK || js.Errors != 0 || js.Warnings == 0 || len(js.Problems) == 0 {
		t.Fatalf("json: code %d err %v\n%s%s", code, err, out, errs)
	}
	for _, p := range js.Problems {
		if p.Severity != "warning" || p.Rule != "inode-layout" {
			t.Fatalf("json problem %+v", p)
		}
	}

	if code, out, errs := runCmd("verify", "--strict", img); code != exitProblems {
		t.Fatalf("--strict: code %d, want %d\n%s%s", code, exitProblems, out, errs)
	}
	code, out, errs = runCmd("verify", "--strict", "--json", img)
	if err := json.Unmarshal([]byte(out), &js); err != nil || code != exitProblems || js.OK {
		t.Fatalf("--strict --json: code %d ok %v err %v\n%s", code, js.OK, err, errs)
	}
	// The untouched image is clean even with --strict.
	if code, out, errs := runCmd("verify", "--strict", "--content", orig); code != exitOK || !strings.HasPrefix(out, "clean:") {
		t.Fatalf("original --strict: code %d\n%s%s", code, out, errs)
	}

	// The listing equals the source tree.
	want, err := testtree.Manifest(tree, true)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errs = runCmd("ls", "-R", "--sha256", "--xattrs", "--json", img)
	if code != 0 {
		t.Fatalf("ls: code %d: %s", code, errs)
	}
	var got []testtree.Entry
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if d := testtree.Diff(want, got, 0); len(d) > 0 {
		t.Fatalf("ls differs from source:\n%s", strings.Join(d, "\n"))
	}

	// The host kernel mounts it and serves the same tree.
	if os.Geteuid() != 0 {
		t.Skip("kernel mount needs root")
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", "-t", "erofs", "-o", "ro,loop", img, mnt).CombinedOutput(); err != nil {
		if fs, _ := os.ReadFile("/proc/filesystems"); !bytes.Contains(fs, []byte("\terofs\n")) {
			t.Skipf("no erofs in this kernel: %v %s", err, out)
		}
		t.Fatalf("mount -t erofs -o ro,loop: %v %s", err, out)
	}
	defer exec.Command("umount", mnt).Run()
	if n := testtree.CompareTrees(t, tree, mnt); n == 0 {
		t.Fatal("empty mount")
	}
}
