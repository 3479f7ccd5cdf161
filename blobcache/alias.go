package blobcache

import (
	"maps"
	"slices"
	"sort"
)

// Content shared by fingerprint across different inputs is kept once on
// disk too. The memory cache already keys such pages by content, but a
// page it does not hold (evicted, or after a restart) would be read from
// the input being read: for a remote blob, a fetch, although another
// input holding the same file may have those bytes in the disk cache.
// So a reader missing a run of content pages first asks the other inputs
// whose spans hold that content (in any export of the daemon) to read it
// from what they store locally (Backend.ReadStored: never a fetch). The
// fingerprint claims the bytes are equal, exactly as it does for the
// memory cache, within the same domain.

// loc is where a content's bytes lie in one input: the input's bytes
// [off, off+n) hold the content's bytes [logical, logical+n).
type loc struct {
	r               *Reader
	off, logical, n int64
}

// aliasMinPiece is the piece size a run falls back to when the other input
// holds only part of it: no input's chunks are smaller.
const aliasMinPiece = 64 << 10

// register records r's spans as locations of their contents; spans of
// inputs that cannot read locally (local files are read directly anyway)
// are not recorded.
func (s *Shared) register(r *Reader) {
	if !r.be.CanReadStored() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unregisterLocked(r)
	if s.locs == nil {
		s.locs = make(map[uint64][]loc)
	}
	if s.byBE == nil {
		s.byBE = make(map[*Backend][]*Reader)
	}
	if len(s.byBE[r.be]) == 0 {
		be := r.be
		be.setReadaheadSkip(func(off, n int64) bool { return s.coveredElsewhere(be, off, n) })
	}
	s.byBE[r.be] = append(s.byBE[r.be], r)
	for _, sp := range r.spans {
		ls := s.locs[sp.id]
		if len(ls) == 0 || ls[len(ls)-1].r != r {
			r.regIDs = append(r.regIDs, sp.id)
		}
		s.locs[sp.id] = append(ls, loc{r: r, off: sp.Off, logical: sp.Logical, n: sp.Len})
	}
	r.lends.Store(len(r.regIDs) > 0)
}

func (s *Shared) unregisterLocked(r *Reader) {
	for _, id := range r.regIDs {
		if ls := slices.DeleteFunc(s.locs[id], func(l loc) bool { return l.r == r }); len(ls) > 0 {
			s.locs[id] = ls
		} else {
			delete(s.locs, id)
		}
	}
	r.regIDs = nil
	r.lends.Store(false)
	if rs := slices.DeleteFunc(s.byBE[r.be], func(x *Reader) bool { return x == r }); len(rs) > 0 {
		s.byBE[r.be] = rs
	} else if _, ok := s.byBE[r.be]; ok {
		delete(s.byBE, r.be)
		r.be.setReadaheadSkip(nil)
	}
}

// coveredElsewhere reports whether [off, off+n) of be's input is all file
// content that some other input holds too (so a reader of it takes it
// from there when that input has it locally): the input's readahead stops
// before such ranges.
func (s *Shared) coveredElsewhere(be *Backend, off, n int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.byBE[be] {
		if r.coveredLocked(off, off+n) {
			return true
		}
	}
	return false
}

// coveredLocked: [a, b) lies in r's spans, each of a content another input
// holds. sh.mu is held.
func (r *Reader) coveredLocked(a, b int64) bool {
	for a < b {
		i := sort.Search(len(r.spans), func(i int) bool { return r.spans[i].Off > a }) - 1
		if i < 0 {
			return false
		}
		sp := &r.spans[i]
		if a >= sp.Off+sp.Len || !r.sh.hasAliasLocked(r, sp.id) {
			return false
		}
		a = sp.Off + sp.Len
	}
	return true
}

// Close drops the reader's locations: nothing reads its input for others
// afterwards; the last reader of a blob to close also drops what was
// learnt about its padding. The reader itself keeps working (without
// recording padding). Closing twice is closing once.
func (r *Reader) Close() {
	r.closeOnce.Do(func() {
		r.sh.mu.Lock()
		r.sh.unregisterLocked(r)
		r.sh.mu.Unlock()
		r.sh.dropPadRef(r.blobID)
	})
}

