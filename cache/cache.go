// Package cache is a bounded, concurrent, scan-resistant read cache of byte
// pages under opaque keys. It knows nothing of EROFS, NBD or files: callers
// choose what a Key means (erofs-blockd uses "content identity + page index",
// so equal content read through different exports is stored once).
//
// Eviction is S3-FIFO (Yang et al., SOSP 2023): new pages enter a small FIFO
// (10% of the bytes); a page evicted from it that was hit meanwhile moves to
// the main FIFO, otherwise it leaves and its key is remembered in a ghost
// FIFO; a page whose key is in the ghost FIFO is inserted straight into the
// main FIFO. Main evicts with CLOCK-like second chances (2-bit frequency).
// A one-pass scan (nbdcopy of a whole export, a --verify-digests hash, a
// find | xargs cat) therefore flows through the small FIFO without
// displacing the working set, and a hit costs a read lock and an atomic
// increment, not a list move.
//
// Lookups work on batches (Acquire takes a run of keys, typically the pages
// of one read, under one read lock, and one write lock for its misses).
// Concurrent misses on one key fetch once: Acquire makes exactly one caller
// the leader of a Flight (consecutive missing keys of a batch share one),
// which fills its pages with Complete (or Fail); the others Wait on it.
//
// The cache owns its memory: values are copied in (Complete) and out
// (Get, Acquire, Wait), never shared with callers. Values of at most the
// page size live in fixed page slots of a slab outside the Go heap, reused
// as pages are evicted, and count as a whole slot each; so the resident
// bytes reported in Stats are the memory the values occupy, bounded by the
// capacity. Longer values are not stored (their waiters still get them).
//
// The metadata is outside the Go heap too and holds no pointers: one
// 48-byte record per slot (key, hash-chain and FIFO links as indices,
// length, origin, frequency), one 24-byte record per remembered ghost key,
// and two int32 bucket arrays, all anonymous mappings touched only as
// used. The garbage collector never scans it and its pacing (GOGC) adds no
// headroom to it, so a full cache of 4 KiB pages costs about 2% of its
// capacity beyond the values; only keys being fetched sit in a (small) Go map.
package cache

import (
	"sync"
	"sync/atomic"
	"unsafe"
)

// Key identifies a page. ID names the content (the caller interns its own
// notion of identity into a number), Index the page within it.
type Key struct {
	ID    uint64
	Index uint64
}

func (k Key) hash() uint64 {
	h := (k.ID*0x9E3779B97F4A7C15 ^ k.Index) * 0xBF58476D1CE4E5B9
	return h ^ h>>31
}

// Origin is an opaque tag of who filled a page; it is returned on hits so a
// caller can tell a hit on its own data from a hit on data another reader
// brought in (a dedup hit).
type Origin uint32

// Stats are cumulative counters and current sizes.
type Stats struct {
	Hits, Misses  uint64 // lookup outcomes (a wait on another's fetch is a hit)
	Inserts       uint64
	Evictions     uint64
	ResidentBytes int64 // memory held by values (whole slots)
	// AllocatedBytes is the memory the cache has for values: the slab's
	// slots touched so far (they are reused, never returned). At most
	// Capacity plus one slot's rounding.
	AllocatedBytes int64
	Entries        int64
	Capacity       int64
}

type queue uint8

const (
	qNone queue = iota
	qSmall
	qMain
)

// entry is the metadata of slot i (entries[i]); links are indices + 1 (0:
// none). It holds no Go pointers: it lives in an anonymous mapping.
type entry struct {
	key    Key
	hnext  int32 // next entry in the hash chain
	prev   int32 // towards head
	next   int32 // towards tail
	vlen   int32 // value length
	origin Origin
	freq   atomic.Int32
	q      queue
}

// ghost is a key evicted from the small FIFO, remembered in the ghost ring.
type ghost struct {
	key   Key
	hnext int32 // next ghost in its hash chain (ring index + 1)
	live  bool
}

// list is an intrusive FIFO of slots: push at head, pop at tail.
type list struct {
	head, tail int32 // index + 1
	bytes      int64
}

// Flight is an in-progress fetch of one or more keys by one leader.
type Flight struct {
	done    chan struct{}
	keys    []Key    // pending keys, by index; nil once resolved
	ghost   []bool   // keys[i] was a ghost: goes to main
	waiters int      // under Cache.mu
	vals    [][]byte // private copies of the values, when there were waiters
	origin  Origin
	err     error
}

