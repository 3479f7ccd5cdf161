// Package blockdev holds the one narrow interface every layer of erofs-blockd
// speaks: a read-only block device is an io.ReaderAt with a size. Optional
// interfaces let a device describe holes (for NBD_CMD_BLOCK_STATUS), accept
// prefetch hints (for NBD_CMD_CACHE) and name the file behind a range (for
// zero-copy sends) and try a read without waiting for storage. Besides
// NoWaitFile (that try for a file: preadv2 with RWF_NOWAIT) it owns no
// behaviour.
package blockdev

import (
	"errors"
	"io"
	"os"
)

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

// FileRanger is implemented by devices that can name the file holding a
// range, so a server can send it with sendfile(2) instead of reading it.
// ok is true only when the device's bytes [off, off+length) are exactly
// f's bytes [fileOff, fileOff+length) as of composition: no overlay, hole,
// padding, cache or other transformation in between. The file may since
// have been truncated; callers must check.
type FileRanger interface {
	FileRange(off, length int64) (f *os.File, fileOff int64, ok bool)
}

// FileLeaser is FileRanger for files that are lent rather than owned by
// the device (a chunk file of a disk cache, which may be evicted): f stays
// valid until the caller calls release (nil: nothing to release), which it
// must do once done with f. Servers prefer it to FileRange when both exist.
type FileLeaser interface {
	FileLease(off, length int64) (f *os.File, fileOff int64, release func(), ok bool)
}

// StoredReader reads a range only when it is held locally (a remote blob's
// chunks in a disk cache): ReadStored fills p with [off, off+len(p)) and
// returns true, or returns false having fetched nothing (p may then hold
// anything). Readers use it to take bytes they know to be equal (the same
// file content by fingerprint) from another input that already has them.
// CanStore is false when the input never holds anything locally (a
// remote blob without a disk cache).
type StoredReader interface {
	ReadStored(p []byte, off int64) bool
	CanStore() bool
}

// ReadaheadSkipper is an input that reads ahead of sequential readers (a
// remote blob) and can be told which ranges not to read ahead into:
// skip(off, n) true means [off, off+n) is read from elsewhere (file content
// another input holds), so fetching it ahead would be wasted.
type ReadaheadSkipper interface {
	SetReadaheadSkip(skip func(off, n int64) bool)
}

// NoWaitReader is implemented by devices that can try a read without
// waiting for storage: ReadAtNoWait fills all of p from off, as ReadAt
// would, when that needs no I/O wait (the bytes are in the page cache or
// in memory), and otherwise returns ErrWouldBlock quickly, with p's
// contents undefined. It may return ErrWouldBlock for any reason (a short
// read, a file system without RWF_NOWAIT, an injected delay); the caller
// then reads with ReadAt, which reports real errors. It never returns
// io.EOF for a range inside Size. A server uses it to answer small reads
// on the goroutine that decoded them, without a hand-off.
type NoWaitReader interface {
	ReadAtNoWait(p []byte, off int64) (n int, err error)
}

// SliceReader is implemented by readers that hold what they read in
// memory of their own (a remote blob's fetched chunks) and can lend it
// instead of copying: ReadSlices appends to dst slices that together hold
// [off, off+n), waiting and fetching as ReadAt would. The slices must not
// be written; they stay valid as long as they are referenced. ok false
// (nothing appended, nil error): this range is not lent, read it with
// ReadAt. A server sends lent slices with one writev, saving a copy of
// every byte.
type SliceReader interface {
	ReadSlices(dst [][]byte, off int64, n int) (out [][]byte, ok bool, err error)
}

// ErrWouldBlock is returned by ReadAtNoWait when the read would wait.
var ErrWouldBlock = errors.New("read would block")
