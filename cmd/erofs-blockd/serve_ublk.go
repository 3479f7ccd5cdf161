package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/pflag"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
	"github.com/erofs-blockd/erofs-blockd/ublk"
)

// ublkFlags wires `serve --ublk` and a positional /dev/ublkbN: the first
// export is also served to the kernel's ublk driver (package ublk), from
// the same device the NBD exports read.
type ublkFlags struct {
	enable   *bool
	queues   *int
	depth    *int
	reattach *pflag.Flag // serve's --reattach, shared with /dev/nbdX
	recovery *bool
	devices  []string // positional /dev/ublkbN
	dev      *ublk.Device
}

func registerUblkFlags(fs *pflag.FlagSet) *ublkFlags {
	u := &ublkFlags{}
	u.enable = fs.Bool("ublk", false, "also serve the image as a read-only ublk device /dev/ublkbN (N picked by the driver; or give /dev/ublkbN)")
	u.queues = fs.Int("ublk-queues", 0, "ublk hardware queues, one thread each (default: number of CPUs)")
	u.depth = fs.Int("ublk-depth", ublk.DefaultDepth, "ublk queue depth (requests in flight per queue)")
	// --reattach is one flag for both kernel devices (securityFlags
	// registers it for /dev/nbdX); it is registered here only if absent.
	const reattachUsage = "; for /dev/ublkbN: take over the device a killed server left (its I/O waits queued; size, block size, queues and depth must match), or create it if absent"
	if u.reattach = fs.Lookup("reattach"); u.reattach != nil {
		u.reattach.Usage += reattachUsage
	} else {
		fs.Bool("reattach", false, strings.TrimPrefix(reattachUsage, "; "))
		u.reattach = fs.Lookup("reattach")
	}
	u.recovery = fs.Bool("ublk-recovery", true, "keep /dev/ublkbN with its I/O queued when the server dies, for serve --reattach (false: the kernel fails the I/O and removes the disk)")
	return u
}

// takeDevice claims a positional /dev/ublkbN argument.
func (u *ublkFlags) takeDevice(arg string) bool {
	if !strings.HasPrefix(arg, "/dev/ublkb") {
		return false
	}
	u.devices = append(u.devices, arg)
	return true
}

func (u *ublkFlags) enabled() bool { return *u.enable || len(u.devices) > 0 }

// attach creates the ublk device and prints its line. blockSize is
// --block-size (0: the image's block size, imageBlockSize).
func (u *ublkFlags) attach(dev blockdev.Device, blockSize, imageBlockSize uint32, stdout io.Writer, log *slog.Logger) error {
	if !u.enabled() {
		return nil
	}
	if len(u.devices) > 1 {
		return fmt.Errorf("more than one ublk device (%s)", strings.Join(u.devices, ", "))
	}
	reattach := u.reattach.Value.String() == "true"
	if reattach && *u.enable && len(u.devices) == 0 {
		return fmt.Errorf("--reattach needs the device: give /dev/ublkbN")
	}
	id := -1
	if len(u.devices) == 1 {
		n, err := ublk.ParseDevicePath(u.devices[0])
		if err != nil {
			return err
		}
		id = n
	}
	if blockSize == 0 {
		blockSize = imageBlockSize
	}
	d, err := ublk.Start(ublk.Config{ID: id, Device: dev, Queues: *u.queues, Depth: *u.depth, BlockSize: blockSize, Logger: log,
		Reattach: reattach && id >= 0, NoRecovery: !*u.recovery})
	if err != nil {
		return existsMessage(err)
	}
	u.dev = d
	verb := "attached"
	if d.Reattached() {
		verb = "reattached"
	}
	fmt.Fprintf(stdout, "%s %s (%d bytes, %d queues, depth %d, read-only)\n", verb, d.Path(), dev.Size(), d.Queues(), d.Depth())
	return nil
}

// existsMessage turns ublk's ExistsError into what to do about it.
func existsMessage(err error) error {
	var e *ublk.ExistsError
	if !errors.As(err, &e) {
		return err
	}
	switch {
	case e.Running:
		return fmt.Errorf("/dev/ublkb%d exists and is served by pid %d", e.ID, e.PID)
	case e.Recoverable:
		return fmt.Errorf("/dev/ublkb%d exists (left by pid %d): use --reattach to recover it, or remove it", e.ID, e.PID)
	default:
		return fmt.Errorf("/dev/ublkb%d exists (%s, left by pid %d) and cannot be recovered: remove it", e.ID, e.State, e.PID)
	}
}

// close stops and deletes the ublk device (after in-flight requests).
func (u *ublkFlags) close(log *slog.Logger) error {
	if u.dev == nil {
		return nil
	}
	err := u.dev.Close()
	if err != nil {
		log.Error("ublk", "device", u.dev.Path(), "err", err)
	}
	u.dev = nil
	return err
}
