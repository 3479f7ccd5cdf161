package gzran

import (
	"bufio"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"

	"github.com/klauspost/compress/flate"
)

// stream states
const (
	stHeader  = iota // at a member boundary: header, zero padding or end
	stDeflate        // inside a member's deflate data
	stEnd            // past the last member (and any zero padding)
)

// countReader counts the bytes read from r.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// stream decodes a gzip stream (all members) from a bufio.Reader, starting
// either at a member header (Builder) or at a Point (Reader). Offsets it
// reports are absolute in the compressed blob.
type stream struct {
	in    *bufio.Reader
	cr    *countReader
	base  int64 // absolute offset of cr's first byte
	fr    io.ReadCloser
	state int
	out   int64 // absolute uncompressed offset of the next byte delivered
	err   error // sticky

	started  bool   // inside (or past) some member: a zero byte at a boundary is padding, EOF is the end
	checkCRC bool   // the current member was decoded from its start: check CRC32 and ISIZE
	crc      uint32 // CRC32 of the current member's output so far
	isize    uint32
	skew     int64 // bytes the inflater's offsets run ahead (see block)
	finalEnd int64 // offset just past the current member's deflate data, from the final block callback; -1 before

	onBlock  func(cp flate.InflateCheckpoint) // non-final block ends (Builder)
	onMember func(in, out int64)              // a member's deflate data starts at in, output out
}

const bufSize = 64 << 10

func newStream(r io.Reader, base int64) *stream {
	cr := &countReader{r: r}
	return &stream{in: bufio.NewReaderSize(cr, bufSize), cr: cr, base: base, finalEnd: -1}
}

// newStreamAt resumes decoding at point pt of a blob src of size srcSize.
func newStreamAt(src io.ReaderAt, srcSize int64, pt *Point) *stream {
	start, bo := pt.In, uint8(0)
	if pt.Bits > 0 {
		start, bo = pt.In-1, 8-pt.Bits
	}
	s := newStream(io.NewSectionReader(src, start, max(srcSize-start, 0)), start)
	s.started = true
	s.state = stDeflate
	s.out = pt.Out
	s.fr = flate.NewReaderOpts(s.in,
		flate.WithResumeFrom(flate.InflateCheckpoint{
			CompressedOffset:   start,
			UncompressedOffset: pt.Out,
			BitOffset:          bo,
			Window:             pt.Window,
		}),
		flate.WithEobCallback(s.block))
	return s
}

// pos is the absolute compressed offset of the next unread byte.
func (s *stream) pos() int64 { return s.base + s.cr.n - int64(s.in.Buffered()) }

// cpPoint turns a flate checkpoint (byte + bits consumed of it) into the
// zinfo convention (first byte not fully consumed + bits of the byte before).
func cpPoint(cp flate.InflateCheckpoint) Point {
	if cp.BitOffset == 0 {
		return Point{In: cp.CompressedOffset, Out: cp.UncompressedOffset}
	}
	return Point{In: cp.CompressedOffset + 1, Out: cp.UncompressedOffset, Bits: 8 - cp.BitOffset}
}

func (s *stream) block(cp flate.InflateCheckpoint) {
	// klauspost/compress v1.20.3 counts the whole bytes still in its bit
	// buffer twice when a stored block starts (dataBlock adds nb>>3 to
	// roffset again), so reported offsets run ahead by skew bytes after
	// such a block. The decoder has then read exactly up to pos() and holds
	// no bits (a stored block ends byte-aligned with an empty bit buffer),
	// while a Huffman block end lies at or before pos(): the true position is
	// min(reported - skew, pos()).
	rep := cp.CompressedOffset*8 + int64(cp.BitOffset)
	t := rep - 8*s.skew
	if r := 8 * s.pos(); t > r {
		t = r
		s.skew = (rep - t) / 8
	}
	cp.CompressedOffset, cp.BitOffset = t/8, uint8(t%8)
	if cp.Final {
		s.finalEnd = cp.CompressedOffset
		if cp.BitOffset > 0 {
			s.finalEnd++
		}
		return
	}
	if s.onBlock != nil {
		s.onBlock(cp)
	}
}

