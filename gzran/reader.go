package gzran

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sort"
	"sync"
	"sync/atomic"
)

// Options tune a Reader.
type Options struct {
	// CacheBytes bounds the decoded-segment cache; 0 means 64 MiB, < 0
	// disables caching (and keeping suspended decoders).
	CacheBytes int64

	// Readahead is how many bytes of the following spans a sequential
	// reader (one whose reads cross from a span into the next) has
	// decoded into the cache in the background, one span at a time; 0
	// means 16 MiB (at most a quarter of the cache), < 0 none. Random
	// reads never trigger it.
	Readahead int64

	segSize int64 // decode/cache unit inside a span (tests); 0: defaultSegSize
}

const (
	defaultCache   = 64 << 20
	defaultSegSize = 256 << 10
	maxCursors     = 8
	maxHeld        = 16 << 20
	defaultAhead   = 16 << 20
	maxAheadSpans  = 4
)

// Stats are a Reader's counters.
type Stats struct {
	SpanDecodes  int64 // decode runs (each starts at a point or resumes a suspended decoder)
	Resumes      int64 // of those, how many continued a suspended decoder
	CacheHits    int64 // span parts served from the cache
	CacheMisses  int64 // span parts that needed a decode
	BytesDecoded int64 // uncompressed bytes produced by decoding
	CRCErrors    int64 // spans whose CRC32C did not match SpanCRC
	CachedBytes  int64 // bytes in the cache now
	Readaheads   int64 // spans decoded ahead of a sequential reader
}

// Reader serves the uncompressed bytes of a gzip blob through an Index.
// ReadAt is safe for concurrent use; readers of the same span share one
// decode.
type Reader struct {
	src     io.ReaderAt
	srcSize int64
	pts     []Point
	size    int64
	crcs    []uint32
	seg     int64
	cache   *segCache // nil: disabled

	mu      sync.Mutex
	locks   map[int]*spanLock
	cursors map[int]*cursor
	curTick int64

	ahead   int64        // readahead bytes; 0: none
	lastEnd atomic.Int64 // where the previous read ended
	raBusy  atomic.Bool  // a readahead goroutine runs

	spanDecodes, resumes, hits, misses, decoded, crcErrors, readaheads atomic.Int64
}

type spanLock struct {
	ch   chan struct{}
	refs int
}

// cursor is a suspended decoder inside span span, rel bytes into it.
type cursor struct {
	s    *stream
	span int
	rel  int64
	used int64
}

// NewReader returns a Reader over the gzip blob src of srcSize bytes
// described by ix (which it does not modify or retain beyond its points).
// If ix.Size < 0 the size is found by decoding from the last point to the
// end of the stream.
func NewReader(src io.ReaderAt, srcSize int64, ix *Index, opt Options) (*Reader, error) {
	if err := ix.Validate(); err != nil {
		return nil, err
	}
	if ix.CompSize >= 0 && ix.CompSize != srcSize {
		return nil, fmt.Errorf("gzran: index is for a %d-byte blob, this one has %d bytes", ix.CompSize, srcSize)
	}
	last := &ix.Points[len(ix.Points)-1]
	if last.In > srcSize {
		return nil, &FormatError{What: "index", Off: int64(len(ix.Points) - 1),
			Msg: fmt.Sprintf("last point at input offset %d beyond the %d-byte blob", last.In, srcSize)}
	}
	r := &Reader{
		src: src, srcSize: srcSize, pts: ix.Points, size: ix.Size,
		crcs: ix.SpanCRC, seg: opt.segSize,
		locks: make(map[int]*spanLock), cursors: make(map[int]*cursor),
	}
	if r.seg <= 0 {
		r.seg = defaultSegSize
	}
	switch {
	case opt.CacheBytes == 0:
		r.cache = newSegCache(defaultCache)
	case opt.CacheBytes > 0:
		r.cache = newSegCache(opt.CacheBytes)
	}
	if r.cache != nil && opt.Readahead >= 0 {
		r.ahead = opt.Readahead
		if r.ahead == 0 {
			r.ahead = min(defaultAhead, r.cache.max/4)
		}
	}
	r.lastEnd.Store(-1 << 62)
	if r.size < 0 {
		s := newStreamAt(src, srcSize, last)
		n, err := io.Copy(io.Discard, s)
		if err != nil {
			return nil, fmt.Errorf("gzran: finding the uncompressed size from the last point: %w", err)
		}
		r.size = last.Out + n
		r.decoded.Add(n)
	}
	return r, nil
}

