package gzran

import (
	"errors"
	"hash/crc32"
	"io"

	"github.com/klauspost/compress/flate"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Builder decompresses a gzip stream in one streaming pass, verifying each
// member's CRC32 and ISIZE, and records a Point at the start of every member
// and at the first deflate block end more than Span output bytes past the
// previous point. Read returns the uncompressed stream; Index the result
// once Read has returned io.EOF.
type Builder struct {
	s      *stream
	span   int64
	points []Point
	// per-span CRC32C of the bytes delivered by Read
	crcs      []uint32
	cur       uint32
	bounds    []int64 // Out of points not yet reached by delivered bytes
	delivered int64
	done      bool
	err       error
}

// NewBuilder returns a Builder reading the gzip stream r. span <= 0 means
// DefaultSpan; spans below MinSpan are raised to it.
func NewBuilder(r io.Reader, span int64) *Builder {
	if span <= 0 {
		span = DefaultSpan
	}
	span = max(span, MinSpan)
	b := &Builder{s: newStream(r, 0), span: span}
	b.s.onMember = b.member
	b.s.onBlock = b.block
	return b
}

func (b *Builder) add(p Point) {
	if n := len(b.points); n > 0 {
		if p.Out <= b.points[n-1].Out {
			return // e.g. an empty member: the earlier point serves
		}
		b.bounds = append(b.bounds, p.Out)
	}
	b.points = append(b.points, p)
}

func (b *Builder) member(in, out int64) { b.add(Point{In: in, Out: out}) }

func (b *Builder) block(cp flate.InflateCheckpoint) {
	if n := len(b.points); n > 0 && cp.UncompressedOffset-b.points[n-1].Out <= b.span {
		return
	}
	p := cpPoint(cp)
	p.Window = append([]byte(nil), cp.Window...)
	b.add(p)
}

// Read reads uncompressed bytes. At the end of the stream (after the last
// member's trailer and any zero padding) it returns io.EOF; a corrupt stream
// gives a *FormatError naming the compressed offset.
func (b *Builder) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.s.Read(p)
	b.account(p[:n])
	if err != nil {
		b.err = err
		if err == io.EOF {
			b.done = true
		}
	}
	return n, err
}

// account adds delivered bytes to the running span CRC, closing spans at
// point boundaries.
func (b *Builder) account(data []byte) {
	for {
		for len(b.bounds) > 0 && b.bounds[0] <= b.delivered {
			b.crcs = append(b.crcs, b.cur)
			b.cur = 0
			b.bounds = b.bounds[1:]
		}
		if len(data) == 0 {
			return
		}
		k := int64(len(data))
		if len(b.bounds) > 0 {
			k = min(k, b.bounds[0]-b.delivered)
		}
		b.cur = crc32.Update(b.cur, castagnoli, data[:k])
		b.delivered += k
		data = data[k:]
	}
}

// Index returns the index, after Read returned io.EOF.
func (b *Builder) Index() (*Index, error) {
	if !b.done {
		if b.err != nil {
			return nil, b.err
		}
		return nil, errors.New("gzran: Builder.Index called before Read returned io.EOF")
	}
	b.account(nil)
	if len(b.bounds) != 0 {
		return nil, errors.New("gzran: internal error: point beyond the end of the stream")
	}
	size := b.s.out
	pts := b.points
	crcs := append(b.crcs[:len(b.crcs):len(b.crcs)], b.cur)
	// A point at the very end (a block end just before an empty final
	// block) starts an empty span: drop it.
	for len(pts) > 1 && pts[len(pts)-1].Out >= size {
		pts = pts[:len(pts)-1]
		crcs = crcs[:len(crcs)-1]
	}
	return &Index{
		Span:     b.span,
		Points:   pts,
		Size:     size,
		CompSize: b.s.pos(),
		SpanCRC:  crcs,
	}, nil
}

// Build reads the whole gzip stream r and returns its index (see Builder).
func Build(r io.Reader, span int64) (*Index, error) {
	b := NewBuilder(r, span)
	buf := make([]byte, 256<<10)
	for {
		_, err := b.Read(buf)
		if err == io.EOF {
			return b.Index()
		}
		if err != nil {
			return nil, err
		}
	}
}
