// Package blobcache puts the shared content cache (package cache) under
// flatdev: it maps byte ranges of an input file (primary or blob) to content
// keys, so that equal bytes are cached once however many exports, copies or
// images they appear in. It is the only package that knows both EROFS
// (which file data lives where, fingerprints) and the cache; package cache
// sees opaque keys and flatdev sees io.ReaderAts.
//
// Identities, strongest dedup first:
//   - content: regular-file data of images in the same domain whose files
//     carry an ishare fingerprint (or got one computed at startup) is keyed
//     by (fingerprint, file size, page index in the file);
//   - blob copy: a blob whose slot tag is a UUID equal to the blob's own
//     EROFS UUID, or a sha256, is keyed by (tag, size, page index);
//   - file: anything else by (device, inode, size, page index) of the file,
//     so the same file composed into several exports is cached once.
//
// Pages are PageSize bytes of the input file. A file's last, partial page
// is keyed by content too; its padding (bytes after the file's end) is
// served from the reader's own blob after checking once that it is zero.
//
// An input that is a plain local file (no injected delay) is read past the
// cache where that is cheaper: zero-copy READs go from the file to the
// socket (Reader.ZeroCopyFile), and its pages are cached only when read
// again while their key is a ghost (cache.AcquireOnSecondMiss).
package blobcache

import (
	"github.com/erofs-blockd/erofs-blockd/blockdev"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Backend is one opened input file as the data path reads it: it counts
// bytes and errors (for metrics) and can add latency per read (to model a
// remote blob store in benchmarks). It is safe for concurrent use.
type Backend struct {
	Name  string
	R     io.ReaderAt
	Size  int64
	Delay time.Duration // added to every read (benchmarks, tests)

	reads, bytes, errors atomic.Uint64

	nwOnce sync.Once
	nw     blockdev.NoWaitReader // R's no-wait reads; nil: none
}

// BackendStats are a backend's cumulative counters.
type BackendStats struct {
	Name                 string
	Reads, Bytes, Errors uint64
}

// ReadAt reads from the file, counting.
func (b *Backend) ReadAt(p []byte, off int64) (int, error) {
	if b.Delay > 0 {
		time.Sleep(b.Delay)
	}
	n, err := b.R.ReadAt(p, off)
	b.reads.Add(1)
	b.bytes.Add(uint64(n))
	if err != nil && !(err == io.EOF && n == len(p)) {
		b.errors.Add(1)
	}
	return n, err
}

// ReadAtNoWait implements blockdev.NoWaitReader: R's no-wait read (an
// *os.File with preadv2 RWF_NOWAIT, or R's own), counted like ReadAt;
// always blockdev.ErrWouldBlock with an injected delay.
func (b *Backend) ReadAtNoWait(p []byte, off int64) (int, error) {
	if b.Delay > 0 {
		return 0, blockdev.ErrWouldBlock
	}
	b.nwOnce.Do(func() {
		switch r := b.R.(type) {
		case blockdev.NoWaitReader:
			b.nw = r
		case *os.File:
			if w := blockdev.NewNoWaitFile(r); w != nil {
				b.nw = w
			}
		}
	})
	if b.nw == nil {
		return 0, blockdev.ErrWouldBlock
	}
	n, err := b.nw.ReadAtNoWait(p, off)
	if err != nil || n < len(p) {
		return 0, blockdev.ErrWouldBlock // ReadAt counts the retry
	}
	b.reads.Add(1)
	b.bytes.Add(uint64(n))
	return n, nil
}

// ReadSlices implements blockdev.SliceReader when R does (a remote
// blob's fetched chunks), counted like ReadAt.
func (b *Backend) ReadSlices(dst [][]byte, off int64, n int) ([][]byte, bool, error) {
	sr, ok := b.R.(blockdev.SliceReader)
	if !ok {
		return dst, false, nil
	}
	out, ok, err := sr.ReadSlices(dst, off, n)
	if !ok {
		return out, false, nil
	}
	if b.Delay > 0 {
		time.Sleep(b.Delay)
	}
	b.reads.Add(1)
	if err != nil {
		b.errors.Add(1)
		return out, true, err
	}
	b.bytes.Add(uint64(n))
	return out, true, nil
}

// Stats returns the counters.
func (b *Backend) Stats() BackendStats {
	return BackendStats{Name: b.Name, Reads: b.reads.Load(), Bytes: b.bytes.Load(), Errors: b.errors.Load()}
}

// ZeroCopyFile returns the underlying file when reads may bypass this
// wrapper and go straight from the file to a socket (sendfile): only without
// an injected delay. The caller counts what it sends with CountZeroCopy, so
// the backend byte counters stay complete.
func (b *Backend) ZeroCopyFile() (*os.File, bool) {
	f, ok := b.R.(*os.File)
	return f, ok && b.Delay == 0
}

// FileLease lends the file holding [off, off+n) when the input can (a
// remote blob's stored chunk, blockdev.FileLeaser), only without an
// injected delay; the bytes are counted.
func (b *Backend) FileLease(off, n int64) (*os.File, int64, func(), bool) {
	l, ok := b.R.(blockdev.FileLeaser)
	if !ok || b.Delay > 0 {
		return nil, 0, nil, false
	}
	f, foff, release, ok := l.FileLease(off, n)
	if ok {
		b.CountZeroCopy(n)
	}
	return f, foff, release, ok
}

// ReadStored reads [off, off+len(p)) when the input holds it locally
// (blockdev.StoredReader: a remote blob's disk-cached chunks), counting the
// bytes; false: nothing was fetched. Not with an injected delay.
func (b *Backend) ReadStored(p []byte, off int64) bool {
	s, ok := b.R.(blockdev.StoredReader)
	if !ok || b.Delay > 0 || !s.ReadStored(p, off) {
		return false
	}
	b.reads.Add(1)
	b.bytes.Add(uint64(len(p)))
	return true
}

// setReadaheadSkip passes skip to the input when it reads ahead
// (blockdev.ReadaheadSkipper).
func (b *Backend) setReadaheadSkip(skip func(off, n int64) bool) {
	if s, ok := b.R.(blockdev.ReadaheadSkipper); ok {
		s.SetReadaheadSkip(skip)
	}
}

// CanReadStored reports whether ReadStored may ever succeed.
func (b *Backend) CanReadStored() bool {
	s, ok := b.R.(blockdev.StoredReader)
	return ok && b.Delay == 0 && s.CanStore()
}

// CountZeroCopy records a read served from ZeroCopyFile.
func (b *Backend) CountZeroCopy(n int64) {
	b.reads.Add(1)
	b.bytes.Add(uint64(n))
}

// Prefetch passes a prefetch to the input when it can (a remote blob);
// the bytes are not counted as backend reads until a reader reads them.
func (b *Backend) Prefetch(off, n int64) error {
	if p, ok := b.R.(blockdev.Prefetcher); ok {
		return p.Prefetch(off, n)
	}
	return nil
}