// Size is the uncompressed size.
func (r *Reader) Size() int64 { return r.size }

// Stats returns the counters.
func (r *Reader) Stats() Stats {
	st := Stats{
		SpanDecodes: r.spanDecodes.Load(), Resumes: r.resumes.Load(),
		CacheHits: r.hits.Load(), CacheMisses: r.misses.Load(),
		BytesDecoded: r.decoded.Load(), CRCErrors: r.crcErrors.Load(),
		Readaheads: r.readaheads.Load(),
	}
	if r.cache != nil {
		st.CachedBytes = r.cache.bytes()
	}
	return st
}

func (r *Reader) spanStart(s int) int64 { return r.pts[s].Out }
func (r *Reader) spanEnd(s int) int64 {
	if s+1 < len(r.pts) {
		return min(r.pts[s+1].Out, r.size)
	}
	return r.size
}

// ReadAt reads uncompressed bytes at off (io.ReaderAt semantics). A
// corrupt or mismatching blob gives an error, never wrong bytes.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("gzran: negative offset")
	}
	if off >= r.size {
		return 0, io.EOF
	}
	want := p
	if rest := r.size - off; int64(len(want)) > rest {
		want = want[:rest]
	}
	prevEnd := r.lastEnd.Swap(off + int64(len(want)))
	n := 0
	for n < len(want) {
		pos := off + int64(n)
		// the last point at or below pos (with equal offsets, the last)
		s := sort.Search(len(r.pts), func(i int) bool { return r.pts[i].Out > pos }) - 1
		k := min(int64(len(want)-n), r.spanEnd(s)-pos)
		if n == 0 && r.ahead > 0 && s > 0 && s+1 < len(r.pts) {
			r.maybeReadahead(s, pos, prevEnd)
		}
		if err := r.readSpan(s, pos-r.spanStart(s), want[n:n+int(k)]); err != nil {
			return n, err
		}
		n += int(k)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// fromCache copies span s bytes [rel, rel+len(dst)) from cached segments,
// reporting whether all were there.
func (r *Reader) fromCache(s int, rel int64, dst []byte) bool {
	if r.cache == nil {
		return false
	}
	for done := 0; done < len(dst); {
		at := rel + int64(done)
		j := at / r.seg
		data := r.cache.get(segKey{s, j})
		if data == nil {
			return false
		}
		o := at - j*r.seg
		if o >= int64(len(data)) {
			return false
		}
		done += copy(dst[done:], data[o:])
	}
	return true
}

func (r *Reader) lockSpan(s int) *spanLock {
	r.mu.Lock()
	l := r.locks[s]
	if l == nil {
		l = &spanLock{ch: make(chan struct{}, 1)}
		r.locks[s] = l
	}
	l.refs++
	r.mu.Unlock()
	l.ch <- struct{}{}
	return l
}

func (r *Reader) unlockSpan(s int, l *spanLock) {
	<-l.ch
	r.mu.Lock()
	if l.refs--; l.refs == 0 {
		delete(r.locks, s)
	}
	r.mu.Unlock()
}

func (r *Reader) readSpan(s int, rel int64, dst []byte) error {
	if r.fromCache(s, rel, dst) {
		r.hits.Add(1)
		return nil
	}
	l := r.lockSpan(s)
	defer r.unlockSpan(s, l)
	if r.fromCache(s, rel, dst) { // decoded by the reader we waited for
		r.hits.Add(1)
		return nil
	}
	r.misses.Add(1)
	r.spanDecodes.Add(1)
	if r.crcs != nil {
		return r.decodeVerified(s, rel, dst)
	}
	return r.decodeRange(s, rel, dst)
}

// maybeReadahead starts a readahead after span s when this read (at pos)
// starts near s's beginning and the previous one ended near it too: a
// sequential reader crossing into s. Random reads almost never look so.
func (r *Reader) maybeReadahead(s int, pos, prevEnd int64) {
	start := r.spanStart(s)
	near := min(1<<20, (start-r.spanStart(s-1))/2)
	if pos-start < near && prevEnd >= start-near && prevEnd <= start+near && r.raBusy.CompareAndSwap(false, true) {
		go r.readahead(s)
	}
}

// readahead decodes the spans after s, up to r.ahead bytes (at most
// maxAheadSpans spans), that are neither cached nor being decoded, into
// the cache, as a demand read would (verified by their CRC when the index
// has them). Demand readers of such a span wait for it, as for any other
// reader of the span. An error stops it quietly: the demand read that
// needs the span decodes it again and reports.
func (r *Reader) readahead(s int) {
	defer r.raBusy.Store(false)
	var covered int64
	for t := s + 1; t < len(r.pts) && t <= s+maxAheadSpans && covered < r.ahead; t++ {
		n := r.spanEnd(t) - r.spanStart(t)
		if n <= 0 {
			continue
		}
		covered += n
		if r.spanCached(t) || r.spanBusy(t) {
			continue
		}
		l := r.lockSpan(t)
		var err error
		if !r.spanCached(t) {
			r.readaheads.Add(1)
			r.spanDecodes.Add(1)
			if r.crcs != nil {
				err = r.decodeVerified(t, 0, nil)
			} else {
				err = r.decodeTo(t, 0, nil, n)
			}
		}
		r.unlockSpan(t, l)
		if err != nil {
			return
		}
	}
}

// spanCached reports whether span s's first and last segments are cached
// (a cheap test for "decoded recently").
func (r *Reader) spanCached(s int) bool {
	n := r.spanEnd(s) - r.spanStart(s)
	return r.cache.get(segKey{s, 0}) != nil && r.cache.get(segKey{s, (n - 1) / r.seg}) != nil
}

func (r *Reader) spanBusy(s int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.locks[s] != nil
}

// takeCursor removes and returns span s's suspended decoder, if any.
func (r *Reader) takeCursor(s int) *cursor {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.cursors[s]
	delete(r.cursors, s)
	return c
}

func (r *Reader) putCursor(c *cursor) {
	if r.cache == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.curTick++
	c.used = r.curTick
	r.cursors[c.span] = c
	for len(r.cursors) > maxCursors {
		var old *cursor
		for _, o := range r.cursors {
			if old == nil || o.used < old.used {
				old = o
			}
		}
		delete(r.cursors, old.span)
	}
}

// segment decodes span s's next segment (from c.rel) into buf, which must
// be the segment's exact length.
func (r *Reader) segment(c *cursor, buf []byte) error {
	n, err := io.ReadFull(c.s, buf)
	r.decoded.Add(int64(n))
	c.rel += int64(n)
	if err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return gzErr(c.s.pos(), "stream ends at output %d, inside span %d which the index says ends at %d",
				r.spanStart(c.span)+c.rel, c.span, r.spanEnd(c.span))
		}
		return err
	}
	return nil
}

