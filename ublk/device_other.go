//go:build !linux

package ublk

import "errors"

// Device is a started ublk device (Linux only).
type Device struct{}

// Start fails: ublk is a Linux driver.
func Start(Config) (*Device, error) { return nil, errors.New("ublk: Linux only") }

// Path returns "".
func (d *Device) Path() string { return "" }

// Queues returns 0.
func (d *Device) Queues() int { return 0 }

// Depth returns 0.
func (d *Device) Depth() int { return 0 }

// Reattached returns false.
func (d *Device) Reattached() bool { return false }

// Recovery returns false, false.
func (d *Device) Recovery() (recovery, reissue bool) { return false, false }

// Close does nothing.
func (d *Device) Close() error { return nil }
