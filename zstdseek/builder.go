package zstdseek

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// DefaultMaxWindow is the Builder's default bound on a frame's window size:
// 128 MiB, what the zstd CLI decodes without --long=N / --memory.
const DefaultMaxWindow = 128 << 20

// BuildOptions tune a Builder.
type BuildOptions struct {
	MaxWindow int64 // refuse frames whose window is larger; default DefaultMaxWindow
}

// Builder decompresses a zstd blob in one streaming pass and records every
// data frame. Skippable frames (zstd:chunked TOC and tar-split, seek tables,
// pzstd headers) are skipped. Each frame's content checksum, if present, is
// verified by the decoder; for frames without one the Builder computes the
// low 32 bits of XXH64 of the frame's bytes (Frame.Sum32) so that later
// random reads are checked too.
type Builder struct {
	br        *bufio.Reader
	pos       int64 // compressed bytes consumed
	maxWindow uint64
	dec       *zstd.Decoder
	fs        frameStream
	inFrame   bool
	cur       Frame
	hdr       frameHeader
	hash      xxh64
	ix        Index
	sawFrame  bool
	err       error // sticky; io.EOF when done
}

// NewBuilder returns a Builder reading the compressed blob from r.
func NewBuilder(r io.Reader) *Builder { return NewBuilderOptions(r, BuildOptions{}) }

// NewBuilderOptions is NewBuilder with options.
func NewBuilderOptions(r io.Reader, opt BuildOptions) *Builder {
	if opt.MaxWindow <= 0 {
		opt.MaxWindow = DefaultMaxWindow
	}
	b := &Builder{br: bufio.NewReaderSize(r, 256<<10), maxWindow: uint64(max(opt.MaxWindow, zstd.MinWindowSize))}
	b.fs.b = b
	b.dec, b.err = zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(min(b.maxWindow, (1<<41)+7*(1<<38))),
		zstd.WithDecoderMaxMemory(1<<63))
	if b.err != nil {
		b.err = fmt.Errorf("zstdseek: decoder: %w", b.err)
	}
	return b
}

// Read returns the uncompressed stream: the concatenated contents of all data frames.
func (b *Builder) Read(p []byte) (int, error) {
	for b.err == nil {
		if !b.inFrame {
			b.err = b.nextFrame()
			continue
		}
		if len(p) == 0 {
			return 0, nil
		}
		n, err := b.dec.Read(p)
		if n > 0 {
			b.cur.Size += int64(n)
			if !b.hdr.checksum {
				b.hash.Write(p[:n])
			}
			if b.hdr.contentSize >= 0 && b.cur.Size > b.hdr.contentSize {
				b.err = formatErr(b.cur.CompOff, b.cur.Size, "frame decodes to more than its content size %d", b.hdr.contentSize)
				return 0, b.err
			}
		}
		if err == io.EOF {
			b.err = b.endFrame()
		} else if err != nil {
			if b.fs.err != nil {
				err = b.fs.err
			} else {
				err = fmt.Errorf("zstdseek: frame at %d (uncompressed offset %d): %w", b.cur.CompOff, b.cur.Off+b.cur.Size, err)
			}
			b.err = err
		}
		if n > 0 {
			return n, nil
		}
	}
	return 0, b.err
}

// nextFrame starts the next frame, skipping skippable frames; at the end of
// the input it finishes the index and returns io.EOF.
func (b *Builder) nextFrame() error {
	m, err := b.br.Peek(4)
	if len(m) == 0 && err == io.EOF {
		if !b.sawFrame {
			return formatErr(b.pos, 0, "empty input: not a zstd blob")
		}
		b.ix.CompSize = b.pos
		b.dec.Close()
		return io.EOF
	}
	if len(m) < 4 {
		return formatErr(b.pos, int64(len(m)), "truncated frame magic")
	}
	magic := binary.LittleEndian.Uint32(m)
	if isSkippable(magic) {
		h, err := b.br.Peek(8)
		if len(h) < 8 {
			return formatErr(b.pos, int64(len(h)), "truncated skippable frame header: %v", err)
		}
		size := int64(binary.LittleEndian.Uint32(h[4:]))
		n, err := b.br.Discard(8 + int(size))
		if int64(n) != 8+size {
			return formatErr(b.pos, size, "truncated skippable frame (%d of %d content bytes): %v", n-8, size, err)
		}
		b.pos += 8 + size
		b.sawFrame = true
		return nil
	}
	if magic != frameMagic {
		return formatErr(b.pos, int64(magic), "not a zstd frame: magic is not 0xFD2FB528")
	}
	var hb []byte
	need := 5
	for {
		hb, _ = b.br.Peek(need)
		h, n, err := parseFrameHeader(hb, b.pos)
		if err != nil {
			return err
		}
		if n <= len(hb) {
			b.hdr = h
			break
		}
		if len(hb) < need || n == need {
			return formatErr(b.pos, int64(len(hb)), "truncated frame header (needs %d bytes)", n)
		}
		need = n
	}
	if b.hdr.window > b.maxWindow {
		return formatErr(b.pos, int64(b.hdr.window), "frame window size above the limit of %d bytes", b.maxWindow)
	}
	b.sawFrame = true
	b.cur = Frame{CompOff: b.pos, Off: b.ix.Size, Checksum: b.hdr.checksum}
	b.hash.reset()
	b.fs.start(b.hdr.len)
	if err := b.dec.Reset(&b.fs); err != nil {
		if b.fs.err != nil {
			return b.fs.err
		}
		return fmt.Errorf("zstdseek: frame at %d: %w", b.pos, err)
	}
	b.inFrame = true
	return nil
}