// dropPadRef ends one reader's use of blob's padding entries.
func (s *Shared) dropPadRef(blob uint64) {
	s.padMu.Lock()
	defer s.padMu.Unlock()
	if s.padRefs[blob]--; s.padRefs[blob] > 0 {
		return
	}
	delete(s.padRefs, blob)
	maps.DeleteFunc(s.pad, func(k padKey, _ bool) bool { return k.blob == blob })
}

// hasAlias reports whether content id lies in an input other than r's.
func (s *Shared) hasAlias(r *Reader, id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hasAliasLocked(r, id)
}

func (s *Shared) hasAliasLocked(r *Reader, id uint64) bool {
	for _, l := range s.locs[id] {
		if l.r.be != r.be {
			return true
		}
	}
	return false
}

// readAlias fills p with content id's bytes [logical, logical+len(p)) from
// other inputs' local copies, piece by piece as their spans split it; false
// when some piece is held locally by none of them.
func (s *Shared) readAlias(r *Reader, id uint64, logical int64, p []byte) bool {
	s.mu.Lock()
	ls := append([]loc(nil), s.locs[id]...)
	s.mu.Unlock()
	end := logical + int64(len(p))
	for pos := logical; pos < end; {
		done := false
		for _, l := range ls {
			if l.r.be == r.be || pos < l.logical || pos >= l.logical+l.n {
				continue
			}
			n := min(end, l.logical+l.n) - pos
			if l.r.be.ReadStored(p[pos-logical:pos-logical+n], l.off+pos-l.logical) {
				pos += n
				done = true
				break
			}
		}
		if !done {
			return false
		}
	}
	s.aliasBytes.Add(uint64(len(p)))
	return true
}

// fill reads the run of pages pgs, [from, from+len(buf)) of r's input,
// for a miss: a backend read, except that when r's input does not hold the
// whole run locally, runs of content pages another input holds locally are
// taken from there and only the rest is read from r's input. A short
// count means the read failed.
func (r *Reader) fill(buf []byte, from int64, pgs []page) (int, error) {
	if !r.lends.Load() || !r.anyAlias(pgs) {
		// Nothing to share, or a local input: read it.
		return r.be.ReadAt(buf, from)
	}
	if r.be.ReadStored(buf, from) {
		return len(buf), nil
	}
	served := make([]bool, len(pgs))
	mark := func(lo, hi int64) { // buf offsets; whole pages
		for k := range pgs {
			if o := pgs[k].start - from; o >= lo && o < hi {
				served[k] = true
			}
		}
	}
	for k := 0; k < len(pgs); {
		pg := &pgs[k]
		if !pg.content || pg.padLen > 0 || !r.sh.hasAlias(r, pg.key.ID) {
			k++
			continue
		}
		m := k + 1
		for m < len(pgs) && pgs[m].content && pgs[m].padLen == 0 && pgs[m].key.ID == pg.key.ID &&
			pgs[m].key.Index == pgs[m-1].key.Index+1 && pgs[m-1].vlen == PageSize {
			m++
		}
		lo, hi := pg.start-from, pgs[m-1].start+int64(pgs[m-1].vlen)-from
		logical := int64(pg.key.Index) * PageSize
		if r.sh.readAlias(r, pg.key.ID, logical, buf[lo:hi]) {
			mark(lo, hi)
		} else if hi-lo > aliasMinPiece {
			for a := lo; a < hi; {
				b := min(hi, a+aliasMinPiece-(logical+a-lo)%aliasMinPiece)
				if r.sh.readAlias(r, pg.key.ID, logical+a-lo, buf[a:b]) {
					mark(a, b)
				}
				a = b
			}
		}
		k = m
	}
	for k := 0; k < len(pgs); {
		if served[k] {
			k++
			continue
		}
		m := k + 1
		for m < len(pgs) && !served[m] {
			m++
		}
		lo, hi := pgs[k].start-from, min(pgs[m-1].start+PageSize-from, int64(len(buf)))
		if n, err := r.be.ReadAt(buf[lo:hi], from+lo); n < int(hi-lo) {
			return int(lo) + n, err
		}
		k = m
	}
	return len(buf), nil
}

// anyAlias reports whether some content page of pgs (not a tail page with
// padding) lies in another input too.
func (r *Reader) anyAlias(pgs []page) bool {
	var last uint64
	for k := range pgs {
		pg := &pgs[k]
		if !pg.content || pg.padLen > 0 || pg.key.ID == last {
			continue
		}
		last = pg.key.ID
		if r.sh.hasAlias(r, pg.key.ID) {
			return true
		}
	}
	return false
}
