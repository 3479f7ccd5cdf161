package kernel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// Generic netlink "nbd" family, from include/uapi/linux/nbd-netlink.h.
const (
	nbdFamilyName = "nbd"

	cmdConnect     = 1
	cmdDisconnect  = 2
	cmdReconfigure = 3
	cmdStatus      = 5

	attrIndex           = 1
	attrSizeBytes       = 2
	attrBlockSizeBytes  = 3
	attrTimeout         = 4
	attrServerFlags     = 5
	attrClientFlags     = 6
	attrSockets         = 7
	attrDeadConnTimeout = 8
	attrDeviceList      = 9
	attrBackendID       = 10

	sockItem = 1
	sockFD   = 1

	deviceItem      = 1
	deviceIndex     = 1
	deviceConnected = 2
)

// errNoFamily means the kernel has no "nbd" generic netlink family (driver
// not loaded or too old).
var errNoFamily = errors.New("nbd: generic netlink family \"nbd\" not found (is the nbd module loaded?)")

type nlClient struct {
	c       *genetlink.Conn
	family  genetlink.Family
	timeout time.Duration
}

func dialNetlink(ctx context.Context, timeout time.Duration) (*nlClient, error) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial generic netlink: %w", err)
	}
	n := &nlClient{c: c, timeout: timeout}
	var fam genetlink.Family
	err = n.do(ctx, func() error {
		var err error
		fam, err = c.GetFamily(nbdFamilyName)
		return err
	})
	if err != nil {
		c.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %v", errNoFamily, err)
		}
		return nil, fmt.Errorf("nbd: look up generic netlink family %q: %w", nbdFamilyName, err)
	}
	n.family = fam
	return n, nil
}

func (n *nlClient) close() { n.c.Close() }

// do runs op with a deadline on the socket: the sooner of ctx's deadline and
// now+timeout; cancelling ctx interrupts op.
func (n *nlClient) do(ctx context.Context, op func() error) error {
	deadline := time.Now().Add(n.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := n.c.SetDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { n.c.SetDeadline(time.Unix(1, 0)) })
	err := op()
	if !stop() && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func (n *nlClient) execute(ctx context.Context, cmd uint8, ae *netlink.AttributeEncoder, flags netlink.HeaderFlags) ([]genetlink.Message, error) {
	data, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	msg := genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: n.family.Version},
		Data:   data,
	}
	var replies []genetlink.Message
	err = n.do(ctx, func() error {
		var err error
		replies, err = n.c.Execute(msg, n.family.ID, flags)
		return err
	})
	return replies, err
}

func encodeSockets(ae *netlink.AttributeEncoder, fds []int) {
	ae.Nested(attrSockets, func(nae *netlink.AttributeEncoder) error {
		for _, fd := range fds {
			nae.Nested(sockItem, func(sae *netlink.AttributeEncoder) error {
				sae.Uint32(sockFD, uint32(fd))
				return nil
			})
		}
		return nil
	})
}

// connect sends NBD_CMD_CONNECT and returns the index of the device.
func (n *nlClient) connect(ctx context.Context, cfg *Config, fds []int) (int, error) {
	ae := netlink.NewAttributeEncoder()
	if cfg.Index >= 0 {
		ae.Uint32(attrIndex, uint32(cfg.Index))
	}
	ae.Uint64(attrSizeBytes, uint64(cfg.Size))
	ae.Uint64(attrBlockSizeBytes, uint64(cfg.BlockSize))
	ae.Uint64(attrServerFlags, cfg.serverFlags())
	if t := seconds(cfg.Timeout); t > 0 {
		ae.Uint64(attrTimeout, t)
	}
	if t := seconds(cfg.DeadConnTimeout); t > 0 {
		ae.Uint64(attrDeadConnTimeout, t)
	}
	if cfg.BackendID != "" {
		ae.String(attrBackendID, cfg.BackendID)
	}
	encodeSockets(ae, fds)
	// The kernel answers a successful CONNECT with a message carrying
	// NBD_ATTR_INDEX; failures come back as an error message. No ACK flag:
	// it would queue a second message after the reply.
	replies, err := n.execute(ctx, cmdConnect, ae, netlink.Request)
	if err != nil {
		return -1, err
	}
	for _, m := range replies {
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			return -1, err
		}
		for ad.Next() {
			if ad.Type() == attrIndex {
				return int(ad.Uint32()), nil
			}
		}
		if err := ad.Err(); err != nil {
			return -1, err
		}
	}
	if cfg.Index >= 0 {
		return cfg.Index, nil
	}
	return -1, errors.New("reply carries no device index")
}

