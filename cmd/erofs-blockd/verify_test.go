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
