package blobcache

import (
	"github.com/erofs-blockd/erofs-blockd/blockdev"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/mapping"
)

// Device is a flatdev.Device whose inputs are Readers, plus NBD_CMD_CACHE
// support: Prefetch warms the shared cache for a range of the device.
type Device struct {
	*flatdev.Device
	readers []*Reader // index = mapping dev; nil: not cached
}

var (
	_ blockdev.Device     = (*Device)(nil)
	_ blockdev.Mapper     = (*Device)(nil)
	_ blockdev.Prefetcher = (*Device)(nil)
)

// NewDevice wraps d; readers[i] must be the Reader d reads input i through
// (nil for inputs read directly). It enables the readers.
func NewDevice(d *flatdev.Device, readers []*Reader) *Device {
	for _, r := range readers {
		if r != nil {
			r.Enable()
		}
	}
	return &Device{Device: d, readers: readers}
}

// Prefetch implements blockdev.Prefetcher.
func (d *Device) Prefetch(off, length int64) error {
	return d.Map().Runs(off, length, func(r mapping.Run) error {
		if r.Hole || r.Dev >= len(d.readers) || d.readers[r.Dev] == nil {
			return nil
		}
		return d.readers[r.Dev].Prefetch(r.DevOff, r.Len)
	})
}