// disconnect sends NBD_CMD_DISCONNECT.
func (n *nlClient) disconnect(ctx context.Context, index int) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(index))
	_, err := n.execute(ctx, cmdDisconnect, ae, netlink.Request|netlink.Acknowledge)
	return err
}

// reconfigure sends NBD_CMD_RECONFIGURE with new sockets.
func (n *nlClient) reconfigure(ctx context.Context, cfg *Config, index int, fds []int) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(index))
	if t := seconds(cfg.Timeout); t > 0 {
		ae.Uint64(attrTimeout, t)
	}
	if t := seconds(cfg.DeadConnTimeout); t > 0 {
		ae.Uint64(attrDeadConnTimeout, t)
	}
	if cfg.BackendID != "" {
		ae.String(attrBackendID, cfg.BackendID)
	}
	encodeSockets(ae, fds)
	_, err := n.execute(ctx, cmdReconfigure, ae, netlink.Request|netlink.Acknowledge)
	return err
}

// status sends NBD_CMD_STATUS for one device (index >= 0) or all (-1).
func (n *nlClient) status(ctx context.Context, index int) (map[int]bool, error) {
	ae := netlink.NewAttributeEncoder()
	if index >= 0 {
		ae.Uint32(attrIndex, uint32(index))
	}
	replies, err := n.execute(ctx, cmdStatus, ae, netlink.Request)
	if err != nil {
		return nil, err
	}
	out := map[int]bool{}
	for _, m := range replies {
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			if ad.Type() != attrDeviceList {
				continue
			}
			ad.Nested(func(lad *netlink.AttributeDecoder) error {
				for lad.Next() {
					if lad.Type() != deviceItem {
						continue
					}
					idx, conn := -1, false
					lad.Nested(func(iad *netlink.AttributeDecoder) error {
						for iad.Next() {
							switch iad.Type() {
							case deviceIndex:
								idx = int(iad.Uint32())
							case deviceConnected:
								conn = iad.Uint8() != 0
							}
						}
						return nil
					})
					if idx >= 0 {
						out[idx] = conn
					}
				}
				return nil
			})
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Status reports, via NBD_CMD_STATUS, whether /dev/nbdN is configured
// (connected). index -1 reports every device the driver knows.
func Status(ctx context.Context, index int) (map[int]bool, error) {
	nl, err := dialNetlink(ctx, defaultOpTimeout)
	if err != nil {
		return nil, err
	}
	defer nl.close()
	st, err := nl.status(ctx, index)
	if err != nil {
		return nil, fmt.Errorf("nbd: netlink status %s: %w", indexName(index), err)
	}
	return st, nil
}

// Reattach hands new connections to a device that is still configured but
// whose connections died, e.g. because the server process restarted. It uses
// NBD_CMD_RECONFIGURE and so works only for devices attached by netlink, with
// the same BackendID, and only while the kernel still waits for the dead
// connections (Config.DeadConnTimeout). The kernel replaces only dead
// sockets; surplus connections are closed by it. cfg.Index must name the
// device.
func Reattach(ctx context.Context, cfg Config, serve func(net.Conn)) (*Device, error) {
	if serve == nil {
		return nil, errors.New("nbd: nil serve function")
	}
	if cfg.Index < 0 {
		return nil, errors.New("nbd: reattach needs a device index")
	}
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	if size, err := sysfsSize(cfg.Index); err == nil && size > 0 {
		cfg.Size = size
	}
	nl, err := dialNetlink(ctx, cfg.OpTimeout)
	if err != nil {
		return nil, err
	}
	defer nl.close()
	d := &Device{index: cfg.Index, method: MethodNetlink, cfg: cfg, log: cfg.Logger, serve: serve, done: make(chan struct{})}
	kfds, err := d.startConns(cfg.Connections)
	if err != nil {
		return nil, err
	}
	defer func() { closeFDs(kfds) }()
	if err := nl.reconfigure(ctx, &cfg, cfg.Index, kfds); err != nil {
		d.abort()
		return nil, fmt.Errorf("nbd: netlink reconfigure %s: %w", d.Path(), err)
	}
	// The kernel answers success even when it had no dead connection to
	// replace; it then drops the sockets, and every serve callback sees EOF
	// as soon as our copies of the kernel ends are closed.
	closeFDs(kfds)
	kfds = nil
	select {
	case <-d.done:
		return nil, fmt.Errorf("nbd: reattach %s: the kernel took none of the new connections (none was dead?)", d.Path())
	case <-time.After(100 * time.Millisecond):
	}
	d.log.Debug("nbd: reattached", "device", d.Path(), "connections", cfg.Connections)
	return d, nil
}
