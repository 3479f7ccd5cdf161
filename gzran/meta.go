package gzran

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// The meta sidecar holds what zinfo lacks, little-endian:
//
//	magic "GZRANMT1"
//	span i64, size i64, compsize i64 (-1: unknown)
//	npoints u32, pointsCRC u32 (CRC32C over every point as zinfo encodes it)
//	nspancrc u32 (0 or npoints), nspancrc × u32
//	CRC32C of all the bytes before it, u32
//
// pointsCRC ties the sidecar to one index: UnmarshalMeta rejects it for any
// other (a different point count, offset, bit count or window).
const (
	metaMagic = "GZRANMT1"
	metaFixed = 8 + 8*3 + 4*3
)

func metaErr(off int, format string, args ...any) error {
	return &FormatError{What: "meta", Off: int64(off), Msg: fmt.Sprintf(format, args...)}
}

// pointsCRC is the CRC32C of the points in their zinfo encoding.
func (ix *Index) pointsCRC() uint32 {
	buf := make([]byte, zinfoPointSize)
	var c uint32
	for i := range ix.Points {
		putZinfoPoint(buf, &ix.Points[i])
		c = crc32.Update(c, castagnoli, buf)
	}
	return c
}

// MarshalMeta encodes Span, Size, CompSize and SpanCRC, tied to this index's
// points.
func (ix *Index) MarshalMeta() []byte {
	b := make([]byte, 0, metaFixed+4*len(ix.SpanCRC)+4)
	b = append(b, metaMagic...)
	b = binary.LittleEndian.AppendUint64(b, uint64(ix.Span))
	b = binary.LittleEndian.AppendUint64(b, uint64(ix.Size))
	b = binary.LittleEndian.AppendUint64(b, uint64(ix.CompSize))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(ix.Points)))
	b = binary.LittleEndian.AppendUint32(b, ix.pointsCRC())
	b = binary.LittleEndian.AppendUint32(b, uint32(len(ix.SpanCRC)))
	for _, c := range ix.SpanCRC {
		b = binary.LittleEndian.AppendUint32(b, c)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// UnmarshalMeta decodes a sidecar made by MarshalMeta, checks its own
// checksum and that it belongs to ix (point count and a CRC over all
// points), and sets ix.Span, Size, CompSize and SpanCRC. On error ix is
// unchanged.
func (ix *Index) UnmarshalMeta(b []byte) error {
	if len(b) < metaFixed+4 {
		return metaErr(0, "%d bytes, shorter than the fixed %d", len(b), metaFixed+4)
	}
	if string(b[:8]) != metaMagic {
		return metaErr(0, "bad magic %q", b[:8])
	}
	le := binary.LittleEndian
	n := le.Uint32(b[metaFixed-4:])
	if n != 0 && int64(n) != int64(len(ix.Points)) {
		return metaErr(metaFixed-4, "%d span CRCs for an index of %d points", n, len(ix.Points))
	}
	if want := metaFixed + 4*int(n) + 4; len(b) != want {
		return metaErr(len(b), "%d bytes, want %d for %d span CRCs", len(b), want, n)
	}
	body := b[:len(b)-4]
	if got, want := le.Uint32(b[len(b)-4:]), crc32.Checksum(body, castagnoli); got != want {
		return metaErr(len(b)-4, "checksum %08x, content gives %08x", got, want)
	}
	span := int64(le.Uint64(b[8:]))
	size := int64(le.Uint64(b[16:]))
	comp := int64(le.Uint64(b[24:]))
	np := le.Uint32(b[32:])
	pcrc := le.Uint32(b[36:])
	if int64(np) != int64(len(ix.Points)) {
		return metaErr(32, "made for an index of %d points, this one has %d", np, len(ix.Points))
	}
	if got := ix.pointsCRC(); got != pcrc {
		return metaErr(36, "made for other points (points CRC %08x, this index gives %08x)", pcrc, got)
	}
	if span <= 0 || span > maxOffset {
		return metaErr(8, "span %d out of range", span)
	}
	crcs := make([]uint32, n)
	for i := range crcs {
		crcs[i] = le.Uint32(b[metaFixed+4*i:])
	}
	cand := Index{Span: span, Points: ix.Points, Size: size, CompSize: comp, SpanCRC: crcs}
	if n == 0 {
		cand.SpanCRC = nil
	}
	if err := cand.Validate(); err != nil {
		return metaErr(16, "%s", err.(*FormatError).Msg)
	}
	*ix = cand
	return nil
}