func (b *Builder) endFrame() error {
	b.inFrame = false
	if b.fs.err != nil {
		return b.fs.err
	}
	if b.fs.state != fsDone {
		return formatErr(b.cur.CompOff, b.fs.off, "decoder stopped before the frame's last block")
	}
	if b.hdr.contentSize >= 0 && b.cur.Size != b.hdr.contentSize {
		return formatErr(b.cur.CompOff, b.cur.Size, "frame decodes to a size other than its content size %d", b.hdr.contentSize)
	}
	b.cur.CompSize = b.fs.off
	b.cur.HasSum32 = true
	if b.hdr.checksum {
		b.cur.Sum32 = binary.LittleEndian.Uint32(b.fs.sum[:])
	} else {
		b.cur.Sum32 = uint32(b.hash.Sum64())
	}
	b.ix.Frames = append(b.ix.Frames, b.cur)
	b.ix.Size += b.cur.Size
	if b.ix.Size > maxLen {
		return formatErr(b.cur.CompOff, b.ix.Size, "uncompressed size beyond 2^60")
	}
	return nil
}

// Index returns the index once Read has returned io.EOF.
func (b *Builder) Index() (*Index, error) {
	if b.err != io.EOF {
		if b.err != nil {
			return nil, b.err
		}
		return nil, errors.New("zstdseek: Builder.Index called before the stream was read to io.EOF")
	}
	ix := b.ix
	ix.Frames = append([]Frame(nil), b.ix.Frames...)
	return &ix, nil
}

// Build reads the whole zstd blob from r and returns its index.
func Build(r io.Reader) (*Index, error) {
	b := NewBuilder(r)
	buf := make([]byte, 256<<10)
	for {
		if _, err := b.Read(buf); err != nil {
			if err == io.EOF {
				return b.Index()
			}
			return nil, err
		}
	}
}

// frameStream hands the decoder exactly one frame's bytes, following its
// structure (header, block headers and contents, checksum) so that it ends
// where the frame ends.
type frameStream struct {
	b      *Builder
	state  int
	left   int   // bytes left in the current part
	off    int64 // bytes of the frame passed on so far
	bh     [3]byte
	last   bool // the current block is the frame's last
	sum    [4]byte
	partAt int64 // frame offset where the current part starts
	err    error
}

const (
	fsHeader = iota
	fsBlockHeader
	fsBlockBody
	fsChecksum
	fsDone
)

func (s *frameStream) start(hdrLen int) {
	*s = frameStream{b: s.b, state: fsHeader, left: hdrLen}
}

func (s *frameStream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.state == fsDone {
		return 0, io.EOF
	}
	if len(p) > s.left {
		p = p[:s.left]
	}
	n, err := s.b.br.Read(p)
	switch s.state {
	case fsBlockHeader:
		copy(s.bh[s.off-s.partAt:], p[:n])
	case fsChecksum:
		copy(s.sum[s.off-s.partAt:], p[:n])
	}
	s.off += int64(n)
	s.b.pos += int64(n)
	s.left -= n
	if s.left == 0 {
		if e := s.next(); e != nil {
			s.err = e
			return n, e
		}
	}
	if n == 0 && err != nil {
		if err == io.EOF {
			s.err = formatErr(s.b.pos, s.off, "truncated frame starting at %d", s.b.cur.CompOff)
		} else {
			s.err = fmt.Errorf("zstdseek: reading frame at %d: %w", s.b.cur.CompOff, err)
		}
		return 0, s.err
	}
	return n, nil
}

// next moves to the next part of the frame when the current one is complete.
func (s *frameStream) next() error {
	for s.left == 0 && s.state != fsDone {
		s.partAt = s.off
		switch s.state {
		case fsHeader:
			s.state, s.left = fsBlockHeader, 3
		case fsBlockHeader:
			last, body, err := blockHeader(s.bh[:], s.b.cur.CompOff+s.off-3)
			if err != nil {
				return err
			}
			s.state, s.left, s.last = fsBlockBody, body, last
		case fsBlockBody:
			switch {
			case !s.last:
				s.state, s.left = fsBlockHeader, 3
			case s.b.hdr.checksum:
				s.state, s.left = fsChecksum, 4
			default:
				s.state = fsDone
			}
		case fsChecksum:
			s.state = fsDone
		}
	}
	return nil
}
