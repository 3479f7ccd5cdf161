package ublk

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
)

// ControlPath is the ublk driver's control device.
const ControlPath = "/dev/ublk-control"

// Defaults for Config.
const (
	DefaultDepth = 64
	DefaultMaxIO = 512 << 10
)

// Config describes the device to create.
type Config struct {
	// ID is the N of /dev/ublkbN; -1 lets the driver pick a free one.
	ID int
	// Device is what the kernel reads. It must be safe for concurrent use.
	Device blockdev.Device
	// Queues is the number of hardware queues, each served by its own
	// thread; zero means one per CPU. The driver caps it at the CPU count.
	Queues int
	// Depth is the queue depth (tags per queue); zero means DefaultDepth.
	Depth int
	// BlockSize is the logical block size, a power of two from 512 to 4096;
	// zero means 512. The device size is rounded up to it (the tail reads
	// as zeros).
	BlockSize uint32
	// MaxIO is the largest request in bytes (a multiple of 4096); zero
	// means DefaultMaxIO.
	MaxIO uint32
	// Logger receives warnings; nil discards them.
	Logger *slog.Logger

	// NoRecovery creates the device without UBLK_F_USER_RECOVERY: when
	// the server dies the driver fails the outstanding I/O and removes
	// /dev/ublkbN. By default the device survives its server with I/O
	// queued (and, where the driver has UBLK_F_USER_RECOVERY_REISSUE,
	// the requests the server held are issued again) until a new server
	// reattaches (Reattach) or the device is deleted.
	NoRecovery bool
	// Reattach takes over the existing device ID (which must be given)
	// left by a server that died: the device must have been created by
	// this package with recovery, be quiesced (or become so once its
	// server has exited), and match this Config (size, block size and,
	// when given, queues and depth). START_USER_RECOVERY, new queues,
	// END_USER_RECOVERY: the queued I/O then completes from Device. If
	// there is no device ID, Start creates it as without Reattach
	// (Device.Reattached tells which happened).
	Reattach bool
}

// ExistsError is Start's error when the requested /dev/ublkbN exists
// already and Reattach is not set.
type ExistsError struct {
	ID  int
	PID int // the server recorded with the device (-1: none)
	// Running: PID is a live process (the device is served).
	Running bool
	// Recoverable: the device was created with recovery by this package
	// and its server is gone, so Reattach can take it over.
	Recoverable bool
	State       string // "live", "quiesced", "dead", ...
}

func (e *ExistsError) Error() string {
	return fmt.Sprintf("ublk: /dev/ublkb%d exists (%s, server pid %d)", e.ID, e.State, e.PID)
}

// ParseDevicePath returns N for "/dev/ublkbN".
func ParseDevicePath(p string) (int, error) {
	s, ok := strings.CutPrefix(p, "/dev/ublkb")
	if !ok {
		return 0, fmt.Errorf("%q is not a ublk block device path (/dev/ublkbN)", p)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n >= 1<<20 {
		return 0, fmt.Errorf("%q is not a ublk block device path (/dev/ublkbN)", p)
	}
	return n, nil
}
