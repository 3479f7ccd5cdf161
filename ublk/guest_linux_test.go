package ublk

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/internal/vmtest"
)

// TestGuestUblk runs this package's TestKernel* tests inside a QEMU guest
// with Debian's 6.12 kernel (internal/vmtest), which has ublk_drv.
func TestGuestUblk(t *testing.T) {
	vmtest.Require(t)
	bin := vmtest.BuildTest(t, "github.com/erofs-blockd/erofs-blockd/ublk")
	res := vmtest.RunT(t, &vmtest.Guest{
		Files:   map[string]string{"/ublk.test": bin},
		Script:  "/ublk.test -test.v -test.count=1 -test.timeout=200s -test.run '^TestKernel'\n",
		Timeout: 5 * time.Minute,
	})
	if !res.Passed {
		t.Fatalf("guest tests failed (exit %d)", res.ExitCode)
	}
	for _, name := range []string{"TestKernelReadBack", "TestKernelFixedID", "TestKernelErrors", "TestKernelRecover"} {
		if !strings.Contains(res.Log, "--- PASS: "+name) {
			t.Errorf("guest did not report PASS for %s", name)
		}
	}
}

func requireUblk(t *testing.T) {
	t.Helper()
	if !vmtest.InGuest() {
		t.Skip("runs inside the vmtest guest (TestGuestUblk)")
	}
	if _, err := os.Stat(ControlPath); err != nil {
		t.Fatalf("%s: %v", ControlPath, err)
	}
}

type memDev struct{ *bytes.Reader }

func (m memDev) Size() int64 { return m.Reader.Size() }

// failDev fails reads in one range.
type failDev struct {
	memDev
	badOff int64
}

func (f failDev) ReadAt(p []byte, off int64) (int, error) {
	if off <= f.badOff && f.badOff < off+int64(len(p)) {
		return 0, errors.New("injected failure")
	}
	return f.memDev.ReadAt(p, off)
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func randomData(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{7}).Read(b)
	return b
}

func sysfs(t *testing.T, dev, attr string) string {
	b, err := os.ReadFile("/sys/block/" + strings.TrimPrefix(dev, "/dev/") + "/" + attr)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// alignedBuf returns n bytes aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := int(-uintptr(unsafe.Pointer(&b[0])) & 4095)
	return b[off : off+n]
}

