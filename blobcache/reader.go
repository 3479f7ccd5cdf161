package blobcache

import (
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
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
	// cheap: the input is a plain local file (ZeroCopyFile), whose reads
	// cost about what a hit does; its pages are cached only when read
	// again (cache.AcquireOnSecondMiss).
	cheap bool

	regIDs []uint64    // contents with locations in this reader (alias.go), under sh.mu
	lends  atomic.Bool // regIDs is not empty: a remote input with content spans

	closeOnce sync.Once
}

// NewReader makes the reader. Identities are interned in sh.
func (sh *Shared) NewReader(cfg ReaderConfig) *Reader {
	r := &Reader{
		sh: sh, be: cfg.Backend, size: cfg.Backend.Size,
		blobID: sh.intern("blob\x00" + cfg.BlobID), id: origin{cfg.FileID, cfg.BlobID},
		origin: sh.newOrigin(origin{cfg.FileID, cfg.BlobID}),
	}
	_, r.cheap = cfg.Backend.ZeroCopyFile()
	r.SetSpans(cfg.Spans)
	sh.padMu.Lock()
	sh.padRefs[r.blobID]++
	sh.padMu.Unlock()
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
	r.sh.register(r)
}

// ZeroCopyFile implements flatdev.ZeroCopySource: a read that NBD can send
// with sendfile (at least 64 KiB inside one input) goes straight from a
// local input file to the socket, past the cache, as it does without one.
// The kernel's page cache already holds those pages (once per file,
// however many exports name it), and a copy through this cache costs more
// than the pread it would save. Inputs that are not plain files without an
// injected delay (remote, decoded, --debug-backend-delay) never qualify.
func (r *Reader) ZeroCopyFile() (*os.File, bool) { return r.be.ZeroCopyFile() }

// CountZeroCopy records n bytes sent from ZeroCopyFile.
func (r *Reader) CountZeroCopy(n int64) {
	r.be.CountZeroCopy(n)
	r.sh.zeroCopyBytes.Add(uint64(n))
}

// FileLease passes blockdev.FileLeaser through (a remote blob's chunk
// stored in the disk cache is a local file too; see ZeroCopyFile).
func (r *Reader) FileLease(off, n int64) (*os.File, int64, func(), bool) {
	f, foff, release, ok := r.be.FileLease(off, n)
	if ok {
		r.sh.zeroCopyBytes.Add(uint64(n))
	}
	return f, foff, release, ok
}

// BlobID is the content identity of the whole input (ReaderConfig.BlobID).
func (r *Reader) BlobID() string { return r.id.blob }

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
}

