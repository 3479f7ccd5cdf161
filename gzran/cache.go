package gzran

import (
	"container/list"
	"sync"
)

type segKey struct {
	span int
	seg  int64
}

type segEntry struct {
	key  segKey
	data []byte
}

// segCache is an LRU of decoded segments bounded by their total size.
// Entries are immutable once inserted: readers copy from them unlocked.
type segCache struct {
	mu   sync.Mutex
	max  int64
	used int64
	ll   list.List
	m    map[segKey]*list.Element
}

func newSegCache(max int64) *segCache {
	return &segCache{max: max, m: make(map[segKey]*list.Element)}
}

func (c *segCache) get(k segKey) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok {
		return nil
	}
	c.ll.MoveToFront(e)
	return e.Value.(*segEntry).data
}

func (c *segCache) put(k segKey, data []byte) {
	if int64(len(data)) > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		old := e.Value.(*segEntry)
		c.used += int64(len(data)) - int64(len(old.data))
		old.data = data
		c.ll.MoveToFront(e)
	} else {
		c.m[k] = c.ll.PushFront(&segEntry{key: k, data: data})
		c.used += int64(len(data))
	}
	for c.used > c.max {
		e := c.ll.Back()
		ent := e.Value.(*segEntry)
		c.ll.Remove(e)
		delete(c.m, ent.key)
		c.used -= int64(len(ent.data))
	}
}

func (c *segCache) bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}
