package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/internal/vmtest"
)

// TestGuestServeUblk runs `erofs-blockd serve --ublk` inside a QEMU guest
// with Debian's 6.12 kernel: the server creates /dev/ublkbN through
// /dev/ublk-control and io_uring, `mount -t erofs` of it gives files whose
// md5s and symlink targets match the source, SIGTERM removes the device
// (/dev/ublkbN, /dev/ublkcN and /sys/block/ublkbN disappear) and the server
// exits 0. Two runs: Debian 1.5 --blobdev on virtio disks with --ublk (the
// driver picks N), and the aligned multi-blob layout with a positional
// /dev/ublkb3, one queue of depth 8, and /dev/nbd0 from the same server.
func TestGuestServeUblk(t *testing.T) {
	vmtest.Require(t)
	ims := layouts(t, testtree.Options{Seed: 29, Files: 25, Symlinks: true, Hardlinks: true})
	deb, aligned := ims[0], ims[2]
	bin := vmtest.BuildStatic(t, "github.com/erofs-blockd/erofs-blockd/cmd/erofs-blockd")
	files := map[string]string{"/bin/erofs-blockd": bin}
	var alignedArgs []string
	for i, b := range aligned.blobs {
		g := fmt.Sprintf("/img/%d", i)
		files[g] = b
		alignedArgs = append(alignedArgs, "--blob", g)
	}
	script := `set -u
check() { # $1 = label, $2 = number of attached devices, rest = serve args
  label=$1; want=$2; shift 2
  echo "== $label"
  erofs-blockd serve "$@" >/tmp/serve.out 2>/tmp/serve.err &
  pid=$!
  i=0; while [ "$(grep -c '^attached ' /tmp/serve.out 2>/dev/null)" != "$want" ]; do
    i=$((i+1)); [ $i -gt 300 ] && { echo "not attached"; cat /tmp/serve.out /tmp/serve.err; return 1; }
    kill -0 $pid 2>/dev/null || { echo "server died"; cat /tmp/serve.err; return 1; }
    sleep 0.1
  done
  cat /tmp/serve.out
  devs=$(sed -n 's/^attached \(\/dev\/[a-z0-9]*\) .*/\1/p' /tmp/serve.out)
  for dev in $devs; do
    b=${dev#/dev/}
    [ "$(cat /sys/block/$b/ro)" = 1 ] || { echo "$dev not read-only"; return 1; }
    mount -t erofs -o ro $dev /mnt || return 1
    (cd /mnt && md5sum -c -s /want.md5) || { echo "$dev: md5 mismatch"; umount /mnt; return 1; }
    echo "$dev: md5 of $(wc -l < /want.md5) files match"
    while read -r p target; do
      [ "$(readlink "/mnt/$p")" = "$target" ] || { echo "$dev: symlink $p differs"; umount /mnt; return 1; }
    done < /want.links
    echo "$dev: $(wc -l < /want.links) symlink targets match"
    umount /mnt || return 1
  done
  kill -TERM $pid; wait $pid; rc=$?
  echo "server exit status $rc"; cat /tmp/serve.err
  [ $rc = 0 ] || return 1
  for dev in $devs; do
    b=${dev#/dev/}
    case $b in
    ublkb*)
      n=${b#ublkb}
      for p in $dev /dev/ublkc$n /sys/block/$b; do
        [ -e $p ] && { echo "$p still exists"; return 1; }
      done
      echo "$dev removed" ;;
    nbd*)
      [ "$(cat /sys/block/$b/size)" = 0 ] || { echo "$dev size not back to 0"; return 1; }
      echo "$dev detached" ;;
    esac
  done
}
[ -e /dev/ublk-control ] || { echo "no /dev/ublk-control"; exit 1; }
check debian-blobdev 1 --ublk --blob /dev/vda --blob /dev/vdb || exit 1
check aligned-multiblob 2 --ublk-queues 1 --ublk-depth 8 --connections 1 ` + strings.Join(alignedArgs, " ") + ` /dev/ublkb3 /dev/nbd0 || exit 1
echo ALL-OK
`
	res := vmtest.RunT(t, &vmtest.Guest{
		Files: files,
		Data: map[string][]byte{
			"/want.md5":   []byte(md5List(t, deb.tree)),
			"/want.links": []byte(linkList(t, deb.tree)),
		},
		Disks:  []string{pad512(t, deb.blobs[0]), pad512(t, deb.blobs[1])},
		Script: script,
	})
	if !res.Passed || !strings.Contains(res.Log, "ALL-OK") {
		t.Fatalf("guest failed (exit %d)", res.ExitCode)
	}
	for _, l := range strings.Split(res.Log, "\n") {
		if strings.HasPrefix(l, "==") || strings.Contains(l, "match") || strings.Contains(l, "exit status") ||
			strings.HasPrefix(l, "attached") || strings.Contains(l, "removed") || strings.Contains(l, "detached") {
			t.Log(strings.TrimSpace(l))
		}
	}
}
