package cache

import "runtime"

// segBytes is the size of one slab segment: the slab grows by segments as
// slots are first used, so a large, mostly empty cache costs no memory.
const segBytes = 4 << 20

// slab holds the cache's fixed-size pages outside the Go heap (anonymous
// mappings where the platform has them): its bytes are the cache's
// capacity, not twice that once the garbage collector's headroom (GOGC) is
// added, and the collector never scans or copies them.
type slab struct {
	slotSize, perSeg, slots int
	segs                    [][]byte
	bytes                   int64 // allocated so far: at most slots * slotSize
}

func newSlab(slotSize, slots int) *slab {
	per := max(segBytes/slotSize, 1)
	per = min(per, slots)
	return &slab{slotSize: slotSize, perSeg: per, slots: slots}
}

// slot returns slot i's bytes, mapping its segment on first use.
func (s *slab) slot(i int32) []byte {
	seg := int(i) / s.perSeg
	for len(s.segs) <= seg {
		n := min(s.perSeg, s.slots-len(s.segs)*s.perSeg) * s.slotSize
		s.segs = append(s.segs, allocSeg(n, true)) // about to be filled
		s.bytes += int64(n)
	}
	o := (int(i) % s.perSeg) * s.slotSize
	return s.segs[seg][o : o+s.slotSize : o+s.slotSize]
}

// free releases the mappings; nothing may use the slab afterwards.
func (s *slab) free() {
	for _, b := range s.segs {
		freeSeg(b)
	}
	s.segs = nil
}

// track releases the slab's and the metadata's mappings once c is
// unreachable (only c refers to them).
func track(c *Cache, s *slab, m *meta) {
	runtime.AddCleanup(c, func(s *slab) { s.free() }, s)
	runtime.AddCleanup(c, func(m *meta) { m.free() }, m)
}
