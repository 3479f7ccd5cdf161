package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/internal/vmtest"
)

// TestGuestTarLayersDevNBD: an index merged over a tar+gzip and a
// tar+zstd layer (512-byte blocks) served to /dev/nbd0 in the 6.12 guest
// with the layers as they are (`gzip:` / `zstd:` blobs; the guest builds
// the gzip index itself). The device's logical block size follows the
// image (512), the mount shows the upper layer's whiteout and override,
// and every md5 matches the layers extracted in order.
func TestGuestTarLayersDevNBD(t *testing.T) {
	vmtest.Require(t)
	need(t, "tar", "gzip", "zstd")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.Mkdir(tree, 0o755)
	testtree.Build(t, tree, testtree.Options{Seed: 23, Files: 30, Symlinks: true, Hardlinks: true})
	var victim string
	filepath.Walk(tree, func(p string, fi os.FileInfo, err error) error {
		if err == nil && victim == "" && fi.Mode().IsRegular() && fi.Size() > 0 {
			victim, _ = filepath.Rel(tree, p)
		}
		return nil
	})
	if victim == "" {
		t.Fatal("no regular file in the tree")
	}
	up := filepath.Join(dir, "up")
	os.MkdirAll(filepath.Join(up, filepath.Dir(victim)), 0o755)
	os.WriteFile(filepath.Join(up, filepath.Dir(victim), ".wh."+filepath.Base(victim)), nil, 0o644)
	os.WriteFile(filepath.Join(up, "added-by-layer2"), []byte(strings.Repeat("layer two\n", 999)), 0o644)
	l1, l2 := filepath.Join(dir, "l1.tar"), filepath.Join(dir, "l2.tar")
	run(t, "tar", "--format=gnu", "--numeric-owner", "-C", tree, "-cf", l1, ".")
	run(t, "tar", "--format=pax", "--numeric-owner", "-C", up, "-cf", l2, ".")
	run(t, "gzip", "-k", l1)
	run(t, "zstd", "-q", "-k", l2)
	idx := filepath.Join(dir, "idx.erofs")
	run(t, binPath, "merge", "-q", "-o", idx, l1+".gz", l2+".zst")

	// The reference: the tree with layer 2 applied.
	ref := filepath.Join(dir, "ref")
	if out, err := exec.Command("cp", "-a", tree, ref).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	os.Remove(filepath.Join(ref, victim))
	os.WriteFile(filepath.Join(ref, "added-by-layer2"), []byte(strings.Repeat("layer two\n", 999)), 0o644)

	bin := vmtest.BuildStatic(t, "github.com/erofs-blockd/erofs-blockd/cmd/erofs-blockd")
	files := map[string]string{"/bin/erofs-blockd": bin, "/img/idx": idx, "/img/l1.tar.gz": l1 + ".gz", "/img/l2.tar.zst": l2 + ".zst"}
	data := map[string][]byte{
		"/want.md5":   []byte(md5List(t, ref)),
		"/want.links": []byte(linkList(t, ref)),
		"/victim":     []byte(victim + "\n"),
	}
	script := `set -u
erofs-blockd serve --connections 2 --blob /img/idx --blob gzip:/img/l1.tar.gz --blob zstd:/img/l2.tar.zst /dev/nbd0 >/tmp/out 2>/tmp/err &
pid=$!
i=0; while ! grep -q attached /tmp/out 2>/dev/null; do
  i=$((i+1)); [ $i -gt 600 ] && { echo "not attached"; cat /tmp/err; exit 1; }
  kill -0 $pid 2>/dev/null || { echo "server died"; cat /tmp/err; exit 1; }
  sleep 0.1
done
cat /tmp/out
echo "logical block size $(cat /sys/block/nbd0/queue/logical_block_size)"
[ "$(cat /sys/block/nbd0/queue/logical_block_size)" = 512 ] || { echo "block size is not the image's"; exit 1; }
mkdir -p /mnt && mount -t erofs -o ro /dev/nbd0 /mnt || exit 1
(cd /mnt && md5sum -c -s /want.md5) || { echo "md5 mismatch"; exit 1; }
echo "md5: $(wc -l < /want.md5) files match"
while read -r p target; do
  [ "$(readlink "/mnt/$p")" = "$target" ] || { echo "symlink $p differs"; exit 1; }
done < /want.links
[ -e "/mnt/$(cat /victim)" ] && { echo "whiteout not applied"; exit 1; }
[ "$(find /mnt -type f | wc -l)" = "$(wc -l < /want.md5)" ] || { echo "file count differs"; exit 1; }
echo "whiteout applied, symlinks match"
umount /mnt || exit 1
kill -TERM $pid; wait $pid; rc=$?
echo "server exit status $rc"
[ $rc = 0 ] || { cat /tmp/err; exit 1; }
echo ALL-OK
`
	res := vmtest.RunT(t, &vmtest.Guest{Files: files, Data: data, Script: script})
	if !res.Passed || !strings.Contains(res.Log, "ALL-OK") {
		t.Fatalf("guest failed (exit %d)", res.ExitCode)
	}
	for _, l := range strings.Split(res.Log, "\n") {
		if strings.Contains(l, "match") || strings.Contains(l, "block size") || strings.Contains(l, "whiteout") {
			t.Log(strings.TrimSpace(l))
		}
	}
}
