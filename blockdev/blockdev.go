// Package blockdev holds the one narrow interface every layer of erofs-blockd
// speaks: a read-only block device is an io.ReaderAt with a size. Optional
// interfaces let a device describe holes (for NBD_CMD_BLOCK_STATUS) and accept
// prefetch hints (for NBD_CMD_CACHE). It owns no behaviour.
package blockdev

import "io"

// Device is a read-only, fixed-size block device. ReadAt must be safe for
// concurrent use and must return io.EOF only past Size.
type Device interface {
	io.ReaderAt
	Size() int64
}

// Extent is a run of the device that is either data or a hole (reads as zeros).
type Extent struct {
	Offset int64
	Length int64
	Hole   bool
}

// Mapper is implemented by devices that know where their holes are.
// Extents returns consecutive extents covering at least [off, off+length)
// clipped to the device size, starting exactly at off.
type Mapper interface {
	Extents(off, length int64) ([]Extent, error)
}

// Prefetcher is implemented by devices that can warm a cache for a range.
type Prefetcher interface {
	Prefetch(off, length int64) error
}
