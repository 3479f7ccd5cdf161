package kernel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/vmtest"
	"golang.org/x/sys/unix"
)

// The TestKernel* tests need root and the nbd driver. On the build machines
// they run only inside the QEMU guest that TestGuestAttach boots; elsewhere
// they skip unless the driver is there. Inside the guest they never skip.

// Inputs handed to the guest by TestGuestAttach.
const (
	envImage    = "EROFS_BLOCKD_TEST_IMAGE"
	envManifest = "EROFS_BLOCKD_TEST_MANIFEST"
)

func requireNBD(t *testing.T) {
	t.Helper()
	if vmtest.InGuest() {
		return // must work; failures are real
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat("/sys/module/nbd"); err != nil {
		t.Skip("no nbd driver on this kernel; runs inside the guest (TestGuestAttach)")
	}
}

// testImage returns an EROFS image and the sha256 manifest of its files:
// the ones the host passed into the guest, or freshly made with mkfs.erofs.
func testImage(t *testing.T) ([]byte, map[string]string) {
	t.Helper()
	imgPath, manPath := os.Getenv(envImage), os.Getenv(envManifest)
	if imgPath == "" {
		if vmtest.InGuest() {
			t.Fatalf("%s not set inside the guest", envImage)
		}
		dir := t.TempDir()
		imgPath, manPath = buildImage(t, dir)
	}
	img, err := os.ReadFile(imgPath)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(manPath)
	if err != nil {
		t.Fatal(err)
	}
	var man map[string]string
	if err := json.Unmarshal(b, &man); err != nil {
		t.Fatal(err)
	}
	return img, man
}

// buildImage makes a small tree, an EROFS image of it (mkfs.erofs), and a
// JSON manifest {path: sha256}; it returns the image and manifest paths.
func buildImage(t testing.TB, dir string) (img, manifest string) {
	t.Helper()
	src := filepath.Join(dir, "tree")
	rng := rand.New(rand.NewSource(1))
	man := map[string]string{}
	add := func(rel string, data []byte) {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		man[rel] = hex.EncodeToString(sum[:])
	}
	add("hello.txt", []byte("hello from erofs-blockd over /dev/nbd\n"))
	add("empty", nil)
	for i := 0; i < 12; i++ {
		b := make([]byte, rng.Intn(300<<10)+1)
		rng.Read(b)
		add(fmt.Sprintf("d%d/f%02d.bin", i%3, i), b)
	}
	add("deep/a/b/c/tail.txt", bytes.Repeat([]byte("tail "), 2000))
	img = filepath.Join(dir, "test.erofs")
	out, err := exec.Command("mkfs.erofs", "-T0", "--all-root", img, src).CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.erofs: %v\n%s", err, out)
	}
	manifest = filepath.Join(dir, "manifest.json")
	b, _ := json.Marshal(man)
	if err := os.WriteFile(manifest, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return img, manifest
}

// mountAndCompare mounts dev as EROFS, checks every file against man, and
// unmounts.
func mountAndCompare(t *testing.T, dev string, man map[string]string) {
	t.Helper()
	mnt := t.TempDir()
	if err := unix.Mount(dev, mnt, "erofs", unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("mount -t erofs %s: %v", dev, err)
	}
	defer func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("umount %s: %v", mnt, err)
		}
	}()
	got := map[string]string{}
	err := filepath.WalkDir(mnt, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(mnt, p)
		sum := sha256.Sum256(b)
		got[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", mnt, err)
	}
	if len(got) != len(man) {
		t.Errorf("mounted tree has %d files, want %d", len(got), len(man))
	}
	for p, sum := range man {
		if got[p] != sum {
			t.Errorf("%s: sha256 %q, want %q", p, got[p], sum)
		}
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "hello.txt")); err != nil || !strings.Contains(string(b), "hello from erofs-blockd") {
		t.Errorf("hello.txt = %q, %v", b, err)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func sysfsString(t *testing.T, index int, attr string) string {
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/nbd%d/%s", index, attr))
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return strings.TrimSpace(string(b))
}

func detachAndCheck(t *testing.T, d *Device, r *responder) {
	t.Helper()
	start := time.Now()
	if err := d.Detach(); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	t.Logf("detach took %v", time.Since(start).Round(time.Millisecond))
	if n, err := sysfsSize(d.Index()); err != nil || n != 0 {
		t.Errorf("after Detach: size %d, %v; want 0", n, err)
	}
	if a := r.active.Load(); a != 0 {
		t.Errorf("%d serve callbacks still running after Detach", a)
	}
	select {
	case <-d.Done():
	default:
		t.Error("Done not closed after Detach")
	}
	if err := d.Detach(); err != nil {
		t.Errorf("second Detach: %v", err)
	}
}

func TestKernelAttach(t *testing.T) {
	requireNBD(t)
	img, man := testImage(t)
	cases := []struct {
		name   string
		method Method
		index  int
		conns  int
	}{
		{"netlink", MethodNetlink, 0, 1},
		{"ioctl", MethodIoctl, 0, 1},
		{"netlink-multi", MethodNetlink, 0, 4},
		{"ioctl-multi", MethodIoctl, 1, 4},
		{"netlink-any-index", MethodNetlink, -1, 2},
		{"ioctl-any-index", MethodIoctl, -1, 1},
		{"auto", MethodAuto, 2, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &responder{data: img, size: int64(len(img))}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			d, err := Attach(ctx, Config{
				Index: tc.index, Size: int64(len(img)), Connections: tc.conns,
				Timeout: 20 * time.Second, BackendID: "kernel-test-" + tc.name,
				ReadOnly: true, Method: tc.method, Logger: testLogger(t),
			}, r.serve)
			if err != nil {
				t.Fatalf("Attach: %v", err)
			}
			t.Logf("attached %s via %v in %v", d.Path(), d.Method(), time.Since(start).Round(time.Millisecond))
			if tc.index >= 0 && d.Index() != tc.index {
				t.Errorf("index %d, want %d", d.Index(), tc.index)
			}
			want := tc.method
			if want == MethodAuto {
				want = MethodNetlink
			}
			if d.Method() != want {
				t.Errorf("method %v, want %v", d.Method(), want)
			}
			if _, err := os.Stat(d.Path()); err != nil {
				t.Errorf("device node: %v", err)
			}
			if got := sysfsString(t, d.Index(), "ro"); got != "1" {
				t.Errorf("/sys/block/nbd%d/ro = %s, want 1", d.Index(), got)
			}
			if n, _ := sysfsSize(d.Index()); n != int64(len(img)) {
				t.Errorf("size %d, want %d", n, len(img))
			}
			if d.Method() == MethodNetlink {
				if got := sysfsString(t, d.Index(), "backend"); got != "kernel-test-"+tc.name {
					t.Errorf("backend %q", got)
				}
				st, err := Status(ctx, d.Index())
				if err != nil || !st[d.Index()] {
					t.Errorf("Status = %v, %v; want connected", st, err)
				}
			}
			mountAndCompare(t, d.Path(), man)
			if got := int(r.conns.Load()); got != tc.conns {
				t.Errorf("serve called %d times, want %d", got, tc.conns)
			}
			t.Logf("%d reads over %d connections", r.reads.Load(), r.conns.Load())
			detachAndCheck(t, d, r)
			if d.Method() == MethodNetlink {
				if st, err := Status(ctx, d.Index()); err != nil || st[d.Index()] {
					t.Errorf("Status after detach = %v, %v; want disconnected", st, err)
				}
			}
		})
	}
}

