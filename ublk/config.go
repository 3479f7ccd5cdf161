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
