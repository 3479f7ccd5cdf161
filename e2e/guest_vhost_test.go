package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/internal/vmtest"
)

// vhostServer is `erofs-blockd serve --vhost-user-blk SOCK` on the host.
type vhostServer struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startVhost(t *testing.T, sock, serial string, args ...string) *vhostServer {
	t.Helper()
	s := &vhostServer{stderr: &syncBuffer{}, done: make(chan error, 1)}
	s.cmd = exec.Command(binPath, append([]string{"serve", "--vhost-user-blk", sock, "--vhost-queues", "2", "--vhost-serial", serial, "--log-level", "debug"}, args...)...)
	s.cmd.Stderr = s.stderr
	stdout, _ := s.cmd.StdoutPipe()
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	go func() { s.done <- s.cmd.Wait() }()
	select {
	case l, ok := <-lines:
		if !ok || !strings.HasPrefix(l, "serving vhost-user-blk ") {
			t.Fatalf("server did not start: %q\n%s", l, s.stderr)
		}
		t.Log(l)
	case <-time.After(60 * time.Second):
		t.Fatalf("server did not print its line\n%s", s.stderr)
	}
	go func() {
		for range lines {
		}
	}()
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *vhostServer) stop(t *testing.T) {
	if s.cmd.ProcessState != nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("vhost server exit: %v\n%s", err, s.stderr)
		}
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
		t.Errorf("vhost server did not stop on SIGINT\n%s", s.stderr)
	}
	s.done <- nil
}

// markerWriter signals once when the console shows marker.
type markerWriter struct {
	mu     sync.Mutex
	buf    []byte
	marker string
	seen   chan struct{}
	once   sync.Once
}

func (m *markerWriter) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.buf = append(m.buf, p...)
	if bytes.Contains(m.buf, []byte(m.marker)) {
		m.once.Do(func() { close(m.seen) })
	}
	if len(m.buf) > 4096 {
		m.buf = m.buf[len(m.buf)-1024:]
	}
	return len(p), nil
}

// TestGuestVhostUserBlk serves an aligned 3-blob composition (holes
// included) from the HOST with `serve --vhost-user-blk` (the native
// back-end, no qemu-storage-daemon) to a QEMU guest with two virtqueues
// over a shared memfd. The guest mounts /dev/vda and checks every md5 and
// symlink; then, with the file system still mounted, the host restarts the
// server (the chardev has reconnect=1): the guest sees the new server's
// serial through VIRTIO_BLK_T_GET_ID, drops its caches and checks every
// md5 again, read through the new server.
func TestGuestVhostUserBlk(t *testing.T) {
	vmtest.Require(t)
	ims := layouts(t, testtree.Options{Seed: 31, Files: 25, Symlinks: true, Hardlinks: true})
	im := ims[2]
	size := deviceSize(t, im)
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	first := startVhost(t, sock, "first", im.blobArgs()...)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v mode %v", err, fi.Mode())
	}

	script := fmt.Sprintf(`set -u
want=%d
d=vda
[ -e /sys/block/$d ] || { echo "no /dev/$d"; ls /sys/block; exit 1; }
bytes=$(( $(cat /sys/block/$d/size) * 512 ))
[ "$bytes" = "$want" ] || { echo "/dev/$d: $bytes bytes, want $want"; exit 1; }
echo "== /dev/$d: $bytes bytes, ro $(cat /sys/block/$d/ro), serial $(cat /sys/block/$d/serial), $(ls /sys/block/$d/mq | wc -l) queues, logical block $(cat /sys/block/$d/queue/logical_block_size)"
[ "$(cat /sys/block/$d/ro)" = 1 ] || { echo "not read-only"; exit 1; }
mount -t erofs -o ro /dev/$d /mnt || exit 1
check() {
  (cd /mnt && md5sum -c -s /want.md5) || { echo "$1: md5 mismatch"; exit 1; }
  echo "$1: md5 of $(wc -l < /want.md5) files match"
  while read -r p target; do
    [ "$(readlink "/mnt/$p")" = "$target" ] || { echo "$1: symlink $p differs"; exit 1; }
  done < /want.links
  echo "$1: $(wc -l < /want.links) symlink targets match"
}
check first-server
echo RESTART-NOW
while [ "$(cat /sys/block/$d/serial)" != second ]; do sleep 0.2; done
echo "== after the restart: serial $(cat /sys/block/$d/serial)"
echo 3 > /proc/sys/vm/drop_caches
check second-server
umount /mnt || exit 1
echo ALL-OK
`, size)

	restart := &markerWriter{marker: "RESTART-NOW", seen: make(chan struct{})}
	var console io.Writer = restart
	if os.Getenv(vmtest.EnvConsole) == "1" {
		console = io.MultiWriter(restart, os.Stderr)
	}
	var second *vhostServer
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		select {
		case <-restart.seen:
		case <-time.After(10 * time.Minute):
			return
		}
		first.stop(t)
		second = startVhost(t, sock, "second", im.blobArgs()...)
	}()
	const mem = 512
	res := vmtest.RunT(t, &vmtest.Guest{
		MemoryMiB: mem,
		Timeout:   8 * time.Minute,
		Console:   console,
		Data: map[string][]byte{
			"/want.md5":   []byte(md5List(t, im.tree)),
			"/want.links": []byte(linkList(t, im.tree)),
		},
		QEMUArgs: []string{
			"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", mem),
			"-numa", "node,memdev=mem",
			"-chardev", "socket,id=c0,path=" + sock + ",reconnect=1",
			"-device", "vhost-user-blk-pci,chardev=c0,num-queues=2",
		},
		Script: script,
	})
	select {
	case <-restarted:
	case <-time.After(2 * time.Minute):
		t.Fatal("restart goroutine did not finish")
	}
	logs := func() string {
		s := "first server:\n" + first.stderr.String()
		if second != nil {
			s += "\nsecond server:\n" + second.stderr.String()
		}
		return s
	}
	if !res.Passed || !strings.Contains(res.Log, "ALL-OK") {
		t.Fatalf("guest failed (exit %d)\n%s", res.ExitCode, logs())
	}
	if second == nil || !strings.Contains(second.stderr.String(), "vhost-user front-end connected") {
		t.Fatalf("the second server saw no front-end\n%s", logs())
	}
	for _, l := range strings.Split(res.Log, "\n") {
		if strings.HasPrefix(l, "==") || strings.Contains(l, "match") {
			t.Log(strings.TrimSpace(l))
		}
	}
	for _, l := range strings.Split(second.stderr.String(), "\n") {
		if strings.Contains(l, "front-end") || strings.Contains(l, "ring") {
			t.Log("second server:", strings.TrimSpace(l))
		}
	}
}
