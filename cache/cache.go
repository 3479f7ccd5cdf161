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
// capacity. Larger values are copied to the heap and count their length.
package cache

import (
	"sync"
	"sync/atomic"
)

// Key identifies a page. ID names the content (the caller interns its own
// notion of identity into a number), Index the page within it.
type Key struct {
	ID    uint64
	Index uint64
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
	ResidentBytes int64 // memory held by values (whole slots for small values)
	// AllocatedBytes is the memory the cache has for values: the slab's
	// slots touched so far (they are reused, never returned) plus values
	// too large for a slot. At most Capacity plus one slot's rounding.
	AllocatedBytes int64
	Entries        int64
	Capacity       int64
}

type queue uint8

const (
	qNone queue = iota
	qSmall
	qMain
	qGhost // evicted from small, key remembered: no value, in the ghost ring
)

type entry struct {
	key    Key
	val    []byte // nil while pending
	cost   int64  // bytes counted against the capacity
	slot   int32  // slab slot, -1: heap
	fi     int32  // index in fl
	origin Origin
	freq   atomic.Int32
	q      queue
	ghost  bool    // pending entry that was a ghost: goes to main
	gseq   uint64  // qGhost: sequence number in the ghost ring
	fl     *Flight // non-nil while the entry is pending (being fetched)
	prev   *entry  // towards head
	next   *entry  // towards tail
}

// list is an intrusive FIFO: push at head, pop at tail.
type list struct {
	head, tail *entry
	bytes      int64
}

func (l *list) push(e *entry) {
	e.prev, e.next = nil, l.head
	if l.head != nil {
		l.head.prev = e
	} else {
		l.tail = e
	}
	l.head = e
	l.bytes += e.cost
}

func (l *list) pop() *entry {
	e := l.tail
	if e == nil {
		return nil
	}
	l.tail = e.prev
	if l.tail != nil {
		l.tail.next = nil
	} else {
		l.head = nil
	}
	e.prev, e.next = nil, nil
	l.bytes -= e.cost
	return e
}

// Flight is an in-progress fetch of one or more keys by one leader.
type Flight struct {
	done    chan struct{}
	entries []*entry // pending entries, by index; nil once resolved
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
	Miss State = iota // (only inside Acquire)
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

// spareMax bounds the recycled entries kept for reuse.
const spareMax = 1024

// Cache is safe for concurrent use.
type Cache struct {
	capacity  int64
	smallMax  int64
	slotSize  int
	nslots    int32
	ghostMax  int
	mu        sync.RWMutex
	m         map[Key]*entry // stored, pending (fl != nil) and ghost entries
	small     list
	main      list
	ghostRing []*entry // ghost FIFO; a slot is live if its entry is still that ghost
	ghostHead uint64   // next sequence number to write
	slab      *slab
	freeSlots []int32
	nextSlot  int32    // slots >= nextSlot were never used
	spare     []*entry // evicted entries for reuse
	heapBytes int64    // values stored on the heap (larger than a slot)

	hits, misses, inserts, evictions atomic.Uint64
}

// New returns a cache holding at most capacity bytes of values. pageHint is
// the page (slot) size: values up to it take one slot (0: 4096).
func New(capacity int64, pageHint int) *Cache {
	if pageHint <= 0 {
		pageHint = 4096
	}
	g := int(capacity / int64(pageHint))
	g = max(g, 16)
	c := &Cache{
		capacity:  max(capacity, 0),
		smallMax:  max(capacity/10, int64(pageHint)),
		slotSize:  pageHint,
		ghostMax:  g,
		m:         make(map[Key]*entry),
		ghostRing: make([]*entry, g),
	}
	if n := capacity / int64(pageHint); n > 0 {
		c.nslots = int32(min(n, 1<<31-1))
		c.slab = newSlab(pageHint, int(c.nslots))
		track(c, c.slab)
	}
	return c
}

// Capacity returns the byte bound.
func (c *Cache) Capacity() int64 { return c.capacity }

// PageSize returns the slot size given to New.
func (c *Cache) PageSize() int { return c.slotSize }

// Get copies the cached value of k into dst (as much as fits) without
// starting a fetch and returns the value's length.
func (c *Cache) Get(k Key, dst []byte) (int, Origin, bool) {
	c.mu.RLock()
	e := c.m[k]
	if e == nil || e.val == nil { // absent, pending or a ghost
		c.mu.RUnlock()
		return 0, 0, false
	}
	touch(e)
	copy(dst, e.val)
	n, o := len(e.val), e.origin
	c.mu.RUnlock()
	c.hits.Add(1)
	return n, o, true
}

func touch(e *entry) {
	if e.freq.Load() < 3 {
		e.freq.Add(1)
	}
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
		if e := c.m[r.Key]; e != nil && e.val != nil {
			touch(e)
			copy(r.Dst, e.val)
			r.State, r.Len, r.Origin = Hit, len(e.val), e.origin
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
			e := c.m[r.Key]
			switch {
			case e == nil || e.q == qGhost:
				if lead == nil {
					lead = &Flight{done: make(chan struct{})}
				}
				if e == nil {
					e = c.newEntry(r.Key)
					c.m[r.Key] = e
				} else { // the ghost's ring slot dies with qGhost
					e.q, e.ghost = qNone, true
				}
				e.fl, e.fi = lead, int32(len(lead.entries))
				lead.entries = append(lead.entries, e)
				r.State, r.Flight, r.Index = Lead, lead, int(e.fi)
				leads++
				continue
			case e.fl != nil:
				e.fl.waiters++
				r.State, r.Flight, r.Index = Wait, e.fl, int(e.fi)
			default: // filled between the two locks
				touch(e)
				copy(r.Dst, e.val)
				r.State, r.Len, r.Origin = Hit, len(e.val), e.origin
			}
			hits++
			lead = nil
		}
		c.mu.Unlock()
	}
	if hits > 0 {
		c.hits.Add(hits)
	}
	if leads > 0 {
		c.misses.Add(leads)
	}
}

