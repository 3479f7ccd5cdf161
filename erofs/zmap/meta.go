package zmap

import (
	"encoding/binary"
	"io"
)

// metaReader reads small index records from Params.Meta, one block at a
// time (like the kernel's metabuf), never past MetaSize.
type metaReader struct {
	r      io.ReaderAt
	size   int64
	bits   uint8
	blk    int64 // cached block number, -1 if none
	buf    []byte
	direct []byte
}

func newMetaReader(p *Params) *metaReader {
	return &metaReader{r: p.Meta, size: p.MetaSize, bits: p.BlkSzBits, blk: -1}
}

// bytes returns n bytes at off. The slice is valid until the next call.
func (m *metaReader) bytes(off int64, n int) ([]byte, error) {
	if off < 0 || n < 0 || off > m.size || int64(n) > m.size-off {
		return nil, errf(off, "%d-byte index record past the end of metadata (%d bytes)", n, m.size)
	}
	bs := int64(1) << m.bits
	blk := off >> m.bits
	if (off+int64(n)-1)>>m.bits != blk {
		// Crosses a block: read it directly.
		if cap(m.direct) < n {
			m.direct = make([]byte, n)
		}
		b := m.direct[:n]
		if _, err := m.r.ReadAt(b, off); err != nil {
			return nil, errf(off, "read %d index bytes: %v", n, err)
		}
		return b, nil
	}
	if blk != m.blk {
		start := blk << m.bits
		l := bs
		if m.size-start < l {
			l = m.size - start
		}
		if int64(cap(m.buf)) < bs {
			m.buf = make([]byte, bs)
		}
		m.buf = m.buf[:l]
		if k, err := m.r.ReadAt(m.buf, start); k != len(m.buf) {
			m.blk = -1
			return nil, errf(off, "read index block %d: %v", blk, err)
		}
		m.blk = blk
	}
	s := off - blk<<m.bits
	return m.buf[s : s+int64(n)], nil
}

func (m *metaReader) u16(off int64) (uint16, error) {
	b, err := m.bytes(off, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b), nil
}

func (m *metaReader) u32(off int64) (uint32, error) {
	b, err := m.bytes(off, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (m *metaReader) u64(off int64) (uint64, error) {
	b, err := m.bytes(off, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}
