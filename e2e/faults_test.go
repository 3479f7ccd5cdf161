package e2e

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// copyBlobs copies an image's files so a test may damage them.
func copyBlobs(t *testing.T, im image) image {
	t.Helper()
	dir := t.TempDir()
	out := im
	out.blobs = nil
	for i, b := range im.blobs {
		data, err := os.ReadFile(b)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(b))
		if i > 0 && p == out.blobs[0] {
			p += ".1"
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		out.blobs = append(out.blobs, p)
	}
	return out
}

// blobStart returns the byte offset of extra device 1 in the composed image.
func blobStart(t *testing.T, composed []byte) int64 {
	t.Helper()
	sb, err := erofs.ReadSuperblock(bytes.NewReader(composed), int64(len(composed)))
	if err != nil || len(sb.Devices) == 0 {
		t.Fatalf("composed superblock: %v", err)
	}
	return int64(sb.Devices[0].UniAddr) * sb.BlockSize()
}

func connectRaw(t *testing.T, sock string) *rawClient {
	t.Helper()
	c, err := dialRaw("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	c.c.SetDeadline(time.Now().Add(60 * time.Second))
	if err := c.greet(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.goExport(""); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestFaultTruncatedAndReplacedBlob: a blob truncated while served gives
// EIO for the reads that reach the missing part (every time, never zeros),
// the rest of the device still reads correctly, and the server logs one
// line for the blob however many reads fail. A file renamed over a blob's
// path does not change what is served: the server reads the file it
// opened and checked at composition.
func TestFaultTruncatedAndReplacedBlob(t *testing.T) {
	im := copyBlobs(t, layouts(t, testtree.Options{Seed: 31, Files: 12, MaxSize: 300 << 10})[0])
	want, err := os.ReadFile(composeFile(t, im))
	if err != nil {
		t.Fatal(err)
	}
	start := blobStart(t, want)
	srv := serve(t, im.blobArgs()...)
	c := connectRaw(t, srv.sock)
	st, _ := os.Stat(im.blobs[1])
	bsize := st.Size()
	half := (bsize / 2) &^ 4095
	tail := uint64(start + half + 4096)

	// Replace the primary by rename: still the original bytes.
	junk := filepath.Join(filepath.Dir(im.blobs[0]), "junk")
	os.WriteFile(junk, bytes.Repeat([]byte{0xEE}, len(want)), 0o644)
	if err := os.Rename(junk, im.blobs[0]); err != nil {
		t.Fatal(err)
	}
	if b, errno, err := c.read(0, 16384); err != nil || errno != 0 || !bytes.Equal(b, want[:16384]) {
		t.Fatalf("primary after a rename over it: errno %d err %v", errno, err)
	}

	// Truncate the blob in place.
	if err := os.Truncate(im.blobs[1], half); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		b, errno, err := c.read(tail+uint64(i)*512, 4096)
		if err != nil || errno != errIO || b != nil {
			t.Fatalf("read %d of the truncated part: errno %d err %v (data returned: %v)", i, errno, err, b != nil)
		}
	}
	if b, errno, err := c.read(uint64(start), 8192); err != nil || errno != 0 || !bytes.Equal(b, want[start:start+8192]) {
		t.Fatalf("read of the blob's remaining part: errno %d err %v", errno, err)
	}
	if b, errno, err := c.read(0, 4096); err != nil || errno != 0 || !bytes.Equal(b, want[:4096]) {
		t.Fatalf("primary read after the truncation: errno %d err %v", errno, err)
	}
	srv.stop(t)
	logs := srv.stderr.String()
	if n := strings.Count(logs, "blob read failed"); n != 1 {
		t.Fatalf("%d 'blob read failed' log lines for 50 failed reads, want 1:\n%s", n, logs)
	}
	if n := strings.Count(logs, "backend read failed"); n > 1 {
		t.Fatalf("%d 'backend read failed' log lines for 50 failed reads, want at most 1:\n%s", n, logs)
	}
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "failed") {
			t.Log(l)
		}
	}
}

