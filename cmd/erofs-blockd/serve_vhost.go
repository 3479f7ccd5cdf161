package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/spf13/pflag"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
	"github.com/erofs-blockd/erofs-blockd/nbd"
	"github.com/erofs-blockd/erofs-blockd/vhostuser"
)

// vhostFlags wires `serve --vhost-user-blk PATH`: the first export is also
// served to a vhost-user front-end (QEMU, cloud-hypervisor, Firecracker)
// on a unix socket (package vhostuser). Front-ends are served one after
// another: after one disconnects the next (or the same, reconnecting) is
// accepted.
type vhostFlags struct {
	path   *string
	queues *int
	serial *string
	l      net.Listener
	cancel context.CancelFunc
	done   chan error
}

func registerVhostFlags(fs *pflag.FlagSet) *vhostFlags {
	v := &vhostFlags{}
	v.path = fs.String("vhost-user-blk", "", "also serve the image as a read-only vhost-user-blk device on the unix socket `PATH` (mode 0600), for QEMU / cloud-hypervisor / Firecracker")
	v.queues = fs.Int("vhost-queues", 4, "virtqueues offered on --vhost-user-blk (the front-end may use fewer)")
	v.serial = fs.String("vhost-serial", "erofs-blockd", "serial number (VIRTIO_BLK_T_GET_ID, at most 20 bytes) of the --vhost-user-blk device")
	return v
}

func (v *vhostFlags) enabled() bool { return *v.path != "" }

// start listens and serves dev in the background; it prints its line.
func (v *vhostFlags) start(dev blockdev.Device, blockSize, imageBlockSize uint32, stdout io.Writer, log *slog.Logger) error {
	if !v.enabled() {
		return nil
	}
	if blockSize == 0 {
		blockSize = imageBlockSize
	}
	s, err := vhostuser.New(vhostuser.Config{Device: dev, Queues: *v.queues, BlockSize: blockSize, Serial: *v.serial, Logger: log})
	if err != nil {
		return err
	}
	l, _, err := nbd.ListenWith("unix:"+*v.path, nbd.ListenOptions{SocketMode: 0o600})
	if err != nil {
		return fmt.Errorf("--vhost-user-blk: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	v.l, v.cancel, v.done = l, cancel, make(chan error, 1)
	go func() { v.done <- s.Serve(ctx, l) }()
	fmt.Fprintf(stdout, "serving vhost-user-blk %s (%d bytes, %d queues, block size %d, read-only)\n", *v.path, dev.Size(), *v.queues, blockSize)
	return nil
}

// close stops serving (after the requests in progress) and removes the socket.
func (v *vhostFlags) close(log *slog.Logger) error {
	if v.cancel == nil {
		return nil
	}
	v.cancel()
	err := <-v.done
	v.l.Close()
	v.cancel = nil
	if err != nil {
		log.Error("vhost-user-blk", "err", err)
	}
	return err
}
