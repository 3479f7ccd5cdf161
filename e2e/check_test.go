package e2e

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// TestServeCheckFull: a chunk index pointing at a device beyond the device
// mask passes the quick check but `serve --check full` refuses it, naming the
// file, the inode and the rule; the clean image is served.
func TestServeCheckFull(t *testing.T) {
	im := layouts(t, testtree.Options{Seed: 21, Files: 10})[0]
	p, err := os.ReadFile(im.blobs[0])
	if err != nil {
		t.Fatal(err)
	}
	img, err := erofs.Open(bytes.NewReader(p), int64(len(p)))
	if err != nil {
		t.Fatal(err)
	}
	var target *erofs.Inode
	img.Walk(func(path string, ino *erofs.Inode, d erofs.Dirent) error {
		if target == nil && ino.Layout == erofs.LayoutChunkBased && ino.Size > 0 {
			target = ino
		}
		return nil
	})
	if target == nil {
		t.Fatal("no chunk-based file")
	}
	entry := (target.DataOff + 7) &^ 7
	binary.LittleEndian.PutUint16(p[entry+2:], 3) // device_id 3, mask is 1
	// Inodes share block 0 with the superblock in 1.5 images: keep the CRC valid.
	binary.LittleEndian.PutUint32(p[1028:], erofs.SuperblockChecksum(p, img.SB.BlkSzBits))
	bad := filepath.Join(t.TempDir(), "bad.erofs")
	os.WriteFile(bad, p, 0o644)

	sock := "unix:" + filepath.Join(t.TempDir(), "s")
	out, err := exec.Command(binPath, "serve", "--check", "full", "--blob", bad, "--blob", im.blobs[1], "--listen", sock).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "full check found") || !strings.Contains(string(out), "bad.erofs") {
		t.Fatalf("corrupt image: exit %v\n%s", err, out)
	}
	t.Logf("refused: %s", out)
	s := serve(t, append([]string{"--check", "full"}, im.blobArgs()...)...)
	compareTree(t, im.tree, fuseMount(t, s.sock))
}
