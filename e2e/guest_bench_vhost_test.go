package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/internal/vmtest"
)

// TestGuestBenchVhost (EROFS_BLOCKD_BENCH_GUEST=1, scripts/bench-guest.sh
// with BENCH=vhost): fio 4 KiB random reads in the TCG guest against the
// same composed device as two vhost-user-blk disks: erofs-blockd's own
// back-end (serve --vhost-user-blk) and qemu-storage-daemon exporting
// erofs-blockd's NBD socket as vhost-user-blk (the proxy path used before).
// Both servers run on the host; each disk is measured twice, interleaved.
func TestGuestBenchVhost(t *testing.T) {
	if os.Getenv(envBench) != "1" {
		t.Skip(envBench + "=1 runs the guest fio benchmark (scripts/bench-guest.sh)")
	}
	vmtest.Require(t)
	need(t, "fio", "ldd", "mkfs.erofs", "qemu-storage-daemon")
	runtime := os.Getenv(envBenchRuntime)
	if runtime == "" {
		runtime = "10"
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.Mkdir(tree, 0o755)
	data := make([]byte, 64<<20)
	rand.NewChaCha8([32]byte{2}).Read(data)
	if err := os.WriteFile(filepath.Join(tree, "data"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	p, b := filepath.Join(dir, "p.erofs"), filepath.Join(dir, "data.blob")
	testtree.Mkfs(t, p, tree, "--blobdev="+b, "--chunksize=65536")
	fioImg := fioImage(t, dir)

	own := filepath.Join(dir, "own.sock")
	startVhost(t, own, "erofs-blockd", "--blob", p, "--blob", b)
	nbdSrv := serve(t, "--blob", p, "--blob", b)
	qsdSock := filepath.Join(dir, "qsd.sock")
	qsd := exec.Command("qemu-storage-daemon",
		"--blockdev", "driver=nbd,node-name=n0,server.type=unix,server.path="+nbdSrv.sock+",read-only=on",
		"--export", "type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path="+qsdSock+",writable=off,num-queues=2")
	var qerr syncBuffer
	qsd.Stderr = &qerr
	if err := qsd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qsd.Process.Kill(); qsd.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(qsdSock); err == nil {
			break
		}
		if i > 600 {
			t.Fatalf("qemu-storage-daemon did not create its socket\n%s", qerr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	fio := "/opt/fio/lib/ld-linux-x86-64.so.2 --library-path /opt/fio/lib /opt/fio/fio"
	fioArgs := fmt.Sprintf("--rw=randread --bs=4k --iodepth=32 --ioengine=libaio --direct=1 --numjobs=1 --time_based --runtime=%s --ramp_time=2 --group_reporting", runtime)
	order := ""
	if o := os.Getenv("EROFS_BLOCKD_BENCH_ORDER"); o != "" {
		order = "ORDER=\"" + o + "\"\n" // e.g. "qsd own"
	}
	script := order + `set -u
own=""; qsd=""; fiodev=""; mkdir -p /opt/fio
for s in /sys/block/vd*; do
  d=/dev/$(basename $s)
  if [ "$(cat $s/serial 2>/dev/null)" = erofs-blockd ]; then own=$d
  elif [ -z "$fiodev" ] && mount -t erofs -o ro $d /opt/fio 2>/dev/null && [ -e /opt/fio/fio ]; then fiodev=$d
  else umount /opt/fio 2>/dev/null; qsd=$d; fi
done
echo "== own $own, qemu-storage-daemon $qsd, fio on $fiodev"
[ -n "$own" ] && [ -n "$qsd" ] && [ -n "$fiodev" ] || { ls -l /sys/block; exit 1; }
` + fio + ` --version || exit 1
[ "$(md5sum < $own)" = "$(md5sum < $qsd)" ] || { echo "the two disks differ"; exit 1; }
for which in ${ORDER:-own qsd own qsd}; do
  eval dev=\$$which
  name=erofs-blockd; [ $which = qsd ] && name=qemu-storage-daemon
  ` + fio + ` --name=randread --filename=$dev ` + fioArgs + ` > /tmp/fio.out 2>&1 || { cat /tmp/fio.out; exit 1; }
  echo "FIO-RESULT $name $(sed -n 's/.*read: IOPS=\([^,]*\),.*/\1/p' /tmp/fio.out | head -1)"
done
echo "FIO-COMMAND fio --name=randread --filename=DEV ` + fioArgs + `"
echo ALL-OK
`
	const mem = 512
	res := vmtest.RunT(t, &vmtest.Guest{
		MemoryMiB: mem,
		Timeout:   10 * time.Minute,
		Disks:     []string{fioImg},
		QEMUArgs: []string{
			"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", mem),
			"-numa", "node,memdev=mem",
			"-chardev", "socket,id=c0,path=" + own,
			"-device", "vhost-user-blk-pci,chardev=c0,num-queues=2",
			"-chardev", "socket,id=c1,path=" + qsdSock,
			"-device", "vhost-user-blk-pci,chardev=c1,num-queues=2",
		},
		Script: script,
	})
	if !res.Passed || !strings.Contains(res.Log, "ALL-OK") {
		t.Fatalf("guest failed (exit %d)\n%s", res.ExitCode, qerr.String())
	}
	re := regexp.MustCompile(`(== own|FIO-RESULT|FIO-COMMAND)[^\n]*`)
	for _, m := range re.FindAllString(res.Log, -1) {
		t.Log(strings.TrimSpace(m))
	}
}
