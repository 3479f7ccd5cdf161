package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/internal/vmtest"
)

// TestGuestUblkRecovery: in the 6.12 guest, `erofs-blockd serve ...
// /dev/ublkb0` (UBLK_F_USER_RECOVERY + REISSUE), a mounted EROFS on it and
// three md5sum loops over its files (with drop_caches running, so they keep
// reading the device) and a loop of O_DIRECT reads of the whole device (so
// a request is in the server's hands at the kill: REISSUE must requeue it,
// an EIO would show as a wrong pass). Then twice in a row: kill -9 of the server; the
// device and the mount stay; an O_DIRECT read of the whole device waits
// (no server, no cache); in the first round a serve without --reattach is
// refused with "exists (left by pid P): use --reattach" and a --reattach
// whose block size differs is refused; `serve --reattach` takes the
// device over and the waiting read completes with the device's md5. At the
// end the readers stop with every pass right, a cold md5 check of every
// file passes, and SIGTERM removes the device (exit 0).
func TestGuestUblkRecovery(t *testing.T) {
	vmtest.Require(t)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.Mkdir(tree, 0o755)
	testtree.Build(t, tree, testtree.Options{Seed: 41, Files: 30, MaxSize: 256 << 10})
	p, b := filepath.Join(dir, "p.erofs"), filepath.Join(dir, "data.blob")
	testtree.Mkfs(t, p, tree, "--blobdev="+b, "--chunksize=4096")
	bin := vmtest.BuildStatic(t, "github.com/erofs-blockd/erofs-blockd/cmd/erofs-blockd")

	script := `set -u
B="--blob /dev/vda --blob /dev/vdb"
# start LABEL ARGS...: serve to /dev/ublkb0 in the background, wait for its line; sets pid.
start() {
  label=$1; shift
  erofs-blockd serve $B "$@" /dev/ublkb0 >/tmp/$label.out 2>/tmp/$label.err &
  pid=$!
  i=0; while ! grep -q 'attached /dev/ublkb0' /tmp/$label.out 2>/dev/null; do
    i=$((i+1)); [ $i -gt 600 ] && { echo "$label: not attached"; cat /tmp/$label.out /tmp/$label.err; return 1; }
    kill -0 $pid 2>/dev/null || { echo "$label: server died"; cat /tmp/$label.err; return 1; }
    sleep 0.1
  done
  echo "$label: $(cat /tmp/$label.out) (pid $pid)"
}
# refused LABEL WANT ARGS...: serve must exit non-zero with WANT on stderr.
refused() {
  label=$1; want=$2; shift 2
  erofs-blockd serve $B "$@" /dev/ublkb0 >/tmp/$label.out 2>/tmp/$label.err &
  rp=$!
  i=0; while kill -0 $rp 2>/dev/null; do
    i=$((i+1)); [ $i -gt 600 ] && { echo "$label: still running"; kill -TERM $rp; wait $rp; return 1; }
    sleep 0.1
  done
  wait $rp; rc=$?
  [ $rc != 0 ] || { echo "$label: exit 0"; return 1; }
  grep -qF -- "$want" /tmp/$label.err || { echo "$label: stderr lacks: $want"; cat /tmp/$label.err; return 1; }
  echo "$label: refused (exit $rc): $(grep -F -- "$want" /tmp/$label.err)"
}
reader() {
  n=0
  while [ ! -e /tmp/stop ]; do
    (cd /mnt && md5sum -c -s /want.md5) || echo "reader $1: pass $n wrong" >> /tmp/bad
    n=$((n+1)); echo $n > /tmp/passes.$1
  done
}
# O_DIRECT reads of the whole device, back to back: one is almost always in
# the server's hands when it is killed (requeued by REISSUE, else EIO).
direct() {
  n=0
  while [ ! -e /tmp/stop ]; do
    [ "$(dd if=/dev/ublkb0 bs=65536 iflag=direct 2>/dev/null | md5sum)" = "$(cat /tmp/dev.md5)" ] || echo "direct reader: pass $n wrong" >> /tmp/bad
    n=$((n+1)); echo $n > /tmp/passes.d
  done
}
dropper() { while [ ! -e /tmp/stop ]; do echo 3 > /proc/sys/vm/drop_caches; sleep 0.3; done; }
passes() { cat /tmp/passes.1 /tmp/passes.2 /tmp/passes.3 /tmp/passes.d 2>/dev/null | tr '\n' ' '; }

# round N [refusals]: kill -9, check what stays and waits, reattach.
round() {
  n=$1
  before=$(passes)
  kill -9 $pid; wait $pid 2>/dev/null
  old=$pid
  echo "round $n: killed server pid $old (reader passes: $before)"
  [ -b /dev/ublkb0 ] || { echo "round $n: /dev/ublkb0 gone"; return 1; }
  grep -q '^/dev/ublkb0 /mnt erofs ' /proc/mounts || { echo "round $n: mount gone"; return 1; }
  dd if=/dev/ublkb0 bs=65536 iflag=direct 2>/dev/null | md5sum > /tmp/probe.$n &
  probe=$!
  sleep 1
  # dd's pipeline cannot finish without a server: the O_DIRECT reads wait.
  [ -s /tmp/probe.$n ] && { echo "round $n: device read finished with no server: $(cat /tmp/probe.$n)"; return 1; }
  echo "round $n: O_DIRECT read of /dev/ublkb0 waits with no server"
  if [ "${2:-}" = refusals ]; then
    refused "round$n-plain" "/dev/ublkb0 exists (left by pid $old): use --reattach to recover it, or remove it" || return 1
    refused "round$n-blocksize" "its logical block size is 4096, this composition's 512" --reattach --block-size 512 || return 1
    [ -s /tmp/probe.$n ] && { echo "round $n: device read finished during the refusals"; return 1; }
  fi
  start "round$n-reattach" --reattach || return 1
  grep -q '^reattached /dev/ublkb0 ' /tmp/round$n-reattach.out || { echo "round $n: not a reattach"; return 1; }
  wait $probe
  [ "$(cat /tmp/probe.$n)" = "$(cat /tmp/dev.md5)" ] || { echo "round $n: device md5 $(cat /tmp/probe.$n), want $(cat /tmp/dev.md5)"; return 1; }
  echo "round $n: the waiting device read completed, md5 right"
  i=0; while [ "$(passes)" = "$before" ]; do
    i=$((i+1)); [ $i -gt 600 ] && { echo "round $n: readers make no progress"; return 1; }
    sleep 0.1
  done
  echo "round $n: readers moving again (passes: $(passes))"
}

main() {
  [ -e /dev/ublk-control ] || { echo "no /dev/ublk-control"; return 1; }
  start first || return 1
  dd if=/dev/ublkb0 bs=65536 iflag=direct 2>/dev/null | md5sum > /tmp/dev.md5
  mount -t erofs -o ro /dev/ublkb0 /mnt || return 1
  (cd /mnt && md5sum -c -s /want.md5) || { echo "md5 mismatch before any kill"; return 1; }
  echo "mounted: $(wc -l < /want.md5) files match"
  reader 1 & r1=$!
  reader 2 & r2=$!
  reader 3 & r3=$!
  direct & rd=$!
  dropper & dp=$!
  i=0; while [ ! -e /tmp/passes.1 ] || [ ! -e /tmp/passes.2 ] || [ ! -e /tmp/passes.3 ] || [ ! -e /tmp/passes.d ]; do
    i=$((i+1)); [ $i -gt 600 ] && { echo "readers did not finish a pass"; return 1; }
    sleep 0.1
  done
  round 1 refusals || return 1
  round 2 || return 1
  touch /tmp/stop
  wait $r1 $r2 $r3 $rd $dp
  [ -e /tmp/bad ] && { echo "reader failures:"; cat /tmp/bad; return 1; }
  echo "readers finished: passes $(passes), every one right"
  echo 3 > /proc/sys/vm/drop_caches
  (cd /mnt && md5sum -c -s /want.md5) || { echo "cold md5 check failed"; return 1; }
  echo "after drop_caches: md5 of $(wc -l < /want.md5) files match"
  umount /mnt || return 1
  kill -TERM $pid; wait $pid; rc=$?
  echo "server exit status $rc"
  [ $rc = 0 ] || { cat /tmp/round2-reattach.err; return 1; }
  for p in /dev/ublkb0 /dev/ublkc0 /sys/block/ublkb0; do
    [ -e $p ] && { echo "$p still exists"; return 1; }
  done
  echo "/dev/ublkb0 removed"
}
main || { dmesg | tail -20; exit 1; }
echo ALL-OK
`
	res := vmtest.RunT(t, &vmtest.Guest{
		Files:   map[string]string{"/bin/erofs-blockd": bin},
		Data:    map[string][]byte{"/want.md5": []byte(md5List(t, tree))},
		Disks:   []string{pad512(t, p), pad512(t, b)},
		Script:  script,
		Timeout: 4 * time.Minute,
	})
	for _, l := range strings.Split(res.Log, "\n") {
		l = strings.TrimSpace(l)
		for _, k := range []string{"round", "first:", "mounted", "readers", "after drop_caches", "server exit status", "/dev/ublkb0 removed", "reader ", "direct reader", "ALL-OK"} {
			if strings.HasPrefix(l, k) {
				t.Log(l)
				break
			}
		}
	}
	if !res.Passed || !strings.Contains(res.Log, "ALL-OK") {
		t.Fatalf("guest failed (exit %d)", res.ExitCode)
	}
}
