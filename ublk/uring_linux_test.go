package ublk

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
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
		{"UBLK_U_CMD_GET_DEV_INFO", cmdGetDevInfo, 0x80207502},
		{"UBLK_U_CMD_GET_PARAMS", cmdGetParams, 0x80207509},
		{"UBLK_U_CMD_START_USER_RECOVERY", cmdStartUserRecovery, 0xc0207510},
		{"UBLK_U_CMD_END_USER_RECOVERY", cmdEndUserRecovery, 0xc0207511},
		{"UBLK_U_IO_FETCH_REQ", ioFetchReq, 0xc0107520},
		{"UBLK_U_IO_COMMIT_AND_FETCH_REQ", ioCommitFetchReq, 0xc0107521},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	// Feature bits and states (include/uapi/linux/ublk_cmd.h).
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"UBLK_F_USER_RECOVERY", featUserRecovery, 0x08},
		{"UBLK_F_USER_RECOVERY_REISSUE", featUserRecoveryReissue, 0x10},
		{"UBLK_F_CMD_IOCTL_ENCODE", featCmdIoctlEncode, 0x40},
		{"UBLK_S_DEV_DEAD", stateDead, 0},
		{"UBLK_S_DEV_LIVE", stateLive, 1},
		{"UBLK_S_DEV_QUIESCED", stateQuiesced, 2},
		{"UBLK_S_DEV_FAIL_IO", stateFailIO, 3},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	// Offsets in struct ublksrv_ctrl_dev_info that reattach reads.
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"state", unsafe.Offsetof(devInfo{}.State), 4},
		{"max_io_buf_bytes", unsafe.Offsetof(devInfo{}.MaxIOBufBytes), 8},
		{"dev_id", unsafe.Offsetof(devInfo{}.DevID), 12},
		{"ublksrv_pid", unsafe.Offsetof(devInfo{}.UblksrvPID), 16},
		{"flags", unsafe.Offsetof(devInfo{}.Flags), 24},
		{"ublksrv_flags", unsafe.Offsetof(devInfo{}.UblksrvFlags), 32},
		{"ctrl_cmd.data", unsafe.Offsetof(ctrlCmd{}.Data), 16},
	} {
		if c.got != c.want {
			t.Errorf("offsetof(%s) = %d, want %d", c.name, c.got, c.want)
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

// TestControlCommandEncoding checks the SQEs the recovery commands become:
// URING_CMD on the control fd, the ioctl-encoded cmd_op at sqe->cmd_op,
// and struct ublksrv_ctrl_cmd at sqe->cmd with dev_id, queue_id -1 and
// the pid in data[0] (END_USER_RECOVERY, like START_DEV).
func TestControlCommandEncoding(t *testing.T) {
	sqe := make([]byte, 2*sqeSize)
	payload := prepUringCmd(sqe, 9, cmdEndUserRecovery, 77)
	*(*ctrlCmd)(unsafe.Pointer(&payload[0])) = ctrlCmd{DevID: 3, QueueID: 0xffff, Data: 4242}
	want := map[int]uint64{
		sqeOpcodeOff:   opUringCmd,
		sqeFdOff:       9,
		sqeOffOff:      0xc0207511,
		sqeUserDataOff: 77,
	}
	get := func(off, n int) uint64 {
		var v uint64
		for i := n - 1; i >= 0; i-- {
			v = v<<8 | uint64(sqe[off+i])
		}
		return v
	}
	sizes := map[int]int{sqeOpcodeOff: 1, sqeFdOff: 4, sqeOffOff: 4, sqeUserDataOff: 8}
	for off, w := range want {
		if got := get(off, sizes[off]); got != w {
			t.Errorf("sqe[%d] = %#x, want %#x", off, got, w)
		}
	}
	if got := get(sqeCmdOff, 4); got != 3 {
		t.Errorf("dev_id %d", got)
	}
	if got := get(sqeCmdOff+4, 2); got != 0xffff {
		t.Errorf("queue_id %#x", got)
	}
	if got := get(sqeCmdOff+16, 8); got != 4242 {
		t.Errorf("data[0] %d", got)
	}
	if s := stateName(stateQuiesced); s != "quiesced" {
		t.Errorf("stateName(2) = %q", s)
	}
	if pidAlive(0) || pidAlive(-1) || !pidAlive(os.Getpid()) {
		t.Error("pidAlive")
	}
	e := &ExistsError{ID: 0, PID: 12, State: "quiesced"}
	if !strings.Contains(e.Error(), "/dev/ublkb0 exists") {
		t.Errorf("ExistsError: %q", e.Error())
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
