package kernel

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// Method selects how the device is configured.
type Method int

const (
	// MethodAuto uses netlink when the kernel offers the "nbd" generic
	// netlink family and falls back to ioctls otherwise.
	MethodAuto Method = iota
	// MethodNetlink uses only generic netlink.
	MethodNetlink
	// MethodIoctl uses only the legacy ioctls (NBD_SET_SOCK ... NBD_DO_IT).
	MethodIoctl
)

func (m Method) String() string {
	switch m {
	case MethodAuto:
		return "auto"
	case MethodNetlink:
		return "netlink"
	case MethodIoctl:
		return "ioctl"
	}
	return "Method(" + strconv.Itoa(int(m)) + ")"
}

// Transmission flags (NBD_FLAG_*) the kernel understands.
const (
	flagHasFlags     = 1 << 0
	flagReadOnly     = 1 << 1
	flagSendFlush    = 1 << 2
	flagCanMultiConn = 1 << 8
)

// Config describes the device to attach.
type Config struct {
	// Index is the N of /dev/nbdN (see ParseDevicePath); -1 lets the kernel
	// pick a free device (netlink creates one if none is free).
	Index int
	// Size is the export size in bytes. It is rounded up to BlockSize; the
	// serve callback must answer reads of the tail (with zeros).
	Size int64
	// BlockSize is the logical block size: a power of two from 512 to 4096.
	// Zero means 4096.
	BlockSize uint32
	// Connections is the number of sockets handed to the kernel; the kernel
	// spreads requests over them. Zero means 1.
	Connections int
	// Timeout is the per-request timeout (whole seconds; zero keeps the
	// kernel default of 30 s).
	Timeout time.Duration
	// DeadConnTimeout is how long the kernel queues requests after every
	// connection died, waiting for Reattach (netlink only; whole seconds).
	DeadConnTimeout time.Duration
	// BackendID identifies the backend (netlink only, Linux 5.19+ shows it in
	// /sys/block/nbdN/backend). Reattach must present the same identifier.
	BackendID string
	// ReadOnly advertises NBD_FLAG_READ_ONLY: the kernel marks the disk
	// read-only and never sends writes.
	ReadOnly bool
	// Method selects netlink, ioctl, or netlink with ioctl fallback.
	Method Method
	// OpTimeout bounds every single kernel operation (a netlink request, the
	// wait for the device to come up or go down). Zero means 30 s.
	OpTimeout time.Duration
	// Logger receives debug and warning messages; nil discards them.
	Logger *slog.Logger
}

const (
	defaultBlockSize = 4096
	defaultOpTimeout = 30 * time.Second
	maxConnections   = 64
)

// normalize fills defaults and validates cfg. It returns the rounded size.
func (cfg *Config) normalize() error {
	if cfg.BlockSize == 0 {
		cfg.BlockSize = defaultBlockSize
	}
	bs := cfg.BlockSize
	if bs < 512 || bs > 4096 || bs&(bs-1) != 0 {
		return fmt.Errorf("nbd: block size %d: must be a power of two from 512 to 4096", bs)
	}
	if cfg.Size <= 0 {
		return fmt.Errorf("nbd: size %d: must be positive", cfg.Size)
	}
	rounded := (cfg.Size + int64(bs) - 1) / int64(bs) * int64(bs)
	if rounded < cfg.Size { // overflow
		return fmt.Errorf("nbd: size %d too large", cfg.Size)
	}
	cfg.Size = rounded
	if cfg.Connections == 0 {
		cfg.Connections = 1
	}
	if cfg.Connections < 0 || cfg.Connections > maxConnections {
		return fmt.Errorf("nbd: %d connections: must be 1..%d", cfg.Connections, maxConnections)
	}
	if cfg.Index < -1 {
		return fmt.Errorf("nbd: index %d: must be -1 or a device number", cfg.Index)
	}
	if cfg.Timeout < 0 || cfg.DeadConnTimeout < 0 {
		return errors.New("nbd: negative timeout")
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = defaultOpTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	switch cfg.Method {
	case MethodAuto, MethodNetlink, MethodIoctl:
	default:
		return fmt.Errorf("nbd: unknown method %v", cfg.Method)
	}
	return nil
}

// serverFlags are the NBD transmission flags handed to the kernel.
func (cfg *Config) serverFlags() uint64 {
	f := uint64(flagHasFlags | flagSendFlush | flagCanMultiConn)
	if cfg.ReadOnly {
		f |= flagReadOnly
	}
	return f
}

// seconds rounds d up to whole seconds, as the kernel takes them.
func seconds(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Second - 1) / time.Second)
}

// ParseDevicePath returns N for "/dev/nbdN" or "nbdN" (N decimal, no sign,
// no partition suffix).
func ParseDevicePath(p string) (int, error) {
	name := strings.TrimPrefix(p, "/dev/")
	digits, ok := strings.CutPrefix(name, "nbd")
	if !ok || digits == "" || strings.ContainsAny(name, "/") {
		return 0, fmt.Errorf("nbd: %q is not an NBD device path (want /dev/nbdN)", p)
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("nbd: %q is not an NBD device path (want /dev/nbdN)", p)
		}
	}
	if len(digits) > 1 && digits[0] == '0' {
		return 0, fmt.Errorf("nbd: %q: leading zero in device number", p)
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n > 1<<20 {
		return 0, fmt.Errorf("nbd: %q: device number out of range", p)
	}
	return n, nil
}

// DevicePath returns "/dev/nbdN".
func DevicePath(index int) string { return "/dev/nbd" + strconv.Itoa(index) }
