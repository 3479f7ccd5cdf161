// Package gzran gives random access to the uncompressed bytes of a gzip
// stream (RFC 1952, one or more members) through a checkpoint index.
//
// A Point is a resume point at a deflate block boundary: the compressed bit
// position, the uncompressed offset and the up-to-32 KiB window before it.
// Builder makes an Index in one streaming pass over the gzip bytes (verifying
// every member's CRC32 and ISIZE); ReadZinfo/WriteZinfo read and write the
// SOCI zinfo v2 format that `mkfs.erofs --gzinfo` and SOCI use; MarshalMeta /
// UnmarshalMeta carry what zinfo lacks (sizes, per-span CRC32C). Reader serves
// the uncompressed bytes as an io.ReaderAt over the compressed blob, decoding
// from the nearest point and caching decoded segments.
//
// The package owns the gzip framing and the index formats; it does not know
// where the blob comes from (any io.ReaderAt) or what the bytes are (tar).
package gzran

import (
	"fmt"
)

const (
	// WindowSize is the deflate history a point carries (and zinfo stores).
	WindowSize = 32 << 10
	// DefaultSpan is the default distance between points in output bytes.
	DefaultSpan = 4 << 20
	// MinSpan is the smallest span Builder accepts (smaller values are raised
	// to it), so that an index never holds more window bytes than output.
	MinSpan = WindowSize
	// maxOffset bounds every offset read from an index (2^62).
	maxOffset = 1 << 62
)

// Point is a resume point at a deflate block boundary.
type Point struct {
	In     int64  // compressed offset of the first byte not yet fully consumed
	Out    int64  // uncompressed offset
	Bits   uint8  // bits of the byte before In still to consume (zinfo v2 semantics), 0..7
	Window []byte // the up-to-32 KiB of output before Out (shorter at a member/stream start)
}

// bitPos is the point's position in the compressed stream, in bits.
func (p *Point) bitPos() int64 { return p.In*8 - int64(p.Bits) }

// Index is a checkpoint index over one gzip stream.
type Index struct {
	Span     int64    // target distance between points in output bytes (default 4 MiB)
	Points   []Point  // ascending; Points[0].Out == 0
	Size     int64    // uncompressed size (total of all members); -1 if unknown (external zinfo)
	CompSize int64    // compressed size, -1 if unknown
	SpanCRC  []uint32 // optional: CRC32C of each span's uncompressed bytes [Points[i].Out, Points[i+1].Out or Size)
}

// FormatError reports bad input: a gzip stream, a zinfo or a meta sidecar
// that breaks a rule, at an offset of that input.
type FormatError struct {
	What string // "gzip", "zinfo", "meta", "index"
	Off  int64  // offset in that input (compressed offset for gzip)
	Msg  string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("gzran: %s: offset %d: %s", e.What, e.Off, e.Msg)
}

func gzErr(off int64, format string, args ...any) error {
	return &FormatError{What: "gzip", Off: off, Msg: fmt.Sprintf(format, args...)}
}

// Validate checks the index's own consistency: points present and ascending,
// Points[0].Out == 0, Bits in 0..7, windows at most 32 KiB and no longer than
// their offset, sizes not below the last point, SpanCRC one per point.
func (ix *Index) Validate() error {
	if len(ix.Points) == 0 {
		return &FormatError{What: "index", Msg: "no points"}
	}
	if ix.Span < 0 {
		return &FormatError{What: "index", Msg: fmt.Sprintf("negative span %d", ix.Span)}
	}
	for i := range ix.Points {
		if err := ix.checkPoint(i); err != nil {
			return err
		}
	}
	last := &ix.Points[len(ix.Points)-1]
	if ix.Size < -1 || (ix.Size >= 0 && ix.Size < last.Out) {
		return &FormatError{What: "index", Msg: fmt.Sprintf("size %d below last point output %d", ix.Size, last.Out)}
	}
	if ix.CompSize < -1 || (ix.CompSize >= 0 && ix.CompSize < last.In) {
		return &FormatError{What: "index", Msg: fmt.Sprintf("compressed size %d below last point input %d", ix.CompSize, last.In)}
	}
	if len(ix.SpanCRC) != 0 && len(ix.SpanCRC) != len(ix.Points) {
		return &FormatError{What: "index", Msg: fmt.Sprintf("%d span CRCs for %d points", len(ix.SpanCRC), len(ix.Points))}
	}
	return nil
}

// checkPoint applies the per-point rules to point i (against point i-1).
func (ix *Index) checkPoint(i int) error {
	bad := func(format string, args ...any) error {
		return &FormatError{What: "index", Off: int64(i), Msg: fmt.Sprintf("point %d: ", i) + fmt.Sprintf(format, args...)}
	}
	p := &ix.Points[i]
	switch {
	case p.Bits > 7:
		return bad("bits %d > 7", p.Bits)
	case p.In < 0 || p.In > maxOffset || p.Out < 0 || p.Out > maxOffset:
		return bad("offset out of range (in %d, out %d)", p.In, p.Out)
	case p.Bits > 0 && p.In < 1:
		return bad("bits %d at input offset 0", p.Bits)
	case len(p.Window) > WindowSize:
		return bad("window %d bytes > %d", len(p.Window), WindowSize)
	case int64(len(p.Window)) > p.Out:
		return bad("window %d bytes > output offset %d", len(p.Window), p.Out)
	}
	if i == 0 {
		if p.Out != 0 {
			return bad("first point at output %d, want 0", p.Out)
		}
		return nil
	}
	q := &ix.Points[i-1]
	if p.Out < q.Out {
		return bad("output offset %d below previous %d", p.Out, q.Out)
	}
	if p.bitPos() <= q.bitPos() {
		return bad("input bit position %d not above previous %d", p.bitPos(), q.bitPos())
	}
	return nil
}
