package ublk

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestUAPILayout(t *testing.T) {
	// Values of the ioctl-encoded opcodes as the C macros compute them.
	for _, c := range []struct {
		name      string
		got, want uint32
	}{
		{"UBLK_U_CMD_ADD_DEV", cmdAddDev, 0xc0207504},
		{"UBLK_U_CMD_DEL_DEV", cmdDelDev, 0xc0207505},
		{"UBLK_U_CMD_START_DEV", cmdStartDev, 0xc0207506},
		{"UBLK_U_CMD_STOP_DEV", cmdStopDev, 0xc0207507},
		{"UBLK_U_CMD_SET_PARAMS", cmdSetParams, 0xc0207508},
		{"UBLK_U_CMD_GET_FEATURES", cmdGetFeatures, 0x80207513},
		{"UBLK_U_IO_FETCH_REQ", ioFetchReq, 0xc0107520},
		{"UBLK_U_IO_COMMIT_AND_FETCH_REQ", ioCommitFetchReq, 0xc0107521},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if s := unsafe.Sizeof(uringParams{}); s != 120 {
		t.Errorf("sizeof(io_uring_params) = %d, want 120", s)
	}
	if s := unsafe.Sizeof(params{}); s != 40 {
		t.Errorf("sizeof(params head + basic) = %d, want 40", s)
	}
	if o := unsafe.Offsetof(paramBasic{}.DevSectors); o != 16 {
		t.Errorf("offsetof(dev_sectors) = %d, want 16", o)
	}
}

func TestRingNop(t *testing.T) {
	for _, flags := range []uint32{0, setupSQE128} {
		r, err := newRing(8, flags)
		if err != nil {
			t.Skipf("io_uring unavailable: %v", err)
		}
		// More operations than SQEs, to wrap both rings.
		seen := map[uint64]bool{}
		for round := 0; round < 5; round++ {
			for i := 0; i < 8; i++ {
				sqe := r.getSQE()
				if sqe == nil {
					t.Fatalf("SQ full at %d", i)
				}
				prepNop(sqe, uint64(round*8+i))
			}
			if r.getSQE() != nil {
				t.Fatal("getSQE beyond the ring size")
			}
			if err := r.submit(8); err != nil {
				t.Fatal(err)
			}
			for n := 0; n < 8; {
				n += r.reap(func(c cqe) {
					if c.Res != 0 {
						t.Errorf("nop %d: res %d", c.UserData, c.Res)
					}
					seen[c.UserData] = true
				})
				if n < 8 {
					if err := r.submit(1); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		if len(seen) != 40 {
			t.Errorf("saw %d completions, want 40", len(seen))
		}
		if err := r.close(); err != nil {
			t.Error(err)
		}
	}
}

func TestRingRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	want := bytes.Repeat([]byte("0123456789abcdef"), 1024)
	os.WriteFile(p, want, 0o644)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := newRing(4, setupSQE128)
	if err != nil {
		t.Skipf("io_uring unavailable: %v", err)
	}
	defer r.close()
	buf, _ := unix.Mmap(-1, 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	defer unix.Munmap(buf)
	prepRead(r.getSQE(), int(f.Fd()), uintptr(unsafe.Pointer(&buf[0])), 4096, 4096+16, 7)
	if err := r.submit(1); err != nil {
		t.Fatal(err)
	}
	var got cqe
	for r.reap(func(c cqe) { got = c }) == 0 {
		r.submit(1)
	}
	if got.UserData != 7 || got.Res != 4096 {
		t.Fatalf("cqe %+v", got)
	}
	if !bytes.Equal(buf[:4096], want[4096+16:8192+16]) {
		t.Fatal("read data differs")
	}
	// The eventfd read used by the queues (offset -1).
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	prepRead(r.getSQE(), efd, uintptr(unsafe.Pointer(&buf[0])), 8, -1, eventfdTag)
	r.submit(0)
	unix.Write(efd, []byte{3, 0, 0, 0, 0, 0, 0, 0})
	for r.reap(func(c cqe) { got = c }) == 0 {
		r.submit(1)
	}
	if got.UserData != eventfdTag || got.Res != 8 || buf[0] != 3 {
		t.Fatalf("eventfd cqe %+v, value %d", got, buf[0])
	}
}

func TestParseDevicePath(t *testing.T) {
	if n, err := ParseDevicePath("/dev/ublkb3"); err != nil || n != 3 {
		t.Errorf("ParseDevicePath(/dev/ublkb3) = %d, %v", n, err)
	}
	for _, p := range []string{"/dev/ublkc3", "/dev/ublkb", "/dev/ublkbx", "/dev/nbd0", "/dev/ublkb-1"} {
		if _, err := ParseDevicePath(p); err == nil {
			t.Errorf("ParseDevicePath(%q) accepted", p)
		}
	}
}