// Wait blocks until the leader resolves f, copies the value of f's i-th key
// (Req.Index) into dst (as much as fits) and returns the value's length.
func (f *Flight) Wait(i int, dst []byte) (int, Origin, error) {
	<-f.done
	if f.err != nil {
		return 0, 0, f.err
	}
	v := f.vals[i]
	copy(dst, v)
	return len(v), f.origin, nil
}

// State is the outcome of a lookup.
type State uint8

const (
	Miss State = iota // AcquireOnSecondMiss: not cached, read it yourself
	Hit               // the value was copied to Dst
	Lead              // the caller must fetch the key and resolve Flight
	Wait              // another caller is fetching it: Flight.Wait(Index, ...)
)

// Req is one key of a batch lookup (Acquire).
type Req struct {
	Key Key
	Dst []byte // on a hit the value is copied here (as much as fits); may be nil

	State  State
	Len    int     // Hit: the value's length
	Origin Origin  // Hit: who filled it
	Flight *Flight // Lead, Wait
	Index  int     // Lead, Wait: the key's index in Flight
}

type pending struct {
	fl *Flight
	fi int
}

// Cache is safe for concurrent use.
type Cache struct {
	capacity int64
	smallMax int64
	slotSize int
	nslots   int32
	mu       sync.RWMutex

	meta     *meta
	entries  []entry // by slot
	buckets  []int32 // hash -> first entry (slot + 1)
	bmask    uint64
	ghosts   []ghost // the ghost ring
	gbuckets []int32 // hash -> first ghost (ring index + 1)
	gmask    uint64
	gseq     uint64 // ghosts added so far: the next ring index is gseq % len
	// gmu guards the ghost ring, its buckets and gseq; it is taken with
	// or without mu (never mu while holding gmu).
	gmu sync.Mutex

	pending   map[Key]pending // keys being fetched
	small     list
	main      list
	slab      *slab
	freeSlots []int32
	nextSlot  int32 // slots >= nextSlot were never used

	hits, misses, inserts, evictions atomic.Uint64
}

// meta holds the mappings of the metadata arrays.
type meta struct{ segs [][]byte }

func (m *meta) free() {
	for _, b := range m.segs {
		freeSeg(b)
	}
	m.segs = nil
}

// array returns n zeroed, pointer-free T outside the Go heap.
func array[T any](m *meta, n int) []T {
	var z T
	size := int(unsafe.Sizeof(z)) * n
	if size == 0 {
		return nil
	}
	b := allocSeg(size, false) // touched only as used
	m.segs = append(m.segs, b)
	return unsafe.Slice((*T)(unsafe.Pointer(&b[0])), n)
}

func pow2(n int) int {
	p := 1
	for p < n {
		p <<= 1
	}
	return p
}

// New returns a cache holding at most capacity bytes of values. pageHint is
// the page (slot) size: values up to it take one slot (0: 4096); longer
// ones are not stored.
func New(capacity int64, pageHint int) *Cache {
	if pageHint <= 0 {
		pageHint = 4096
	}
	c := &Cache{
		capacity: max(capacity, 0),
		smallMax: max(capacity/10, int64(pageHint)),
		slotSize: pageHint,
		pending:  make(map[Key]pending),
		meta:     &meta{},
	}
	if n := capacity / int64(pageHint); n > 0 {
		c.nslots = int32(min(n, 1<<31-2))
		c.slab = newSlab(pageHint, int(c.nslots))
		c.entries = array[entry](c.meta, int(c.nslots))
		nb := pow2(int(c.nslots))
		c.buckets, c.bmask = array[int32](c.meta, nb), uint64(nb-1)
		c.ghosts = array[ghost](c.meta, int(c.nslots))
		c.gbuckets, c.gmask = array[int32](c.meta, nb), uint64(nb-1)
		track(c, c.slab, c.meta)
	}
	return c
}

// Capacity returns the byte bound.
func (c *Cache) Capacity() int64 { return c.capacity }

// PageSize returns the slot size given to New.
func (c *Cache) PageSize() int { return c.slotSize }

