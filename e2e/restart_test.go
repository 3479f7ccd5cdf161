package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/internal/vmtest"
)

// TestGuestRestartReattach: inside a QEMU guest, `serve ... /dev/nbd0`
// (netlink, --dead-conn-timeout 60s) is mounted with EROFS and checked,
// then the server is killed with SIGKILL while the filesystem stays
// mounted. With the page cache dropped, a reader starts while no server
// runs (its I/O waits in the kernel); `serve --reattach` hands the device
// new connections (NBD_CMD_RECONFIGURE, same backend identifier); the
// waiting reader and a second full pass after another cache drop read every
// file correctly. SIGTERM then detaches cleanly.
func TestGuestRestartReattach(t *testing.T) {
	vmtest.Require(t)
	im := layouts(t, testtree.Options{Seed: 59, Files: 25, MaxSize: 200 << 10, Symlinks: true})[2]
	bin := vmtest.BuildStatic(t, "github.com/erofs-blockd/erofs-blockd/cmd/erofs-blockd")
	files := map[string]string{"/bin/erofs-blockd": bin}
	var args []string
	for i, b := range im.blobs {
		g := fmt.Sprintf("/img/%d", i)
		files[g] = b
		args = append(args, "--blob", g)
	}
	serveArgs := "--connections 2 --dead-conn-timeout 60s " + strings.Join(args, " ")
	script := `set -u
waitfor() { # $1 = word, $2 = output file, $3 = pid
  i=0; while ! grep -q "$1" "$2" 2>/dev/null; do
    i=$((i+1)); [ $i -gt 300 ] && { echo "no '$1'"; cat "$2" /tmp/*.err; return 1; }
    kill -0 $3 2>/dev/null || { echo "server died"; cat /tmp/*.err; return 1; }
    sleep 0.1
  done
}
erofs-blockd serve ` + serveArgs + ` /dev/nbd0 >/tmp/s1.out 2>/tmp/s1.err &
pid=$!
waitfor attached /tmp/s1.out $pid || exit 1
cat /tmp/s1.out; cat /sys/block/nbd0/backend 2>/dev/null && echo
mkdir -p /mnt && mount -t erofs -o ro /dev/nbd0 /mnt || exit 1
(cd /mnt && md5sum -c -s /want.md5) || { echo "md5 mismatch before the restart"; exit 1; }
echo "before restart: $(wc -l < /want.md5) files match"
kill -9 $pid; wait $pid 2>/dev/null
echo "server killed (SIGKILL); mounted: $(grep -c ' /mnt ' /proc/mounts)"
sync; echo 3 > /proc/sys/vm/drop_caches
# A reader while no server runs: its I/O waits for the reattach.
(cd /mnt && md5sum -c -s /want.md5 && echo "reader across the restart: OK" || echo "reader across the restart: FAILED") >/tmp/reader.out 2>&1 &
reader=$!
sleep 1
erofs-blockd serve --reattach ` + serveArgs + ` /dev/nbd0 >/tmp/s2.out 2>/tmp/s2.err &
pid=$!
waitfor reattached /tmp/s2.out $pid || exit 1
cat /tmp/s2.out
wait $reader; cat /tmp/reader.out
grep -q "reader across the restart: OK" /tmp/reader.out || exit 1
sync; echo 3 > /proc/sys/vm/drop_caches
(cd /mnt && md5sum -c -s /want.md5) || { echo "md5 mismatch after the restart"; exit 1; }
echo "after reattach: $(wc -l < /want.md5) files match"
umount /mnt || exit 1
kill -TERM $pid; wait $pid; rc=$?
echo "server exit status $rc"; cat /tmp/s2.err
[ $rc = 0 ] || exit 1
[ "$(cat /sys/block/nbd0/size)" = 0 ] || { echo "device size not back to 0"; exit 1; }
echo "detached: size 0"
echo ALL-OK
`
	res := vmtest.RunT(t, &vmtest.Guest{Files: files, Data: map[string][]byte{"/want.md5": []byte(md5List(t, im.tree))}, Script: script})
	if !res.Passed || !strings.Contains(res.Log, "ALL-OK") {
		t.Fatalf("guest failed (exit %d)", res.ExitCode)
	}
	for _, l := range strings.Split(res.Log, "\n") {
		if strings.Contains(l, "match") || strings.Contains(l, "attached") || strings.Contains(l, "killed") ||
			strings.Contains(l, "reader across") || strings.Contains(l, "exit status") {
			t.Log(strings.TrimSpace(l))
		}
	}
}
