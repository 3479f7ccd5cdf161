package merge

import (
	"io"
	"sync"
)

// segReader caches aligned segments of a layer so the many small metadata
// reads of a walk (inodes, xattrs, dirents, chunk tables) cost one pread
// per segment. Reads of a whole segment or more go straight through.
type segReader struct {
	r    io.ReaderAt
	size int64

	mu   sync.Mutex
	segs map[int64]*seg
	tick uint64
}

type seg struct {
	b    []byte
	err  error
	used uint64
}

const (
	segSize = 64 << 10
	maxSegs = 256 // 16 MiB per layer
)

func newSegReader(r io.ReaderAt, size int64) *segReader {
	return &segReader{r: r, size: size, segs: map[int64]*seg{}}
}

func (c *segReader) ReadAt(p []byte, off int64) (int, error) {
	if len(p) >= segSize || off < 0 {
		return c.r.ReadAt(p, off)
	}
	n := 0
	for n < len(p) {
		if off >= c.size {
			return n, io.EOF
		}
		s := c.get(off / segSize)
		in := int(off % segSize)
		if in >= len(s.b) {
			if s.err != nil {
				return n, s.err
			}
			return n, io.EOF
		}
		k := copy(p[n:], s.b[in:])
		n += k
		off += int64(k)
	}
	return n, nil
}

func (c *segReader) get(i int64) *seg {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tick++
	if s := c.segs[i]; s != nil {
		s.used = c.tick
		return s
	}
	if len(c.segs) >= maxSegs {
		var old int64
		oldest := ^uint64(0)
		for k, s := range c.segs {
			if s.used < oldest {
				old, oldest = k, s.used
			}
		}
		delete(c.segs, old)
	}
	n := min(int64(segSize), c.size-i*segSize)
	s := &seg{b: make([]byte, n), used: c.tick}
	m, err := c.r.ReadAt(s.b, i*segSize)
	if m < len(s.b) {
		s.b = s.b[:m]
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		s.err = err
	}
	c.segs[i] = s
	return s
}