// lookup returns the slot + 1 holding k, or 0. c.mu is held (either way).
func (c *Cache) lookup(k Key) int32 {
	if c.nslots == 0 {
		return 0
	}
	for i := c.buckets[k.hash()&c.bmask]; i != 0; {
		e := &c.entries[i-1]
		if e.key == k {
			return i
		}
		i = e.hnext
	}
	return 0
}

// value returns slot s's value bytes.
func (c *Cache) value(s int32) []byte {
	return c.slab.slot(s)[:c.entries[s].vlen]
}

// Get copies the cached value of k into dst (as much as fits) without
// starting a fetch and returns the value's length.
func (c *Cache) Get(k Key, dst []byte) (int, Origin, bool) {
	c.mu.RLock()
	i := c.lookup(k)
	if i == 0 { // absent, pending or a ghost
		c.mu.RUnlock()
		return 0, 0, false
	}
	e := &c.entries[i-1]
	touch(e)
	copy(dst, c.value(i-1))
	n, o := int(e.vlen), e.origin
	c.mu.RUnlock()
	c.hits.Add(1)
	return n, o, true
}

func touch(e *entry) {
	if e.freq.Load() < 3 {
		e.freq.Add(1)
	}
}

// hit fills r from slot i + 1.
func (c *Cache) hit(r *Req, i int32) {
	e := &c.entries[i-1]
	touch(e)
	copy(r.Dst, c.value(i-1))
	r.State, r.Len, r.Origin = Hit, int(e.vlen), e.origin
}

// Acquire looks up every req's key: one pass under the read lock copies
// the hits out, one pass under the write lock sorts the rest into Wait (on
// another caller's Flight) or Lead. Consecutive Lead reqs share one Flight,
// which the caller must resolve with Complete or Fail before it waits on
// any other Flight (its own included: a key twice in a batch waits on the
// first's Flight).
func (c *Cache) Acquire(reqs []Req) {
	missing, hits := 0, uint64(0)
	c.mu.RLock()
	for i := range reqs {
		r := &reqs[i]
		r.Flight, r.Index, r.Len, r.Origin = nil, 0, 0, 0
		if s := c.lookup(r.Key); s != 0 {
			c.hit(r, s)
			hits++
		} else {
			r.State = Miss
			missing++
		}
	}
	c.mu.RUnlock()
	var leads uint64
	if missing > 0 {
		var lead *Flight
		c.mu.Lock()
		for i := range reqs {
			r := &reqs[i]
			if r.State != Miss {
				lead = nil
				continue
			}
			// (a hit may have been filled between the two locks)
			if c.settleLocked(r, &lead, false) {
				leads++
			} else {
				hits++
			}
		}
		c.mu.Unlock()
	}
	c.count(hits, leads)
}

// settleLocked sorts a key missing from the lookup under the read lock
// (c.mu now held for writing): a hit if it was filled meanwhile, Wait on
// another caller's Flight, or else Lead on *lead (made on first use;
// wasGhost: its key was a ghost already taken off the ring). It returns
// whether r leads; after a hit or Wait the next Lead starts a new Flight.
func (c *Cache) settleLocked(r *Req, lead **Flight, wasGhost bool) bool {
	if s := c.lookup(r.Key); s != 0 {
		c.hit(r, s)
	} else if p, ok := c.pending[r.Key]; ok {
		p.fl.waiters++
		r.State, r.Flight, r.Index = Wait, p.fl, p.fi
	} else {
		if *lead == nil {
			*lead = &Flight{done: make(chan struct{})}
		}
		fl := *lead
		fi := len(fl.keys)
		fl.keys = append(fl.keys, r.Key)
		fl.ghost = append(fl.ghost, wasGhost || c.unghost(r.Key))
		c.pending[r.Key] = pending{fl, fi}
		r.State, r.Flight, r.Index = Lead, fl, fi
		return true
	}
	*lead = nil
	return false
}

