// Package kernel attaches a Linux /dev/nbdX block device to an in-process
// NBD server.
//
// It owns the kernel side of NBD only: creating socketpairs, handing one end
// of each to the kernel (generic netlink family "nbd", or the legacy ioctls as
// a fallback), running the caller's transmission-phase server on the other
// end, and tearing the device down again. It knows nothing about EROFS or the
// NBD handshake: the kernel client never negotiates, so the serve callback
// starts directly in the transmission phase.
//
//	dev, err := kernel.Attach(ctx, kernel.Config{
//		Index: 0, Size: size, Connections: 4, ReadOnly: true,
//		BackendID: "erofs-blockd:" + digest,
//	}, func(c net.Conn) { srv.ServeTransmission(ctx, c, "") })
//	...
//	err = dev.Detach()
//
// Netlink (Linux 4.12+) is preferred: it needs no thread parked in the kernel,
// reports the chosen index, and supports reattaching a restarted server to a
// live device (Reattach, NBD_CMD_RECONFIGURE). The ioctl path parks one
// OS thread in NBD_DO_IT with all signals blocked, because a signal delivered
// to that thread would make the kernel tear the device down.
//
// Everything here needs CAP_SYS_ADMIN and the nbd driver. The package's
// kernel tests therefore run inside a QEMU guest; see internal/vmtest and
// TestGuestAttach.
package kernel