// TestKernelReadBack: several queues, concurrent O_DIRECT reads at random
// offsets and sizes (up to the maximum request) and buffered reads of the
// whole device, all compared with the source; the size is not a multiple
// of 4096 and the tail reads as zeros; writes fail; Close removes it.
func TestKernelReadBack(t *testing.T) {
	requireUblk(t)
	const size = 8<<20 + 1536
	data := randomData(size)
	d, err := Start(Config{ID: -1, Device: memDev{bytes.NewReader(data)}, Queues: 2, Depth: 16, Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			d.Close()
		}
	}()
	t.Logf("%s: %d queues, depth %d, max I/O %d", d.Path(), d.Queues(), d.Depth(), d.MaxIO())
	if got := sysfs(t, d.Path(), "ro"); got != "1" {
		t.Errorf("ro = %s", got)
	}
	if got := sysfs(t, d.Path(), "size"); got != fmt.Sprint(size/512) {
		t.Errorf("size = %s sectors, want %d", got, size/512)
	}
	whole, err := os.ReadFile(d.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(whole, data) {
		t.Fatalf("buffered read of %d bytes differs from the source (%d bytes)", len(whole), len(data))
	}
	fd, err := unix.Open(d.Path(), unix.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for i := 0; i < 100; i++ {
				n := (1 + r.IntN(256)) * 512
				if i%25 == 0 {
					n = d.MaxIO() * 2 // split by the kernel
				}
				off := int64(r.IntN(size/512)) * 512
				if off+int64(n) > size {
					n = int(size - off)
				}
				buf := alignedBuf(n)
				m, err := unix.Pread(fd, buf, off)
				if err != nil || m != n {
					errs <- fmt.Errorf("pread %d at %d: %d, %v", n, off, m, err)
					return
				}
				if !bytes.Equal(buf, data[off:off+int64(n)]) {
					errs <- fmt.Errorf("pread %d at %d: data differs", n, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	unix.Close(fd)
	if f, err := os.OpenFile(d.Path(), os.O_WRONLY, 0); err == nil {
		_, werr := f.WriteAt(make([]byte, 4096), 0)
		serr := f.Sync()
		f.Close()
		if werr == nil && serr == nil {
			t.Error("write to the read-only device succeeded")
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	for _, p := range []string{d.Path(), fmt.Sprintf("/dev/ublkc%d", d.ID()), "/sys/block/" + strings.TrimPrefix(d.Path(), "/dev/")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s still exists after Close", p)
		}
	}
}

// TestKernelFixedID: a requested /dev/ublkbN, 4096-byte logical blocks (the
// size rounds up; the tail reads as zeros), an in-use id is refused, the id
// is free again after Close, and a failing backend read gives EIO.
func TestKernelFixedID(t *testing.T) {
	requireUblk(t)
	data := randomData(1<<20 + 100)
	dev := failDev{memDev{bytes.NewReader(data)}, 512 << 10}
	d, err := Start(Config{ID: 5, Device: dev, Queues: 1, Depth: 4, BlockSize: 4096, Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if d.Path() != "/dev/ublkb5" {
		t.Errorf("path %s", d.Path())
	}
	if got := sysfs(t, d.Path(), "queue/logical_block_size"); got != "4096" {
		t.Errorf("logical_block_size %s", got)
	}
	if _, err := Start(Config{ID: 5, Device: dev}); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("second device with id 5: %v", err)
	}
	f, err := os.Open(d.Path())
	if err != nil {
		t.Fatal(err)
	}
	tail := make([]byte, 8192)
	n, err := f.ReadAt(tail, 1<<20)
	if n != 4096 || (err != nil && err != io.EOF) {
		t.Errorf("tail read: %d, %v", n, err)
	}
	if !bytes.Equal(tail[:100], data[1<<20:]) || !bytes.Equal(tail[100:4096], make([]byte, 3996)) {
		t.Error("tail block differs (data then zeros expected)")
	}
	fd, _ := unix.Open(d.Path(), unix.O_RDONLY|unix.O_DIRECT, 0)
	if _, err := unix.Pread(fd, alignedBuf(4096), 512<<10); err == nil {
		t.Error("read of the failing range succeeded")
	} else {
		t.Logf("failing range: %v", err)
	}
	if _, err := unix.Pread(fd, alignedBuf(4096), 0); err != nil {
		t.Errorf("read after a failure: %v", err)
	}
	unix.Close(fd)
	f.Close()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d2, err := Start(Config{ID: 5, Device: dev, Queues: 1, Depth: 2})
	if err != nil {
		t.Fatalf("id 5 after Close: %v", err)
	}
	if err := d2.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestKernelErrors(t *testing.T) {
	requireUblk(t)
	dev := memDev{bytes.NewReader(make([]byte, 4096))}
	for _, c := range []Config{
		{ID: -1, Device: dev, BlockSize: 1000},
		{ID: -1, Device: dev, Depth: 5000},
		{ID: -1, Device: dev, MaxIO: 1000},
		{ID: -1},
		{ID: -1, Device: memDev{bytes.NewReader(nil)}},
	} {
		if d, err := Start(c); err == nil {
			d.Close()
			t.Errorf("Start(%+v) succeeded", c)
		}
	}
}

// recoverChildEnv makes the test binary, re-run by TestKernelRecover, the
// server that gets killed.
const recoverChildEnv = "UBLK_TEST_RECOVER_CHILD"

// TestKernelRecover: a child process serves /dev/ublkb6 (recovery on) and
// is killed with SIGKILL while O_DIRECT readers are busy; the device stays,
// reads wait; a Start without Reattach reports an ExistsError naming the
// dead pid; a reattach with a different size is refused and changes
// nothing; the reattach with the same data completes every waiting read
// with the right bytes; Close removes the device.
func TestKernelRecover(t *testing.T) {
	requireUblk(t)
	const size = 4 << 20
	data := randomData(size)
	if os.Getenv(recoverChildEnv) == "1" {
		d, err := Start(Config{ID: 6, Device: memDev{bytes.NewReader(data)}, Queues: 2, Depth: 8})
		if err != nil {
			fmt.Println("START-FAILED", err)
			os.Exit(1)
		}
		rec, reissue := d.Recovery()
		fmt.Printf("READY %v %v\n", rec, reissue)
		select {}
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestKernelRecover$", "-test.count=1")
	cmd.Env = append(os.Environ(), recoverChildEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "READY") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child: %q, %v", line, err)
	}
	t.Logf("child pid %d: %s", cmd.Process.Pid, strings.TrimSpace(line))
	if line != "READY true true\n" {
		t.Errorf("recovery flags not granted by the driver: %q", line)
	}
	fd, err := unix.Open("/dev/ublkb6", unix.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	fdOpen := true
	defer func() {
		if fdOpen {
			unix.Close(fd)
		}
	}()
	var wg sync.WaitGroup
	var reads atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, 8)
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 3))
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := (1 + r.IntN(64)) * 4096
				off := int64(r.IntN((size-n)/4096)) * 4096
				buf := alignedBuf(n)
				m, err := unix.Pread(fd, buf, off)
				if err != nil || m != n {
					errs <- fmt.Errorf("pread %d at %d: %d, %v", n, off, m, err)
					return
				}
				if !bytes.Equal(buf, data[off:off+int64(n)]) {
					errs <- fmt.Errorf("pread %d at %d: data differs", n, off)
					return
				}
				reads.Add(1)
			}
		}()
	}
	for reads.Load() < 50 {
		time.Sleep(10 * time.Millisecond)
	}
	pid := cmd.Process.Pid
	cmd.Process.Signal(unix.SIGKILL)
	cmd.Wait()
	// Reads the old server completed just before it died may still be
	// counted by their goroutines: take the count once it has stopped
	// moving (a device that kept completing reads with no server would
	// never settle).
	before := reads.Load()
	for stable, i := 0, 0; stable < 20; i++ {
		if i > 500 {
			t.Fatalf("reads keep completing with no server (%d)", reads.Load()-before)
		}
		time.Sleep(10 * time.Millisecond)
		if now := reads.Load(); now != before {
			before, stable = now, 0
		} else {
			stable++
		}
	}
	t.Logf("killed pid %d after %d reads", pid, before)
	if _, err := os.Stat("/dev/ublkb6"); err != nil {
		t.Fatalf("device gone after the server died: %v", err)
	}

	dev := memDev{bytes.NewReader(data)}
	_, err = Start(Config{ID: 6, Device: dev})
	var ee *ExistsError
	if !errors.As(err, &ee) || ee.PID != pid || !ee.Recoverable || ee.Running {
		t.Errorf("Start without Reattach: %v (%+v)", err, ee)
	} else {
		t.Logf("without Reattach: %v", err)
	}
	if _, err := Start(Config{ID: 6, Device: memDev{bytes.NewReader(data[:size/2])}, Reattach: true}); err == nil || !strings.Contains(err.Error(), "bytes") {
		t.Errorf("reattach with a different size: %v", err)
	} else {
		t.Logf("different size: %v", err)
	}
	if got := reads.Load(); got != before {
		t.Errorf("%d reads completed with no server", got-before)
	}
	d, err := Start(Config{ID: 6, Device: dev, Reattach: true, Logger: logger(t)})
	if err != nil {
		close(stop)
		t.Fatalf("reattach: %v", err)
	}
	if !d.Reattached() {
		t.Error("Reattached() = false")
	}
	for reads.Load() < before+200 {
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d reads after the reattach", reads.Load()-before)
	unix.Close(fd) // DEL_DEV waits for the last opener
	fdOpen = false
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/dev/ublkb6"); err == nil {
		t.Error("/dev/ublkb6 still exists after Close")
	}
}