// AcquireOnSecondMiss is Acquire for keys whose fetch is as cheap as a hit
// (a page-cached local file): a key that is neither cached, being fetched
// nor a ghost is only remembered as a ghost and left in State Miss for the
// caller to read uncached; a miss on a ghost leads a fetch into the main
// FIFO as usual. So only pages read again within the ghost ring's reach
// are copied into the cache, and a one-time read costs a lookup.
//
// A first miss takes the read lock and the ghost ring's own lock, not the
// cache's write lock, so it does not stall concurrent hits.
func (c *Cache) AcquireOnSecondMiss(reqs []Req) {
	hits, misses, rest := uint64(0), uint64(0), 0
	c.mu.RLock()
	for i := range reqs {
		r := &reqs[i]
		r.Flight, r.Index, r.Len, r.Origin = nil, 0, 0, 0
		if s := c.lookup(r.Key); s != 0 {
			c.hit(r, s)
			hits++
		} else if _, ok := c.pending[r.Key]; ok {
			r.State = Wait // (no Flight yet: settled under the write lock)
			rest++
		} else {
			r.State = Miss
		}
	}
	c.mu.RUnlock()
	if c.nslots > 0 {
		c.gmu.Lock()
		for i := range reqs {
			if r := &reqs[i]; r.State == Miss {
				if c.unghostLocked(r.Key) {
					r.State = Lead // (no Flight yet)
					rest++
				} else {
					c.addGhostLocked(r.Key)
					misses++
				}
			}
		}
		c.gmu.Unlock()
	} else {
		misses += uint64(len(reqs)) - hits - uint64(rest)
	}
	if rest > 0 {
		var lead *Flight
		c.mu.Lock()
		for i := range reqs {
			r := &reqs[i]
			if (r.State != Wait && r.State != Lead) || r.Flight != nil {
				lead = nil
				continue
			}
			if c.settleLocked(r, &lead, r.State == Lead) {
				misses++
			} else {
				hits++
			}
		}
		c.mu.Unlock()
	}
	c.count(hits, misses)
}

// count adds to the hit and miss counters (skipping zeros: they are
// shared cache lines).
func (c *Cache) count(hits, misses uint64) {
	if hits > 0 {
		c.hits.Add(hits)
	}
	if misses > 0 {
		c.misses.Add(misses)
	}
}

// Complete stores vals[i] (copied) as the value of f's i-th key and
// releases the waiters. The caller may reuse vals' arrays afterwards.
func (c *Cache) Complete(f *Flight, vals [][]byte, origin Origin) {
	c.mu.Lock()
	waiters := f.waiters
	for i, k := range f.keys { // pending keys stay pending until now
		delete(c.pending, k)
		c.store(k, vals[i], origin, f.ghost[i])
	}
	f.keys, f.ghost = nil, nil
	c.mu.Unlock()
	if waiters > 0 {
		f.vals = make([][]byte, len(vals))
		for i, v := range vals {
			f.vals[i] = append([]byte(nil), v...)
		}
	}
	f.origin = origin
	close(f.done)
}

// Fail releases f's waiters with err; nothing is stored.
func (c *Cache) Fail(f *Flight, err error) {
	c.mu.Lock()
	for _, k := range f.keys {
		delete(c.pending, k)
	}
	f.keys, f.ghost = nil, nil
	c.mu.Unlock()
	f.err = err
	close(f.done)
}

// store gives k the value v, evicting as needed; k is in no table. c.mu is
// held.
func (c *Cache) store(k Key, v []byte, origin Origin, wasGhost bool) {
	cost := int64(c.slotSize)
	if c.nslots == 0 || len(v) > c.slotSize || cost > c.capacity {
		return
	}
	for c.small.bytes+c.main.bytes+cost > c.capacity {
		switch {
		case c.small.tail == 0 && c.main.tail == 0:
			return
		case c.small.bytes > c.smallMax || c.main.tail == 0:
			c.evictSmall()
		default:
			c.evictMain()
		}
	}
	// The bound leaves a slot free: used slots * slotSize = resident bytes
	// <= capacity - slotSize.
	var s int32
	if n := len(c.freeSlots); n > 0 {
		s = c.freeSlots[n-1]
		c.freeSlots = c.freeSlots[:n-1]
	} else {
		s = c.nextSlot
		c.nextSlot++
	}
	copy(c.slab.slot(s), v)
	e := &c.entries[s]
	e.key, e.vlen, e.origin = k, int32(len(v)), origin
	e.freq.Store(0)
	b := &c.buckets[k.hash()&c.bmask]
	e.hnext, *b = *b, s+1
	if wasGhost {
		e.q = qMain
		c.push(&c.main, s)
	} else {
		e.q = qSmall
		c.push(&c.small, s)
	}
	c.inserts.Add(1)
}

