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
// Concurrent misses on one key fetch once: Acquire makes exactly one caller
// the leader, which fills the page with Complete (or Fail); the others wait
// on the returned Flight.
//
// Values are immutable once stored: callers must not modify the slices they
// pass to Complete or receive from Get/Acquire/Wait.
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
	Hits, Misses  uint64 // Acquire/Get outcomes (a wait on another's fetch is a hit)
	Inserts       uint64
	Evictions     uint64
	ResidentBytes int64
	Entries       int64
	Capacity      int64
}

type queue uint8

const (
	qNone queue = iota
	qSmall
	qMain
)

type entry struct {
	key        Key
	val        []byte
	origin     Origin
	freq       atomic.Int32
	q          queue
	prev, next *entry // towards head / towards tail
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
	l.bytes += int64(len(e.val))
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
	l.bytes -= int64(len(e.val))
	return e
}

// Flight is an in-progress fetch of one key.
type Flight struct {
	done   chan struct{}
	val    []byte
	origin Origin
	err    error
}

// Wait blocks until the leader completes and returns its value or error.
func (f *Flight) Wait() ([]byte, Origin, error) {
	<-f.done
	return f.val, f.origin, f.err
}

// Cache is safe for concurrent use.
type Cache struct {
	capacity  int64
	smallMax  int64
	ghostMax  int
	mu        sync.RWMutex
	m         map[Key]*entry
	small     list
	main      list
	ghost     map[Key]uint64 // key -> sequence number in ghostRing
	ghostRing []Key
	ghostHead uint64 // next sequence number to write
	flights   map[Key]*Flight

	hits, misses, inserts, evictions atomic.Uint64
}

// New returns a cache holding at most capacity bytes of values. pageHint is
// the typical value size, used to size the ghost FIFO (0: 4096).
func New(capacity int64, pageHint int) *Cache {
	if pageHint <= 0 {
		pageHint = 4096
	}
	g := int(capacity / int64(pageHint))
	g = max(g, 16)
	return &Cache{
		capacity:  capacity,
		smallMax:  max(capacity/10, int64(pageHint)),
		ghostMax:  g,
		m:         make(map[Key]*entry),
		ghost:     make(map[Key]uint64),
		ghostRing: make([]Key, g),
		flights:   make(map[Key]*Flight),
	}
}

// Capacity returns the byte bound.
func (c *Cache) Capacity() int64 { return c.capacity }

// Get returns the cached value of k without starting a fetch.
func (c *Cache) Get(k Key) ([]byte, Origin, bool) {
	c.mu.RLock()
	e := c.m[k]
	if e != nil {
		touch(e)
		v, o := e.val, e.origin
		c.mu.RUnlock()
		c.hits.Add(1)
		return v, o, true
	}
	c.mu.RUnlock()
	return nil, 0, false
}

func touch(e *entry) {
	if e.freq.Load() < 3 {
		e.freq.Add(1)
	}
}

// Acquire looks k up. On a hit it returns the value (ok=true). On a miss it
// returns a Flight: if leader is true the caller must fetch the page and
// call Complete or Fail on it, before waiting on any other Flight; otherwise
// another caller is fetching it and the caller should Wait.
func (c *Cache) Acquire(k Key) (val []byte, origin Origin, ok bool, f *Flight, leader bool) {
	if v, o, ok := c.Get(k); ok {
		return v, o, true, nil, false
	}
	c.mu.Lock()
	if e := c.m[k]; e != nil { // filled between the two locks
		touch(e)
		v, o := e.val, e.origin
		c.mu.Unlock()
		c.hits.Add(1)
		return v, o, true, nil, false
	}
	if f := c.flights[k]; f != nil {
		c.mu.Unlock()
		c.hits.Add(1)
		return nil, 0, false, f, false
	}
	f = &Flight{done: make(chan struct{})}
	c.flights[k] = f
	c.mu.Unlock()
	c.misses.Add(1)
	return nil, 0, false, f, true
}

// Complete stores val under k (the leader's fetch succeeded) and releases
// the waiters. The cache keeps val: the caller must not modify it.
func (c *Cache) Complete(k Key, f *Flight, val []byte, origin Origin) {
	f.val, f.origin = val, origin
	c.mu.Lock()
	if c.flights[k] == f {
		delete(c.flights, k)
	}
	if c.capacity > 0 && int64(len(val)) <= c.capacity && c.m[k] == nil {
		c.insert(k, val, origin)
	}
	c.mu.Unlock()
	close(f.done)
}

// Fail releases the waiters with err; nothing is stored.
func (c *Cache) Fail(k Key, f *Flight, err error) {
	f.err = err
	c.mu.Lock()
	if c.flights[k] == f {
		delete(c.flights, k)
	}
	c.mu.Unlock()
	close(f.done)
}

// insert adds a new entry; c.mu is held.
func (c *Cache) insert(k Key, val []byte, origin Origin) {
	e := &entry{key: k, val: val, origin: origin}
	if _, ghost := c.ghost[k]; ghost {
		delete(c.ghost, k)
		e.q = qMain
		c.main.push(e)
	} else {
		e.q = qSmall
		c.small.push(e)
	}
	c.m[k] = e
	c.inserts.Add(1)
	for c.small.bytes+c.main.bytes > c.capacity {
		if c.small.bytes > c.smallMax || c.main.tail == nil {
			c.evictSmall()
		} else {
			c.evictMain()
		}
	}
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
	c.drop(e)
	c.addGhost(e.key)
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

func (c *Cache) drop(e *entry) {
	delete(c.m, e.key)
	e.q = qNone
	c.evictions.Add(1)
}

func (c *Cache) addGhost(k Key) {
	seq := c.ghostHead
	slot := int(seq % uint64(len(c.ghostRing)))
	if seq >= uint64(len(c.ghostRing)) {
		old := c.ghostRing[slot]
		if s, ok := c.ghost[old]; ok && s == seq-uint64(len(c.ghostRing)) {
			delete(c.ghost, old)
		}
	}
	c.ghostRing[slot] = k
	c.ghost[k] = seq
	c.ghostHead++
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.RLock()
	res, n := c.small.bytes+c.main.bytes, int64(len(c.m))
	c.mu.RUnlock()
	return Stats{
		Hits: c.hits.Load(), Misses: c.misses.Load(), Inserts: c.inserts.Load(),
		Evictions: c.evictions.Load(), ResidentBytes: res, Entries: n, Capacity: c.capacity,
	}
}