// Complete stores vals[i] (copied) as the value of f's i-th key and
// releases the waiters. The caller may reuse vals' arrays afterwards.
func (c *Cache) Complete(f *Flight, vals [][]byte, origin Origin) {
	c.mu.Lock()
	waiters := f.waiters
	for i, e := range f.entries { // pending entries stay in c.m until now
		e.fl = nil
		if !c.store(e, vals[i], origin) {
			delete(c.m, e.key)
			c.recycle(e)
		}
	}
	f.entries = nil
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
	for _, e := range f.entries {
		e.fl = nil
		if c.m[e.key] == e {
			delete(c.m, e.key)
		}
		c.recycle(e)
	}
	f.entries = nil
	c.mu.Unlock()
	f.err = err
	close(f.done)
}

func (c *Cache) newEntry(k Key) *entry {
	var e *entry
	if n := len(c.spare); n > 0 {
		e = c.spare[n-1]
		c.spare = c.spare[:n-1]
	} else {
		e = &entry{slot: -1}
	}
	e.key = k
	return e
}

// release frees e's value.
func (c *Cache) release(e *entry) {
	if e.slot >= 0 {
		c.freeSlots = append(c.freeSlots, e.slot)
	} else if e.val != nil {
		c.heapBytes -= e.cost
	}
	e.val, e.slot, e.cost = nil, -1, 0
}

// recycle keeps e for reuse; e is in no list and not in c.m.
func (c *Cache) recycle(e *entry) {
	c.release(e)
	*e = entry{slot: -1}
	if len(c.spare) < spareMax {
		c.spare = append(c.spare, e)
	}
}

// store gives the pending entry e the value v, evicting as needed; false:
// v cannot be stored. c.mu is held.
func (c *Cache) store(e *entry, v []byte, origin Origin) bool {
	cost, slotted := int64(c.slotSize), len(v) <= c.slotSize && c.slab != nil
	if !slotted {
		cost = int64(len(v))
	}
	if cost > c.capacity || c.capacity == 0 {
		return false
	}
	for c.small.bytes+c.main.bytes+cost > c.capacity {
		switch {
		case c.small.tail == nil && c.main.tail == nil:
			return false
		case c.small.bytes > c.smallMax || c.main.tail == nil:
			c.evictSmall()
		default:
			c.evictMain()
		}
	}
	var buf []byte
	if slotted {
		// The bound leaves a slot free: used slots * slotSize <= resident
		// bytes <= capacity - slotSize.
		var s int32
		if n := len(c.freeSlots); n > 0 {
			s = c.freeSlots[n-1]
			c.freeSlots = c.freeSlots[:n-1]
		} else {
			s = c.nextSlot
			c.nextSlot++
		}
		buf, e.slot = c.slab.slot(s), s
	} else {
		buf, e.slot = make([]byte, len(v)), -1
		c.heapBytes += cost
	}
	copy(buf, v)
	e.val, e.cost, e.origin = buf[:len(v)], cost, origin
	e.freq.Store(0)
	if e.ghost {
		e.ghost = false
		e.q = qMain
		c.main.push(e)
	} else {
		e.q = qSmall
		c.small.push(e)
	}
	c.inserts.Add(1)
	return true
}

func (c *Cache) evictSmall() {
	e := c.small.pop()
	if e == nil {
		return
	}
	if e.freq.Load() > 0 {
		e.freq.Store(0)
		e.q = qMain
		c.main.push(e)
		return
	}
	// It leaves; its key stays in c.m as a ghost.
	c.release(e)
	c.evictions.Add(1)
	c.addGhost(e)
}

func (c *Cache) evictMain() {
	for {
		e := c.main.pop()
		if e == nil {
			return
		}
		if f := e.freq.Load(); f > 0 {
			e.freq.Store(f - 1)
			c.main.push(e)
			continue
		}
		c.drop(e)
		return
	}
}

// drop removes an evicted entry. Nobody outside the cache holds its value
// (lookups copy under the lock), so its slot is free for the next store.
func (c *Cache) drop(e *entry) {
	delete(c.m, e.key)
	c.evictions.Add(1)
	c.recycle(e)
}

// addGhost makes e a ghost, forgetting the oldest ghost if the ring is
// full. A ring slot whose entry has since been fetched again (no longer
// qGhost) or recycled and reused (another gseq) is dead.
func (c *Cache) addGhost(e *entry) {
	seq := c.ghostHead
	n := uint64(len(c.ghostRing))
	slot := seq % n
	if old := c.ghostRing[slot]; old != nil && old.q == qGhost && old.gseq == seq-n {
		delete(c.m, old.key)
		c.recycle(old)
	}
	c.ghostRing[slot] = e
	e.q, e.gseq = qGhost, seq
	c.ghostHead++
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.RLock()
	res := c.small.bytes + c.main.bytes
	ins, ev := c.inserts.Load(), c.evictions.Load()
	alloc := c.heapBytes
	if c.slab != nil {
		alloc += c.slab.bytes
	}
	c.mu.RUnlock()
	return Stats{
		Hits: c.hits.Load(), Misses: c.misses.Load(), Inserts: ins,
		Evictions: ev, ResidentBytes: res, AllocatedBytes: alloc, Entries: int64(ins - ev), Capacity: c.capacity,
	}
}