func (c *Cache) push(l *list, s int32) {
	e := &c.entries[s]
	e.prev, e.next = 0, l.head
	if l.head != 0 {
		c.entries[l.head-1].prev = s + 1
	} else {
		l.tail = s + 1
	}
	l.head = s + 1
	l.bytes += int64(c.slotSize)
}

// pop removes l's tail and returns its slot, or -1.
func (c *Cache) pop(l *list) int32 {
	if l.tail == 0 {
		return -1
	}
	s := l.tail - 1
	e := &c.entries[s]
	l.tail = e.prev
	if l.tail != 0 {
		c.entries[l.tail-1].next = 0
	} else {
		l.head = 0
	}
	e.prev, e.next = 0, 0
	l.bytes -= int64(c.slotSize)
	return s
}

// unhash removes slot s from its hash chain and frees the slot.
func (c *Cache) unhash(s int32) {
	e := &c.entries[s]
	p := &c.buckets[e.key.hash()&c.bmask]
	for *p != s+1 {
		p = &c.entries[*p-1].hnext
	}
	*p = e.hnext
	e.hnext, e.q = 0, qNone
	c.freeSlots = append(c.freeSlots, s)
}

func (c *Cache) evictSmall() {
	s := c.pop(&c.small)
	if s < 0 {
		return
	}
	e := &c.entries[s]
	if e.freq.Load() > 0 {
		e.freq.Store(0)
		e.q = qMain
		c.push(&c.main, s)
		return
	}
	// It leaves; its key is remembered as a ghost.
	c.addGhost(e.key)
	c.unhash(s)
	c.evictions.Add(1)
}

func (c *Cache) evictMain() {
	for {
		s := c.pop(&c.main)
		if s < 0 {
			return
		}
		e := &c.entries[s]
		if f := e.freq.Load(); f > 0 {
			e.freq.Store(f - 1)
			c.push(&c.main, s)
			continue
		}
		// Nobody outside the cache holds its value (lookups copy under
		// the lock), so the slot is free for the next store.
		c.unhash(s)
		c.evictions.Add(1)
		return
	}
}

// addGhost remembers k in the ghost ring, forgetting the oldest ghost if
// the ring is full.
func (c *Cache) addGhost(k Key) {
	c.gmu.Lock()
	c.addGhostLocked(k)
	c.gmu.Unlock()
}

// addGhostLocked is addGhost with c.gmu held.
func (c *Cache) addGhostLocked(k Key) {
	n := uint64(len(c.ghosts))
	if n == 0 {
		return
	}
	gi := int32(c.gseq % n)
	c.gseq++
	g := &c.ghosts[gi]
	if g.live {
		c.unlinkGhost(gi)
	}
	b := &c.gbuckets[k.hash()&c.gmask]
	g.key, g.live, g.hnext = k, true, *b
	*b = gi + 1
}

func (c *Cache) unlinkGhost(gi int32) {
	g := &c.ghosts[gi]
	p := &c.gbuckets[g.key.hash()&c.gmask]
	for *p != gi+1 {
		p = &c.ghosts[*p-1].hnext
	}
	*p = g.hnext
	g.hnext, g.live = 0, false
}

// unghost forgets k if it is a ghost and reports whether it was.
func (c *Cache) unghost(k Key) bool {
	if c.nslots == 0 {
		return false
	}
	c.gmu.Lock()
	defer c.gmu.Unlock()
	return c.unghostLocked(k)
}

// unghostLocked is unghost with c.gmu held.
func (c *Cache) unghostLocked(k Key) bool {
	for i := c.gbuckets[k.hash()&c.gmask]; i != 0; {
		g := &c.ghosts[i-1]
		if g.key == k {
			c.unlinkGhost(i - 1)
			return true
		}
		i = g.hnext
	}
	return false
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.RLock()
	res := c.small.bytes + c.main.bytes
	ins, ev := c.inserts.Load(), c.evictions.Load()
	var alloc int64
	if c.slab != nil {
		alloc = c.slab.bytes
	}
	c.mu.RUnlock()
	return Stats{
		Hits: c.hits.Load(), Misses: c.misses.Load(), Inserts: ins,
		Evictions: ev, ResidentBytes: res, AllocatedBytes: alloc, Entries: int64(ins - ev), Capacity: c.capacity,
	}
}
