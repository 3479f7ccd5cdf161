//go:build !linux

package kernel

import (
	"context"
	"errors"
	"net"
)

var errUnsupported = errors.New("nbd: kernel attach is only supported on Linux")

// Device is an attached /dev/nbdN (Linux only).
type Device struct{}

// Attach is only supported on Linux.
func Attach(ctx context.Context, cfg Config, serve func(net.Conn)) (*Device, error) {
	return nil, errUnsupported
}

// Reattach is only supported on Linux.
func Reattach(ctx context.Context, cfg Config, serve func(net.Conn)) (*Device, error) {
	return nil, errUnsupported
}

// Status is only supported on Linux.
func Status(ctx context.Context, index int) (map[int]bool, error) { return nil, errUnsupported }

// Path returns "".
func (d *Device) Path() string { return "" }

// Detach does nothing.
func (d *Device) Detach() error { return errUnsupported }
