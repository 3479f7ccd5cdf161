package verify

import (
	"io"
	"sync"
)

// segCache is a small read cache in front of an io.ReaderAt: small reads
// (inodes, dirent blocks, xattrs, chunk indexes, small chunks) are served
// from 64 KiB segments, large reads go straight through. It turns the
// decoder's many tiny preads into few big ones. Safe for concurrent use.
type segCache struct {
	r    io.ReaderAt
	size int64

	mu   sync.Mutex
	segs map[int64]*seg
	hand []int64 // FIFO of cached segment indexes
}

type seg struct {
	b   []byte
	err error
}

const (
	segBits = 16
	segSize = 1 << segBits
	segMax  = 256 // 16 MiB
)

func newSegCache(r io.ReaderAt, size int64) *segCache {
	return &segCache{r: r, size: size, segs: map[int64]*seg{}}
}

func (c *segCache) get(i int64) *seg {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.segs[i]; ok {
		return s
	}
	off := i << segBits
	n := min(int64(segSize), c.size-off)
	s := &seg{b: make([]byte, max(n, 0))}
	if n > 0 {
		m, err := c.r.ReadAt(s.b, off)
		if m < len(s.b) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			s.err = err
		}
	}
	if s.err != nil {
		return s // do not cache failures
	}
	if len(c.hand) >= segMax {
		delete(c.segs, c.hand[0])
		c.hand = c.hand[1:]
	}
	c.segs[i] = s
	c.hand = append(c.hand, i)
	return s
}

func (c *segCache) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || len(p) >= segSize/2 {
		return c.r.ReadAt(p, off)
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		if pos >= c.size {
			return done, io.EOF
		}
		s := c.get(pos >> segBits)
		if s.err != nil {
			return c.r.ReadAt(p, off) // let the reader report the error
		}
		in := int(pos & (segSize - 1))
		if in >= len(s.b) {
			return done, io.EOF
		}
		done += copy(p[done:], s.b[in:])
	}
	return done, nil
}