// TestFaultDiskEIO: a blob whose storage returns EIO (nbdkit's error filter
// behind nbdfuse, switched on after composition by a trigger file) gives EIO
// replies for the affected reads; once the storage recovers, the same reads
// return the right bytes.
func TestFaultDiskEIO(t *testing.T) {
	need(t, "nbdkit", "nbdfuse")
	im := layouts(t, testtree.Options{Seed: 37, Files: 12, MaxSize: 300 << 10})[0]
	want, err := os.ReadFile(composeFile(t, im))
	if err != nil {
		t.Fatal(err)
	}
	start := blobStart(t, want)
	dir := t.TempDir()
	ksock, trigger, fdir := filepath.Join(dir, "k.sock"), filepath.Join(dir, "fail"), filepath.Join(dir, "fuse")
	os.Mkdir(fdir, 0o755)
	kit := exec.Command("nbdkit", "-f", "-U", ksock, "--filter=error", "file", im.blobs[1],
		"error-pread=EIO", "error-pread-rate=100%", "error-pread-file="+trigger)
	var kerr bytes.Buffer
	kit.Stderr = &kerr
	if err := kit.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kit.Process.Kill(); kit.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(ksock); err == nil {
			break
		}
		if i > 200 {
			t.Fatalf("nbdkit did not start: %s", kerr.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
	fuse := exec.Command("nbdfuse", "-r", fdir, "--unix", ksock)
	if err := fuse.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("umount", fdir).Run(); fuse.Wait() })
	blob := filepath.Join(fdir, "nbd")
	for i := 0; ; i++ {
		if st, err := os.Stat(blob); err == nil && st.Size() > 0 {
			break
		}
		if i > 400 {
			t.Fatal("nbdfuse did not expose the blob")
		}
		time.Sleep(25 * time.Millisecond)
	}
	srv := serve(t, "--blob", im.blobs[0], "--blob", blob)
	c := connectRaw(t, srv.sock)
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Offsets far from what composition read, and the FUSE file's page
	// cache dropped, so the reads reach the failing storage.
	bst, _ := os.Stat(blob)
	off := uint64(start+bst.Size()/2) &^ 4095
	if f, err := os.Open(blob); err == nil {
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
	}
	for i := 0; i < 5; i++ {
		b, errno, err := c.read(off+uint64(i)*8192, 4096)
		if err != nil || errno != errIO || b != nil {
			t.Fatalf("read from failing storage: errno %d err %v", errno, err)
		}
	}
	if b, errno, err := c.read(0, 4096); err != nil || errno != 0 || !bytes.Equal(b, want[:4096]) {
		t.Fatalf("primary read while the blob's storage fails: errno %d err %v", errno, err)
	}
	os.Remove(trigger)
	if b, errno, err := c.read(off, 4096); err != nil || errno != 0 || !bytes.Equal(b, want[off:off+4096]) {
		t.Fatalf("read after the storage recovered: errno %d err %v", errno, err)
	}
	srv.stop(t)
	if n := strings.Count(srv.stderr.String(), "blob read failed"); n != 1 {
		t.Fatalf("%d 'blob read failed' lines, want 1:\n%s", n, srv.stderr)
	}
}

// TestShutdownUnderLoad: SIGTERM while 8 clients pipeline reads. The server
// exits 0 within 5 s; every reply a client received is complete and
// correct, and each connection ends at a reply boundary (no torn reply).
func TestShutdownUnderLoad(t *testing.T) {
	im := layouts(t, testtree.Options{Seed: 41, Files: 20, MaxSize: 256 << 10})[1]
	want, err := os.ReadFile(composeFile(t, im))
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, im.blobArgs()...)
	var replies, torn, wrong atomic.Int64
	var wg sync.WaitGroup
	for k := 0; k < 8; k++ {
		c := connectRaw(t, srv.sock)
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(k)))
			var mu sync.Mutex
			pending := map[uint64][2]uint64{}
			sem := make(chan struct{}, 16)
			stopW := make(chan struct{})
			go func() { // writer: keep 16 requests outstanding
				for cookie := uint64(0); ; cookie++ {
					select {
					case sem <- struct{}{}:
					case <-stopW:
						return
					}
					n := uint64(4096 * (1 + rng.Intn(16)))
					off := uint64(rng.Int63n(int64(len(want))-int64(n))) &^ 4095
					mu.Lock()
					pending[cookie] = [2]uint64{off, n}
					mu.Unlock()
					if c.req(cmdRead, cookie, off, uint32(n)) != nil {
						return
					}
				}
			}()
			defer close(stopW)
			for {
				errno, cookie, err := c.simple()
				if err != nil {
					if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
						torn.Add(1)
						t.Logf("client %d: %v", k, err)
					}
					return
				}
				mu.Lock()
				r, ok := pending[cookie]
				delete(pending, cookie)
				mu.Unlock()
				if !ok || errno != 0 {
					wrong.Add(1)
					return
				}
				b := make([]byte, r[1])
				if _, err := io.ReadFull(c.br, b); err != nil {
					torn.Add(1)
					return
				}
				if !bytes.Equal(b, want[r[0]:r[0]+r[1]]) {
					wrong.Add(1)
				}
				replies.Add(1)
				<-sem
			}
		}(k)
	}
	time.Sleep(time.Second)
	before := replies.Load()
	t0 := time.Now()
	srv.cmd.Process.Signal(syscall.SIGTERM)
	var exitErr error
	select {
	case exitErr = <-srv.done:
	case <-time.After(10 * time.Second):
		srv.cmd.Process.Kill()
		t.Fatalf("server still running 10 s after SIGTERM\n%s", srv.stderr)
	}
	took := time.Since(t0)
	srv.cmd.ProcessState = &os.ProcessState{} // stopped here, not in cleanup
	wg.Wait()
	t.Logf("SIGTERM after %d replies; exit after %v (%v); %d replies in total, %d torn, %d wrong",
		before, took.Round(time.Millisecond), exitErr, replies.Load(), torn.Load(), wrong.Load())
	if exitErr != nil || took > 5*time.Second {
		t.Fatalf("exit %v after %v, want status 0 within 5 s\n%s", exitErr, took, srv.stderr)
	}
	if torn.Load() != 0 || wrong.Load() != 0 || before == 0 {
		t.Fatalf("%d torn and %d wrong replies (%d before the signal)", torn.Load(), wrong.Load(), before)
	}
}