// TestKernelRounding checks that a size that is not a multiple of the block
// size is rounded up and the tail reads as zeros.
func TestKernelRounding(t *testing.T) {
	requireNBD(t)
	data := make([]byte, 10000)
	rand.New(rand.NewSource(2)).Read(data)
	for _, m := range []Method{MethodNetlink, MethodIoctl} {
		t.Run(m.String(), func(t *testing.T) {
			r := &responder{data: data, size: 12288}
			d, err := Attach(context.Background(), Config{Index: 3, Size: int64(len(data)), ReadOnly: true, Method: m, Logger: testLogger(t)}, r.serve)
			if err != nil {
				t.Fatal(err)
			}
			if d.Size() != 12288 {
				t.Errorf("Size() = %d", d.Size())
			}
			got, err := os.ReadFile(d.Path())
			if err != nil {
				t.Fatal(err)
			}
			want := append(append([]byte{}, data...), make([]byte, 12288-len(data))...)
			if !bytes.Equal(got, want) {
				t.Errorf("read %d bytes, content differs (want %d)", len(got), len(want))
			}
			detachAndCheck(t, d, r)
		})
	}
}

// TestKernelIoctlSignals sends signals straight to the thread parked in
// NBD_DO_IT: they must stay pending there instead of making the kernel tear
// the device down.
func TestKernelIoctlSignals(t *testing.T) {
	requireNBD(t)
	img, man := testImage(t)
	r := &responder{data: img, size: int64(len(img))}
	d, err := Attach(context.Background(), Config{Index: 0, Size: int64(len(img)), ReadOnly: true, Method: MethodIoctl, Logger: testLogger(t)}, r.serve)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the thread enter NBD_DO_IT
	for _, sig := range []unix.Signal{unix.SIGURG, unix.SIGCHLD, unix.SIGWINCH} {
		if err := unix.Tgkill(os.Getpid(), d.ioc.tid, sig); err != nil {
			t.Fatalf("tgkill %v: %v", sig, err)
		}
	}
	for i := 0; i < 5; i++ { // SIGCHLD to the process
		exec.Command("/bin/true").Run()
	}
	time.Sleep(100 * time.Millisecond)
	if err := d.ioc.earlyExit(); err != nil {
		t.Fatalf("device went down after signals: %v", err)
	}
	mountAndCompare(t, d.Path(), man)
	detachAndCheck(t, d, r)
}

