package blobcache

import (
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/erofs-blockd/erofs-blockd/cache"
)

// Span is a piece of one regular file's data stored contiguously in an input
// file: bytes [Off, Off+Len) of the input hold bytes [Logical, Logical+Len)
// of a file of FileSize bytes whose content identity is Content.
type Span struct {
	Off, Len, Logical, FileSize int64
	Content                     string
}

// ReaderConfig describes one input file of one export.
type ReaderConfig struct {
	Backend *Backend
	// FileID is the physical identity of the file (e.g. "dev:ino"); equal
	// FileIDs are the same file.
	FileID string
	// BlobID is the content identity of the whole file: FileID, or a
	// checked tag ("uuid:..."/"sha256:..." with the size).
	BlobID string
	// Spans are content-keyed regions (fingerprinted file data).
	Spans []Span
}

type span struct {
	Span
	id uint64
}

// Reader is a caching io.ReaderAt over one input file of one export.
// Reads pass straight to the backend until Enable is called (composition
// checks and digest hashing should not fill the cache).
type Reader struct {
	sh      *Shared
	be      *Backend
	size    int64
	blobID  uint64
	id      origin
	origin  cache.Origin
	spans   []span
	enabled atomic.Bool

	padMu sync.Mutex
	pad   map[int64]bool // tail page -> padding is zero (absent: unknown)
}

// NewReader makes the reader. Identities are interned in sh.
func (sh *Shared) NewReader(cfg ReaderConfig) *Reader {
	r := &Reader{
		sh: sh, be: cfg.Backend, size: cfg.Backend.Size,
		blobID: sh.intern("blob\x00" + cfg.BlobID), id: origin{cfg.FileID, cfg.BlobID},
		origin: sh.newOrigin(origin{cfg.FileID, cfg.BlobID}), pad: make(map[int64]bool),
	}
	r.SetSpans(cfg.Spans)
	return r
}

// SetSpans replaces the content-keyed regions. It must be called before
// Enable.
func (r *Reader) SetSpans(spans []Span) {
	r.spans = r.spans[:0]
	for _, s := range spans {
		if s.Len <= 0 || s.Off < 0 || s.Off+s.Len > r.size || s.Logical < 0 || s.Logical+s.Len > s.FileSize {
			continue
		}
		r.spans = append(r.spans, span{Span: s, id: r.sh.intern("content\x00" + s.Content)})
	}
	sort.Slice(r.spans, func(i, j int) bool { return r.spans[i].Off < r.spans[j].Off })
}

// Enable turns caching on.
func (r *Reader) Enable() { r.enabled.Store(true) }

// Size is the input file's size.
func (r *Reader) Size() int64 { return r.size }

// page is one page of a request.
type page struct {
	start   int64 // byte offset of the page in the input file
	key     cache.Key
	vlen    int  // value length: bytes of the page the key covers
	content bool // key is a content key
	padLen  int  // content tail page: bytes after vlen that are this file's padding
	fl      *cache.Flight
}

// classify picks the key for the page starting at a.
func (r *Reader) classify(a int64) page {
	end := min(a+PageSize, r.size)
	pg := page{start: a, key: cache.Key{ID: r.blobID, Index: uint64(a / PageSize)}, vlen: int(end - a)}
	// last span with Off <= a
	i := sort.Search(len(r.spans), func(i int) bool { return r.spans[i].Off > a }) - 1
	if i < 0 {
		return pg
	}
	s := &r.spans[i]
	rel := a - s.Off
	if rel >= s.Len || (s.Logical+rel)%PageSize != 0 {
		return pg
	}
	dataEnd := s.Off + s.Len
	switch {
	case a+PageSize <= dataEnd:
		// a whole page of file data
	case s.Logical+s.Len == s.FileSize:
		// the file's last page: the rest up to the page end (or the input's
		// end) is padding
	default:
		return pg
	}
	vlen := min(dataEnd, end) - a
	return page{start: a, key: cache.Key{ID: s.id, Index: uint64((s.Logical + rel) / PageSize)},
		vlen: int(vlen), content: true, padLen: int(end - a - vlen)}
}