// classify picks the key for the page starting at a.
func (r *Reader) classify(a int64) page {
	end := min(a+PageSize, r.size)
	pg := page{start: a, key: cache.Key{ID: r.blobID, Index: uint64(a / PageSize)}, vlen: int(end - a)}
	if len(r.spans) == 0 {
		return pg
	}
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

// ReadAtNoWait implements blockdev.NoWaitReader. Uncached (before Enable)
// it is the backend's no-wait read; cached, a read inside one page that is
// a whole cached value (no padding to check) is copied from the cache, and
// anything else would block, so ReadAt looks it up and fetches it (and
// counts the hit or miss once).
func (r *Reader) ReadAtNoWait(p []byte, off int64) (int, error) {
	if !r.enabled.Load() || off < 0 || off+int64(len(p)) > r.size {
		return r.be.ReadAtNoWait(p, off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	start := off / PageSize * PageSize
	if off+int64(len(p)) > start+PageSize {
		return 0, blockdev.ErrWouldBlock
	}
	pg := r.classify(start)
	if pg.padLen > 0 || int64(pg.vlen) < off+int64(len(p))-start {
		return 0, blockdev.ErrWouldBlock
	}
	var n int
	var o cache.Origin
	var ok bool
	if off == start && len(p) == pg.vlen {
		n, o, ok = r.sh.c.Get(pg.key, p)
	} else {
		s := scratchPool.Get().(*scratch)
		n, o, ok = r.sh.c.Get(pg.key, s.edge[0][:pg.vlen])
		if ok && n == pg.vlen {
			copy(p, s.edge[0][off-start:])
		}
		scratchPool.Put(s)
	}
	if !ok {
		return 0, blockdev.ErrWouldBlock
	}
	if n != pg.vlen { // cannot happen: identities include sizes
		return 0, blockdev.ErrWouldBlock
	}
	r.countHit(&pg, o)
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

// chunkPages bounds the pages one batch looks up (and so the scratch
// memory of a read): longer reads go in chunks of this many pages.
const chunkPages = 256

// scratch is the per-read working memory, pooled.
type scratch struct {
	reqs  []cache.Req
	pages []page
	vals  [][]byte
	tmp   []byte
	edge  [2][]byte // partial first/last pages of an unaligned read
}

var scratchPool = sync.Pool{New: func() any {
	return &scratch{edge: [2][]byte{make([]byte, PageSize), make([]byte, PageSize)}}
}}

// read fills p (nil: only warm the cache) with [off, off+n).
func (r *Reader) read(p []byte, off, n int64) error {
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	end := off + n
	for a := off; a < end; {
		b := min((a/PageSize+chunkPages)*PageSize, end)
		var q []byte
		if p != nil {
			q = p[a-off : b-off]
		}
		if err := r.readChunk(s, q, a, b); err != nil {
			return err
		}
		a = b
	}
	return nil
}

// readChunk fills p (nil: only warm the cache) with [off, end): it looks
// all pages up at once (hits are copied straight into p), reads each run
// of consecutive missing pages it leads with one backend read (into p when
// the run lies inside it) and stores them, then waits for pages others are
// fetching. Every Flight it leads is resolved before it waits on any.
func (r *Reader) readChunk(s *scratch, p []byte, off, end int64) error {
	first := off / PageSize * PageSize
	np := int((end - first + PageSize - 1) / PageSize)
	if cap(s.reqs) < np {
		s.reqs = make([]cache.Req, np)
		s.pages = make([]page, np)
	}
	reqs, pages := s.reqs[:np], s.pages[:np]
	defer func() {
		clear(reqs) // no references to p or to flights stay in the pool
		clear(s.vals[:cap(s.vals)])
	}()
	put := func(start int64, data []byte) {
		if p == nil {
			return
		}
		a, b := max(start, off), min(start+int64(len(data)), end)
		if a < b {
			copy(p[a-off:b-off], data[a-start:b-start])
		}
	}
	inside := func(pg *page) bool { return pg.start >= off && pg.start+int64(pg.vlen) <= end }
	for i := range pages {
		pg := r.classify(first + int64(i)*PageSize)
		pages[i] = pg
		var dst []byte
		switch {
		case p == nil:
		case inside(&pg):
			dst = p[pg.start-off : pg.start-off+int64(pg.vlen)]
		default: // only the first and the last page can stick out
			dst = s.edge[min(i, 1)][:pg.vlen]
		}
		reqs[i] = cache.Req{Key: pg.key, Dst: dst}
	}
	c := r.sh.c
	if r.cheap && p != nil {
		c.AcquireOnSecondMiss(reqs)
	} else {
		c.Acquire(reqs)
	}

	// Runs left to us (cache.Miss) are read uncached, one backend read
	// each, padding included; runs we lead are read the same way, then
	// stored.
	var firstErr error
	for i := 0; i < np; {
		f, st := reqs[i].Flight, reqs[i].State
		if st != cache.Lead && st != cache.Miss {
			i++
			continue
		}
		j := i + 1
		for j < np && reqs[j].State == st && reqs[j].Flight == f {
			j++
		}
		from := pages[i].start
		to := min(pages[j-1].start+PageSize, r.size)
		intoP := p != nil && from >= off && to <= end
		var buf []byte
		if intoP {
			buf = p[from-off : to-off]
		} else {
			if int64(cap(s.tmp)) < to-from {
				s.tmp = make([]byte, to-from)
			}
			buf = s.tmp[:to-from]
		}
		got, err := r.fill(buf, from, pages[i:j])
		if st == cache.Miss {
			if got < len(buf) {
				if err == nil || err == io.EOF {
					err = io.EOF
				}
				// Flights we lead later in the chunk must still be resolved.
				if firstErr == nil {
					firstErr = err
				}
			} else if !intoP {
				put(from, buf)
			}
			i = j
			continue
		}
		if got < len(buf) {
			if err == nil || err == io.EOF {
				err = io.EOF
			}
			c.Fail(f, err)
			if firstErr == nil {
				firstErr = err
			}
			i = j
			continue
		}
		vals := s.vals[:0]
		for k := i; k < j; k++ {
			pg := &pages[k]
			o := pg.start - from
			vals = append(vals, buf[o:o+int64(pg.vlen)])
			if pg.padLen > 0 {
				r.setPad(pg.start, allZero(buf[o+int64(pg.vlen):o+int64(pg.vlen)+int64(pg.padLen)]))
			}
		}
		s.vals = vals
		c.Complete(f, vals, r.origin)
		if !intoP {
			put(from, buf)
		}
		i = j
	}
	if firstErr != nil {
		// Every flight we led is resolved; others' flights need nobody.
		return firstErr
	}

	// Hits (already copied) and pages others fetched.
	for i := range reqs {
		rq, pg := &reqs[i], &pages[i]
		var origin cache.Origin
		switch rq.State {
		case cache.Hit:
			if rq.Len != pg.vlen { // cannot happen: identities include sizes
				if err := r.direct(*pg, put); err != nil {
					return err
				}
				continue
			}
			origin = rq.Origin
		case cache.Wait:
			l, o, err := rq.Flight.Wait(rq.Index, rq.Dst)
			if err != nil || l != pg.vlen {
				// The leader failed; read the page ourselves, uncached.
				if p == nil {
					continue
				}
				if err := r.direct(*pg, put); err != nil {
					return err
				}
				continue
			}
			origin = o
		default:
			continue
		}
		r.countHit(pg, origin)
		if p == nil {
			continue
		}
		if !inside(pg) {
			put(pg.start, rq.Dst)
		}
		if pg.padLen > 0 {
			if err := r.fillPad(*pg, put); err != nil {
				return err
			}
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
	r.sh.padMu.Lock()
	zero, known := r.sh.pad[padKey{r.blobID, pg.start}]
	r.sh.padMu.Unlock()
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
	r.sh.padMu.Lock()
	if r.sh.padRefs[r.blobID] > 0 { // else nothing open would use it
		r.sh.pad[padKey{r.blobID, start}] = zero
	}
	r.sh.padMu.Unlock()
}

// countHit counts a hit on a page another reader filled: the same file
// (another export), a copy of the same blob, or else equal file content.
func (r *Reader) countHit(pg *page, o cache.Origin) {
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