// TestKernelReattach kills every connection of a netlink device, as a
// crashing server would, and hands it new ones with NBD_CMD_RECONFIGURE.
func TestKernelReattach(t *testing.T) {
	requireNBD(t)
	img, man := testImage(t)
	cfg := Config{Index: 0, Size: int64(len(img)), Connections: 2, DeadConnTimeout: 30 * time.Second,
		BackendID: "reattach-test", ReadOnly: true, Method: MethodNetlink, Logger: testLogger(t)}
	r1 := &responder{data: img, size: int64(len(img))}
	d1, err := Attach(context.Background(), cfg, r1.serve)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing to replace while every connection is alive.
	if d, err := Reattach(context.Background(), cfg, (&responder{data: img, size: int64(len(img))}).serve); err == nil {
		d.Detach()
		t.Fatal("Reattach to a healthy device succeeded")
	} else {
		t.Logf("Reattach to a healthy device: %v", err)
	}
	if b, err := os.ReadFile(d1.Path()); err != nil || len(b) != len(img) {
		t.Fatalf("device broken after refused Reattach: %d bytes, %v", len(b), err)
	}

	r1.killAll()
	<-d1.Done()
	time.Sleep(200 * time.Millisecond) // let the kernel notice the dead sockets

	// A different backend identifier is refused.
	bad := cfg
	bad.BackendID = "someone-else"
	if d, err := Reattach(context.Background(), bad, (&responder{data: img, size: int64(len(img))}).serve); err == nil {
		d.Detach()
		t.Fatal("Reattach with another backend identifier succeeded")
	}

	r2 := &responder{data: img, size: int64(len(img))}
	d2, err := Reattach(context.Background(), cfg, r2.serve)
	if err != nil {
		t.Fatalf("Reattach: %v", err)
	}
	mountAndCompare(t, d2.Path(), man)
	if r2.reads.Load() == 0 {
		t.Error("no reads on the new connections")
	}
	detachAndCheck(t, d2, r2)
}

