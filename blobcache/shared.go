package blobcache

import (
	"sync"
	"sync/atomic"

	"github.com/erofs-blockd/erofs-blockd/cache"
)

// PageSize is the cache's unit: pages of an input file (or of a file's
// content) of this many bytes.
const PageSize = 4096

// Dedup kinds, as reported in Stats and metrics labels.
const (
	KindFile    = "file"    // same input file in another export
	KindCopy    = "copy"    // another copy of the same blob (tag + size)
	KindContent = "content" // same file content in another blob (fingerprint)
)

// Shared is the state all exports of one daemon share: the cache, the
// interned identities and the dedup counters.
type Shared struct {
	c *cache.Cache

	mu      sync.Mutex
	ids     map[string]uint64
	origins atomic.Pointer[[]origin] // copy on write: read on every dedup hit

	// pad: whether the padding after a content-keyed tail page of an
	// input (by blob identity, so every export of it shares what one
	// learnt) is zero; absent: unknown. padRefs counts the open readers
	// of each blob; the last one's Close forgets the blob's entries.
	padMu   sync.Mutex
	pad     map[padKey]bool
	padRefs map[uint64]int

	dedupFile, dedupCopy, dedupContent atomic.Uint64
	padReads                           atomic.Uint64
	zeroCopyBytes                      atomic.Uint64

	// Where each content lies in inputs that can read locally (alias.go),
	// under mu.
	locs       map[uint64][]loc
	byBE       map[*Backend][]*Reader // registered readers by input
	aliasBytes atomic.Uint64
}

// NewShared wraps c (which must not be nil).
func NewShared(c *cache.Cache) *Shared {
	return &Shared{c: c, ids: make(map[string]uint64), pad: make(map[padKey]bool), padRefs: make(map[uint64]int)}
}

// Cache returns the underlying cache.
func (s *Shared) Cache() *cache.Cache { return s.c }

func (s *Shared) intern(id string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.ids[id]; ok {
		return v
	}
	v := uint64(len(s.ids) + 1)
	s.ids[id] = v
	return v
}

type padKey struct {
	blob  uint64 // interned blob identity
	start int64  // the tail page's offset in the input
}

// origin is the reader that filled a page: its file and blob identities.
type origin struct{ file, blob string }

func (s *Shared) newOrigin(o origin) cache.Origin {
	s.mu.Lock()
	defer s.mu.Unlock()
	var old []origin
	if p := s.origins.Load(); p != nil {
		old = *p
	}
	next := append(old[:len(old):len(old)], o)
	s.origins.Store(&next)
	return cache.Origin(len(next) - 1)
}

func (s *Shared) originOf(o cache.Origin) origin {
	if p := s.origins.Load(); p != nil && int(o) < len(*p) {
		return (*p)[o]
	}
	return origin{}
}

// Stats is a snapshot of the cache and dedup counters.
type Stats struct {
	cache.Stats
	// Dedup hits: hits on a page another reader brought in, by kind.
	DedupFile, DedupCopy, DedupContent uint64
	// PadReads counts backend reads of a tail page's padding.
	PadReads uint64
	// AliasBytes counts bytes of file content a reader missed and took
	// from another input's local copy (alias.go) instead of its own input.
	AliasBytes uint64
	// ZeroCopyBytes counts bytes sent with sendfile from a local input
	// file (or a disk-cache chunk) past the cache (Reader.ZeroCopyFile).
	ZeroCopyBytes uint64
}

// Stats returns the counters.
func (s *Shared) Stats() Stats {
	return Stats{
		Stats:     s.c.Stats(),
		DedupFile: s.dedupFile.Load(), DedupCopy: s.dedupCopy.Load(), DedupContent: s.dedupContent.Load(),
		PadReads: s.padReads.Load(), AliasBytes: s.aliasBytes.Load(), ZeroCopyBytes: s.zeroCopyBytes.Load(),
	}
}