func (r *Reader) segLen(s int, j int64) int64 {
	return min(r.seg, r.spanEnd(s)-r.spanStart(s)-j*r.seg)
}

// copyOverlap copies the part of segment j (data) that falls in [rel, rel+len(dst)).
func (r *Reader) copyOverlap(j int64, data []byte, rel int64, dst []byte) {
	segStart := j * r.seg
	lo := max(rel, segStart)
	hi := min(rel+int64(len(dst)), segStart+int64(len(data)))
	if lo < hi {
		copy(dst[lo-rel:hi-rel], data[lo-segStart:hi-segStart])
	}
}

var scratchPool = sync.Pool{New: func() any { return new([]byte) }}

// decodeRange decodes span s (without a span CRC) only as far as the
// segment holding the last wanted byte, resuming a suspended decoder when
// it is not past the first wanted segment, and leaves the decoder for the
// next read.
func (r *Reader) decodeRange(s int, rel int64, dst []byte) error {
	return r.decodeTo(s, rel, dst, rel+int64(len(dst)))
}

// decodeTo is decodeRange decoding up to end (> rel) in the span.
func (r *Reader) decodeTo(s int, rel int64, dst []byte, end int64) error {
	first := rel / r.seg
	last := (end - 1) / r.seg
	c := r.takeCursor(s)
	if c != nil && c.rel <= first*r.seg {
		r.resumes.Add(1)
	} else {
		c = &cursor{s: newStreamAt(r.src, r.srcSize, &r.pts[s]), span: s}
	}
	var scratch *[]byte
	if r.cache == nil {
		scratch = scratchPool.Get().(*[]byte)
		defer scratchPool.Put(scratch)
	}
	for j := c.rel / r.seg; j <= last; j++ {
		n := r.segLen(s, j)
		var buf []byte
		if r.cache != nil {
			buf = make([]byte, n)
		} else {
			if int64(cap(*scratch)) < n {
				*scratch = make([]byte, r.seg)
			}
			buf = (*scratch)[:n]
		}
		if err := r.segment(c, buf); err != nil {
			return err
		}
		if r.cache != nil {
			r.cache.put(segKey{s, j}, buf)
		}
		r.copyOverlap(j, buf, rel, dst)
	}
	if c.rel < r.spanEnd(s)-r.spanStart(s) {
		r.putCursor(c)
	}
	return nil
}