// ReadAt implements io.ReaderAt. A read the input file cannot satisfy
// returns io.EOF with n = 0, so flatdev reports the truncation.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if !r.enabled.Load() || off < 0 || off+int64(len(p)) > r.size {
		return r.be.ReadAt(p, off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := r.read(p, off, int64(len(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Prefetch brings [off, off+n) into the cache.
func (r *Reader) Prefetch(off, n int64) error {
	if !r.enabled.Load() {
		return nil
	}
	n = min(n, r.size-off)
	if off < 0 || n <= 0 {
		return nil
	}
	return r.read(nil, off, n)
}

// read fills p (nil: only warm the cache) with [off, off+n).
func (r *Reader) read(p []byte, off, n int64) error {
	end := off + n
	put := func(start int64, data []byte) {
		if p == nil {
			return
		}
		s, e := max(start, off), min(start+int64(len(data)), end)
		if s < e {
			copy(p[s-off:e-off], data[s-start:e-start])
		}
	}
	c := r.sh.c
	var leaders, waiters, pads []page
	for a := off / PageSize * PageSize; a < end; a += PageSize {
		pg := r.classify(a)
		val, origin, ok, fl, leader := c.Acquire(pg.key)
		switch {
		case ok:
			if len(val) != pg.vlen { // cannot happen: identities include sizes
				if err := r.direct(pg, put); err != nil {
					return err
				}
				continue
			}
			r.countHit(pg, origin)
			put(a, val)
			if pg.padLen > 0 {
				pads = append(pads, pg)
			}
		case leader:
			pg.fl = fl
			leaders = append(leaders, pg)
		default:
			pg.fl = fl
			waiters = append(waiters, pg)
		}
	}
	// Fetch runs of consecutive pages we lead with one backend read each,
	// and complete them before waiting on anyone else's fetch.
	var firstErr error
	for i := 0; i < len(leaders); {
		j := i + 1
		for j < len(leaders) && leaders[j].start == leaders[j-1].start+PageSize {
			j++
		}
		run := leaders[i:j]
		from := run[0].start
		to := min(run[len(run)-1].start+PageSize, r.size)
		buf := make([]byte, to-from)
		got, err := r.be.ReadAt(buf, from)
		if got < len(buf) {
			if err == nil || err == io.EOF {
				err = io.EOF
			}
			for _, pg := range run {
				c.Fail(pg.key, pg.fl, err)
			}
			if firstErr == nil {
				firstErr = err
			}
			i = j
			continue
		}
		for _, pg := range run {
			// Each value gets its own array, so the cache's byte bound is
			// what it holds (a slice of buf would pin the whole run).
			v := make([]byte, pg.vlen)
			copy(v, buf[pg.start-from:])
			c.Complete(pg.key, pg.fl, v, r.origin)
			if pg.padLen > 0 {
				padding := buf[pg.start-from+int64(pg.vlen) : pg.start-from+int64(pg.vlen)+int64(pg.padLen)]
				r.setPad(pg.start, allZero(padding))
			}
			put(pg.start, buf[pg.start-from:min(pg.start-from+PageSize, int64(len(buf)))])
		}
		i = j
	}
	if firstErr != nil {
		// Still release nobody else: every flight we led is completed or failed.
		return firstErr
	}
	for _, pg := range waiters {
		val, origin, err := pg.fl.Wait()
		if err != nil || len(val) != pg.vlen {
			// The leader failed; read the page ourselves, uncached.
			if p == nil {
				continue
			}
			if err := r.direct(pg, put); err != nil {
				return err
			}
			continue
		}
		r.countHit(pg, origin)
		put(pg.start, val)
		if pg.padLen > 0 {
			pads = append(pads, pg)
		}
	}
	if p == nil {
		return nil
	}
	for _, pg := range pads {
		if err := r.fillPad(pg, put); err != nil {
			return err
		}
	}
	return nil
}

// direct reads one page from the backend.
func (r *Reader) direct(pg page, put func(int64, []byte)) error {
	buf := make([]byte, min(PageSize, r.size-pg.start))
	if got, err := r.be.ReadAt(buf, pg.start); got < len(buf) {
		if err == nil {
			err = io.EOF
		}
		return err
	}
	put(pg.start, buf)
	return nil
}

// fillPad serves the padding of a content-keyed tail page: zeros once this
// input's padding is known to be zero, else the input's own bytes.
func (r *Reader) fillPad(pg page, put func(int64, []byte)) error {
	from := pg.start + int64(pg.vlen)
	r.padMu.Lock()
	zero, known := r.pad[pg.start]
	r.padMu.Unlock()
	buf := make([]byte, pg.padLen)
	if known && zero {
		put(from, buf)
		return nil
	}
	r.sh.padReads.Add(1)
	if got, err := r.be.ReadAt(buf, from); got < len(buf) {
		if err == nil {
			err = io.EOF
		}
		return fmt.Errorf("padding at %d: %w", from, err)
	}
	r.setPad(pg.start, allZero(buf))
	put(from, buf)
	return nil
}

func (r *Reader) setPad(start int64, zero bool) {
	r.padMu.Lock()
	r.pad[start] = zero
	r.padMu.Unlock()
}

// countHit counts a hit on a page another reader filled: the same file
// (another export), a copy of the same blob, or else equal file content.
func (r *Reader) countHit(pg page, o cache.Origin) {
	if o == r.origin {
		return
	}
	other := r.sh.originOf(o)
	switch {
	case other.file == r.id.file:
		r.sh.dedupFile.Add(1)
	case other.blob == r.id.blob:
		r.sh.dedupCopy.Add(1)
	case pg.content:
		r.sh.dedupContent.Add(1)
	default:
		r.sh.dedupCopy.Add(1) // cannot happen: blob keys are the blob identity
	}
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
