package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/internal/vmtest"
)

// TestGuestVMPassthrough serves composed multi-blob images from the HOST
// and hands them to a QEMU guest (Debian's 6.12 kernel) two ways in one
// boot:
//   - QEMU itself as the NBD client: -drive file=nbd+unix:///NAME?socket=...,if=virtio
//     (contiguous 3-blob layout);
//   - a vhost-user-blk proxy: qemu-storage-daemon (NBD blockdev -> vhost-user-blk
//     export) and -device vhost-user-blk-pci with a shared memfd memory backend
//     (aligned 3-blob layout with holes).
//
// Inside the guest both virtio disks are identified by size, mounted with
// `mount -t erofs -o ro`, and every file's md5 and symlink target is
// compared with the source tree.
func TestGuestVMPassthrough(t *testing.T) {
	vmtest.Require(t)
	need(t, "qemu-storage-daemon")
	ims := layouts(t, testtree.Options{Seed: 23, Files: 25, Symlinks: true, Hardlinks: true})
	contiguous, aligned := ims[1], ims[2]

	direct := serve(t, append([]string{"--name", "direct"}, contiguous.blobArgs()...)...)
	viaVhost := serve(t, append([]string{"--name", "vhost"}, aligned.blobArgs()...)...)
	if !strings.HasPrefix(direct.uri, "nbd+unix:///direct?socket=") {
		t.Fatalf("unexpected URI %q", direct.uri)
	}
	directSize, vhostSize := deviceSize(t, contiguous), deviceSize(t, aligned)
	if directSize == vhostSize {
		t.Fatalf("both layouts have %d bytes: the guest could not tell the disks apart", directSize)
	}

	vh := filepath.Join(t.TempDir(), "vhost.sock")
	qsd := exec.Command("qemu-storage-daemon",
		"--blockdev", "driver=nbd,node-name=n0,server.type=unix,server.path="+viaVhost.sock+",export=vhost,read-only=on",
		"--export", "type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path="+vh+",writable=off")
	var qsdErr bytes.Buffer
	qsd.Stdout, qsd.Stderr = &qsdErr, &qsdErr
	if err := qsd.Start(); err != nil {
		t.Fatal(err)
	}
	qsdDone := make(chan error, 1)
	go func() { qsdDone <- qsd.Wait() }()
	t.Cleanup(func() {
		qsd.Process.Signal(os.Interrupt)
		select {
		case <-qsdDone:
		case <-time.After(10 * time.Second):
			qsd.Process.Kill()
			<-qsdDone
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := os.Stat(vh); err == nil {
			break
		}
		select {
		case err := <-qsdDone:
			t.Fatalf("qemu-storage-daemon exited: %v\n%s", err, qsdErr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-storage-daemon did not create %s\n%s", vh, qsdErr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	const mem = 1024
	script := fmt.Sprintf(`set -u
want_direct=%d want_vhost=%d
seen=""
for d in vda vdb; do
  [ -e /sys/block/$d ] || { echo "no /dev/$d"; ls /sys/block; exit 1; }
  bytes=$(( $(cat /sys/block/$d/size) * 512 ))
  case $bytes in
    $want_direct) kind=qemu-nbd-client ;;
    $want_vhost) kind=vhost-user-blk ;;
    *) echo "/dev/$d: unexpected size $bytes"; exit 1 ;;
  esac
  case " $seen " in *" $kind "*) echo "two disks of kind $kind"; exit 1 ;; esac
  seen="$seen $kind"
  echo "== /dev/$d: $kind, $bytes bytes, ro $(cat /sys/block/$d/ro)"
  mount -t erofs -o ro /dev/$d /mnt || exit 1
  (cd /mnt && md5sum -c -s /want.md5) || { echo "$kind: md5 mismatch"; umount /mnt; exit 1; }
  echo "$kind: md5 of $(wc -l < /want.md5) files match"
  while read -r p target; do
    [ "$(readlink "/mnt/$p")" = "$target" ] || { echo "$kind: symlink $p differs"; umount /mnt; exit 1; }
  done < /want.links
  echo "$kind: $(wc -l < /want.links) symlink targets match"
  umount /mnt || exit 1
done
echo ALL-OK
`, directSize, vhostSize)
	res := vmtest.RunT(t, &vmtest.Guest{
		MemoryMiB: mem,
		Data: map[string][]byte{
			"/want.md5":   []byte(md5List(t, contiguous.tree)),
			"/want.links": []byte(linkList(t, contiguous.tree)),
		},
		QEMUArgs: []string{
			"-drive", "file=" + direct.uri + ",format=raw,if=virtio,readonly=on",
			"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", mem),
			"-numa", "node,memdev=mem",
			"-chardev", "socket,id=c0,path=" + vh,
			"-device", "vhost-user-blk-pci,chardev=c0,num-queues=1",
		},
		Script: script,
	})
	if !res.Passed || !strings.Contains(res.Log, "ALL-OK") {
		t.Fatalf("guest failed (exit %d)\nqemu-storage-daemon:\n%s", res.ExitCode, qsdErr.String())
	}
	for _, l := range strings.Split(res.Log, "\n") {
		if strings.HasPrefix(l, "==") || strings.Contains(l, "match") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

// deviceSize is the size of the composed device of im.
func deviceSize(t *testing.T, im image) int64 {
	t.Helper()
	st, err := os.Stat(composeFile(t, im))
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