func (s *stream) Read(p []byte) (int, error) {
	for {
		if s.err != nil {
			return 0, s.err
		}
		switch s.state {
		case stHeader:
			if err := s.nextMember(); err != nil {
				s.err = err
				return 0, err
			}
		case stEnd:
			s.err = io.EOF
			return 0, io.EOF
		case stDeflate:
			if len(p) == 0 {
				return 0, nil
			}
			n, err := s.fr.Read(p)
			if n > 0 {
				if s.checkCRC {
					s.crc = crc32.Update(s.crc, crc32.IEEETable, p[:n])
				}
				s.isize += uint32(n)
				s.out += int64(n)
			}
			switch {
			case err == io.EOF:
				if err := s.endMember(); err != nil {
					s.err = err
					return n, err
				}
				s.state = stHeader
			case err != nil:
				s.err = s.flateErr(err)
				return n, s.err
			}
			if n > 0 {
				return n, nil
			}
		}
	}
}

func (s *stream) flateErr(err error) error {
	var ce flate.CorruptInputError
	if errors.As(err, &ce) {
		return gzErr(int64(ce)-s.skew, "corrupt deflate data (before this offset; output %d)", s.out)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return gzErr(s.pos(), "truncated deflate data (output %d)", s.out)
	}
	return ioErr(s.pos(), err)
}

// nextMember handles a member boundary: the next header, zero padding up to
// the end of the input, or the end.
func (s *stream) nextMember() error {
	pos := s.pos()
	b, err := s.in.Peek(1)
	if len(b) == 0 {
		if err == io.EOF || err == nil {
			if !s.started {
				return gzErr(pos, "empty input: no gzip member")
			}
			s.state = stEnd
			return nil
		}
		return ioErr(pos, err)
	}
	if b[0] == 0 && s.started {
		if err := s.skipZeros(); err != nil {
			return err
		}
		s.state = stEnd
		return nil
	}
	hlen, err := readHeader(s.in, pos)
	if err != nil {
		return err
	}
	s.started = true
	start := pos + hlen
	s.fr = flate.NewReaderOpts(s.in,
		flate.WithResumeFrom(flate.InflateCheckpoint{CompressedOffset: start, UncompressedOffset: s.out}),
		flate.WithEobCallback(s.block))
	s.checkCRC, s.crc, s.isize, s.finalEnd, s.skew = true, 0, 0, -1, 0
	s.state = stDeflate
	if s.onMember != nil {
		s.onMember(start, s.out)
	}
	return nil
}

// skipZeros consumes the rest of the input, which must be zero bytes.
func (s *stream) skipZeros() error {
	for {
		pos := s.pos()
		b, err := s.in.Peek(1)
		if len(b) == 0 {
			if err == io.EOF || err == nil {
				return nil
			}
			return ioErr(pos, err)
		}
		b, _ = s.in.Peek(s.in.Buffered())
		for i, c := range b {
			if c != 0 {
				return gzErr(pos+int64(i), "byte %#02x in the zero padding after the last member (trailing garbage)", c)
			}
		}
		s.in.Discard(len(b))
	}
}

// endMember reads the trailer after a member's final deflate block and
// checks CRC32 and ISIZE when the member was decoded from its start.
func (s *stream) endMember() error {
	end := s.pos()
	if s.finalEnd >= 0 && s.finalEnd != end {
		return gzErr(end, "deflate data ends at %d by its bit count but %d bytes were consumed", s.finalEnd, end)
	}
	var t [8]byte
	if _, err := io.ReadFull(s.in, t[:]); err != nil {
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			return gzErr(end, "truncated gzip trailer (8 bytes: CRC32, ISIZE) at output %d", s.out)
		}
		return ioErr(end, err)
	}
	if s.checkCRC {
		if got := binary.LittleEndian.Uint32(t[:4]); got != s.crc {
			return gzErr(end, "member CRC32 mismatch: trailer says %08x, data gives %08x", got, s.crc)
		}
		if got := binary.LittleEndian.Uint32(t[4:]); got != s.isize {
			return gzErr(end+4, "member ISIZE mismatch: trailer says %d, data gives %d (mod 2^32)", got, s.isize)
		}
	}
	s.fr = nil
	s.checkCRC = false
	return nil
}