// TestKernelAttachErrors covers refusals that must not leave anything behind.
func TestKernelAttachErrors(t *testing.T) {
	requireNBD(t)
	data := make([]byte, 8192)
	r := &responder{data: data, size: 8192}
	d, err := Attach(context.Background(), Config{Index: 0, Size: 8192, ReadOnly: true, Method: MethodNetlink}, r.serve)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []Method{MethodNetlink, MethodIoctl} {
		r2 := &responder{data: data, size: 8192}
		if d2, err := Attach(context.Background(), Config{Index: 0, Size: 8192, ReadOnly: true, Method: m}, r2.serve); err == nil {
			d2.Detach()
			t.Errorf("%v: second Attach to a busy device succeeded", m)
		} else {
			t.Logf("%v on a busy device: %v", m, err)
		}
		if a := r2.active.Load(); a != 0 {
			t.Errorf("%v: %d serve callbacks left running after a failed Attach", m, a)
		}
	}
	// The first device still works.
	if b, err := os.ReadFile(d.Path()); err != nil || len(b) != 8192 {
		t.Errorf("read busy device: %d bytes, %v", len(b), err)
	}
	detachAndCheck(t, d, r)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Attach(ctx, Config{Index: 0, Size: 8192, ReadOnly: true}, r.serve); err == nil {
		t.Error("Attach with a cancelled context succeeded")
	}
}

// TestKernelUndoLostConnect checks the cleanup used when a netlink CONNECT
// reply is lost to a timeout: it finds the device by our thread and backend
// identifier, and leaves other backends alone.
func TestKernelUndoLostConnect(t *testing.T) {
	requireNBD(t)
	data := make([]byte, 8192)
	r := &responder{data: data, size: 8192}
	cfg := Config{Index: -1, Size: 8192, ReadOnly: true, Method: MethodNetlink, BackendID: "undo-test", Logger: testLogger(t)}
	d, err := Attach(context.Background(), cfg, r.serve)
	if err != nil {
		t.Fatal(err)
	}
	other := cfg
	other.BackendID = "not-this-one"
	if err := other.normalize(); err != nil {
		t.Fatal(err)
	}
	undoLostConnect(&other)
	if n, _ := sysfsSize(d.Index()); n == 0 {
		t.Fatal("undoLostConnect disconnected a device with another backend identifier")
	}
	if err := cfg.normalize(); err != nil {
		t.Fatal(err)
	}
	undoLostConnect(&cfg)
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("undoLostConnect did not disconnect the device")
	}
	detachAndCheck(t, d, r)
}

// TestKernelDetachBusy detaches a mounted device: Detach reports that the
// size did not drop, and a second Detach after the unmount completes.
func TestKernelDetachBusy(t *testing.T) {
	requireNBD(t)
	img, _ := testImage(t)
	for _, m := range []Method{MethodNetlink, MethodIoctl} {
		t.Run(m.String(), func(t *testing.T) {
			r := &responder{data: img, size: int64(len(img))}
			d, err := Attach(context.Background(), Config{Index: 0, Size: int64(len(img)), ReadOnly: true, Method: m,
				OpTimeout: 2 * time.Second, Logger: testLogger(t)}, r.serve)
			if err != nil {
				t.Fatal(err)
			}
			mnt := t.TempDir()
			if err := unix.Mount(d.Path(), mnt, "erofs", unix.MS_RDONLY, ""); err != nil {
				t.Fatal(err)
			}
			err = d.Detach()
			t.Logf("Detach while mounted: %v", err)
			if err == nil {
				t.Error("Detach of a mounted device reported success")
			}
			if err := unix.Unmount(mnt, 0); err != nil {
				t.Fatal(err)
			}
			detachAndCheck(t, d, r)
		})
	}
}
