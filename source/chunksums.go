package source

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"sync"
)

// Chunk digests: the sha256 of every fetch chunk of a blob, recorded in
// the one streaming pass that builds an image's index (package daemon's
// image artifacts) from bytes whose whole-blob digest was checked. A
// remote blob with chunk digests checks every chunk it fetches before
// anyone sees it: a registry, mirror or CDN serving wrong bytes gives an
// error (EIO to a reader, after retries), never wrong data.

// ChunkSums are the digests of a blob's aligned chunks of Chunk bytes.
type ChunkSums struct {
	Chunk int64
	Size  int64
	Sums  [][sha256.Size]byte
}

const chunkSumsMagic = "erofs-blockd chunk sums v1\n"

// MarshalBinary encodes the sums.
func (c *ChunkSums) MarshalBinary() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(chunkSumsMagic)
	binary.Write(&b, binary.LittleEndian, uint64(c.Chunk))
	binary.Write(&b, binary.LittleEndian, uint64(c.Size))
	binary.Write(&b, binary.LittleEndian, uint64(len(c.Sums)))
	for _, s := range c.Sums {
		b.Write(s[:])
	}
	return b.Bytes(), nil
}

// UnmarshalBinary decodes and checks the sums' shape.
func (c *ChunkSums) UnmarshalBinary(b []byte) error {
	rest, ok := bytes.CutPrefix(b, []byte(chunkSumsMagic))
	if !ok || len(rest) < 24 {
		return errors.New("chunk sums: bad header")
	}
	chunk := int64(binary.LittleEndian.Uint64(rest))
	size := int64(binary.LittleEndian.Uint64(rest[8:]))
	n := binary.LittleEndian.Uint64(rest[16:])
	rest = rest[24:]
	if chunk <= 0 || size <= 0 || n != uint64((size+chunk-1)/chunk) || uint64(len(rest)) != n*sha256.Size {
		return fmt.Errorf("chunk sums: %d sums of %d-byte chunks for %d bytes in %d bytes", n, chunk, size, len(rest))
	}
	c.Chunk, c.Size = chunk, size
	c.Sums = make([][sha256.Size]byte, n)
	for i := range c.Sums {
		copy(c.Sums[i][:], rest[i*sha256.Size:])
	}
	return nil
}

// ChunkHasher is an io.Writer that takes a blob's bytes in order and
// returns their chunk sums.
type ChunkHasher struct {
	chunk int64
	n     int64
	h     hash.Hash
	sums  [][sha256.Size]byte
}

// NewChunkHasher hashes chunks of the given size.
func NewChunkHasher(chunk int64) *ChunkHasher {
	return &ChunkHasher{chunk: chunk, h: sha256.New()}
}

func (c *ChunkHasher) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		k := min(int64(len(p)), c.chunk-c.n%c.chunk)
		c.h.Write(p[:k])
		c.n += k
		p = p[k:]
		if c.n%c.chunk == 0 {
			c.flush()
		}
	}
	return total, nil
}

func (c *ChunkHasher) flush() {
	var s [sha256.Size]byte
	c.h.Sum(s[:0])
	c.sums = append(c.sums, s)
	c.h.Reset()
}

// Sums returns the sums of everything written (call once, at the end).
func (c *ChunkHasher) Sums() *ChunkSums {
	if c.n%c.chunk != 0 && len(c.sums) == int(c.n/c.chunk) {
		c.flush()
	}
	return &ChunkSums{Chunk: c.chunk, Size: c.n, Sums: c.sums}
}

// chunkSums is the Opener's table of known chunk digests by identity.
type chunkSums struct {
	mu   sync.RWMutex
	m    map[string]*ChunkSums
	fail uint64 // guarded by mu
}

// FetchChunk is the fetch unit of this Opener's remote blobs.
func (o *Opener) FetchChunk() int64 { return o.opt.Chunk }

// SetChunkSums gives the chunk digests of the blob with this identity
// (e.g. "oci:sha256:..."); they apply to its fetches from now on. Sums of
// another chunk size than the Opener's are refused.
func (o *Opener) SetChunkSums(identity string, cs *ChunkSums) error {
	if cs.Chunk != o.opt.Chunk {
		return fmt.Errorf("chunk sums of %d-byte chunks, fetches use %d", cs.Chunk, o.opt.Chunk)
	}
	o.sums.mu.Lock()
	if o.sums.m == nil {
		o.sums.m = map[string]*ChunkSums{}
	}
	o.sums.m[identity] = cs
	o.sums.mu.Unlock()
	return nil
}

// ChunkSumFailures counts fetched chunks that did not match their digest.
func (o *Opener) ChunkSumFailures() uint64 {
	o.sums.mu.RLock()
	defer o.sums.mu.RUnlock()
	return o.sums.fail
}

// check verifies fetched bytes buf of chunks from index first of blob id.
func (s *chunkSums) check(id string, size, first int64, buf []byte) error {
	s.mu.RLock()
	cs := s.m[id]
	s.mu.RUnlock()
	if cs == nil {
		return nil
	}
	if cs.Size != size {
		return fmt.Errorf("chunk digests are for %d bytes, the blob has %d", cs.Size, size)
	}
	for i := int64(0); int64(len(buf)) > i*cs.Chunk; i++ {
		idx := first + i
		part := buf[i*cs.Chunk : min(int64(len(buf)), (i+1)*cs.Chunk)]
		if idx >= int64(len(cs.Sums)) || sha256.Sum256(part) != cs.Sums[idx] {
			s.mu.Lock()
			s.fail++
			s.mu.Unlock()
			return fmt.Errorf("chunk %d (bytes %d-%d) does not match its digest in the image index", idx, idx*cs.Chunk, idx*cs.Chunk+int64(len(part))-1)
		}
	}
	return nil
}