// decodeVerified decodes the whole of span s, checks it against its
// CRC32C, and only then lets its bytes out (to dst and the cache).
func (r *Reader) decodeVerified(s int, rel int64, dst []byte) error {
	c := &cursor{s: newStreamAt(r.src, r.srcSize, &r.pts[s]), span: s}
	spanLen := r.spanEnd(s) - r.spanStart(s)
	var keep int64 // segments held for the cache until verified: half of it, at most maxHeld
	if r.cache != nil {
		keep = min(r.cache.max/2, maxHeld)
	}
	var pending [][]byte
	var held int64
	h := uint32(0)
	scratch := scratchPool.Get().(*[]byte)
	defer scratchPool.Put(scratch)
	for j := int64(0); j*r.seg < spanLen; j++ {
		n := r.segLen(s, j)
		var buf []byte
		if held+n <= keep {
			buf = make([]byte, n)
		} else {
			if int64(cap(*scratch)) < n {
				*scratch = make([]byte, r.seg)
			}
			buf = (*scratch)[:n]
		}
		if err := r.segment(c, buf); err != nil {
			clear(dst)
			return err
		}
		h = crc32.Update(h, castagnoli, buf)
		r.copyOverlap(j, buf, rel, dst)
		if held+n <= keep {
			pending = append(pending, buf)
			held += n
		} else {
			pending = append(pending, nil)
		}
	}
	if want := r.crcs[s]; h != want {
		clear(dst)
		r.crcErrors.Add(1)
		return gzErr(r.pts[s].In, "span %d (output %d..%d): CRC32C %08x, index says %08x",
			s, r.spanStart(s), r.spanEnd(s), h, want)
	}
	for j, buf := range pending {
		if buf != nil {
			r.cache.put(segKey{s, int64(j)}, buf)
		}
	}
	return nil
}
