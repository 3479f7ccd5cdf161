package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/internal/vmtest"
)

// TestGuestServeDevNBD runs the real server inside a QEMU guest with Debian's
// 6.12 kernel: `erofs-blockd serve --blob ... /dev/nbd0` attaches the kernel
// client, `mount -t erofs /dev/nbd0` mounts it, every file's md5 and every
// symlink target match the source, then SIGTERM detaches (size back to 0) and
// the server exits 0. Two layouts: Debian 1.5 --blobdev (zero slot, blobs on
// virtio disks, so block devices as blobs) and aligned multi-blob with holes
// (files in the initramfs).
func TestGuestServeDevNBD(t *testing.T) {
	vmtest.Require(t)
	ims := layouts(t, testtree.Options{Seed: 17, Files: 25, Symlinks: true, Hardlinks: true})
	deb, aligned := ims[0], ims[2]
	bin := vmtest.BuildStatic(t, "github.com/erofs-blockd/erofs-blockd/cmd/erofs-blockd")

	data := map[string][]byte{}
	files := map[string]string{"/bin/erofs-blockd": bin}
	var disks []string
	// Layout 1 on virtio disks: /dev/vda (primary), /dev/vdb (blob).
	disks = append(disks, pad512(t, deb.blobs[0]), pad512(t, deb.blobs[1]))
	// Layout 2 in the initramfs.
	var alignedArgs []string
	for i, b := range aligned.blobs {
		g := fmt.Sprintf("/img/%d", i)
		files[g] = b
		alignedArgs = append(alignedArgs, "--blob", g)
	}
	data["/want.md5"] = []byte(md5List(t, deb.tree))
	data["/want.links"] = []byte(linkList(t, deb.tree))

	script := `set -u
check() { # $1 = label, rest = serve args
  label=$1; shift
  echo "== $label"
  out=/tmp/serve-$label.out; err=/tmp/serve-$label.err
  rm -f "$out" "$err"
  erofs-blockd serve --connections 2 "$@" /dev/nbd0 >"$out" 2>"$err" &
  pid=$!
  i=0; while ! grep -q attached "$out" 2>/dev/null; do
    i=$((i+1)); [ $i -gt 600 ] && { echo "not attached"; cat "$err"; return 1; }
    kill -0 $pid 2>/dev/null || { echo "server died"; cat "$err"; return 1; }
    sleep 0.1
  done
  cat "$out"
  echo "size $(cat /sys/block/nbd0/size) sectors, ro $(cat /sys/block/nbd0/ro)"
  [ "$(cat /sys/block/nbd0/ro)" = 1 ] || { echo "not read-only"; return 1; }
  mkdir -p /mnt && mount -t erofs -o ro /dev/nbd0 /mnt || return 1
  (cd /mnt && md5sum -c -s /want.md5) || { echo "md5 mismatch"; umount /mnt; return 1; }
  echo "md5: $(wc -l < /want.md5) files match"
  while read -r p target; do
    [ "$(readlink "/mnt/$p")" = "$target" ] || { echo "symlink $p differs"; umount /mnt; return 1; }
  done < /want.links
  echo "symlinks: $(wc -l < /want.links) targets match"
  umount /mnt || return 1
  kill -TERM $pid; wait $pid; rc=$?
  echo "server exit status $rc"; cat "$err"
  [ $rc = 0 ] || return 1
  [ "$(cat /sys/block/nbd0/size)" = 0 ] || { echo "device size not back to 0"; return 1; }
  echo "detached: size 0"
}
check debian-blobdev --blob /dev/vda --blob /dev/vdb || exit 1
check aligned-multiblob ` + strings.Join(alignedArgs, " ") + ` || exit 1
echo ALL-OK
`
	res := vmtest.RunT(t, &vmtest.Guest{Files: files, Data: data, Disks: disks, Script: script})
	if !res.Passed || !strings.Contains(res.Log, "ALL-OK") {
		t.Fatalf("guest failed (exit %d)", res.ExitCode)
	}
	for _, l := range strings.Split(res.Log, "\n") {
		if strings.HasPrefix(l, "==") || strings.Contains(l, "match") || strings.Contains(l, "exit status") || strings.Contains(l, "attached") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

// pad512 copies f to a file whose size is a multiple of 512 (QEMU raw
// disks are sized in sectors); mkfs.erofs output already is, but be safe.
func pad512(t *testing.T, f string) string {
	st, err := os.Stat(f)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size()%512 == 0 {
		return f
	}
	out := filepath.Join(t.TempDir(), filepath.Base(f))
	b, _ := os.ReadFile(f)
	b = append(b, make([]byte, 512-len(b)%512)...)
	os.WriteFile(out, b, 0o644)
	return out
}

func md5List(t *testing.T, tree string) string {
	out, err := exec.Command("sh", "-c", "cd "+tree+" && find . -type f -print0 | sort -z | xargs -0 md5sum").Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func linkList(t *testing.T, tree string) string {
	var b strings.Builder
	filepath.Walk(tree, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			if !strings.ContainsAny(target, " \n") {
				rel, _ := filepath.Rel(tree, p)
				fmt.Fprintf(&b, "%s %s\n", rel, target)
			}
		}
		return nil
	})
	return b.String()
}
