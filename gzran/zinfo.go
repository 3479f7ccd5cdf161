package gzran

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// SOCI zinfo v2, as erofs-utils (lib/gzran.c) and SOCI write it, all
// little-endian:
//
//	header: have u32, span u64
//	have × point: in u64, out u64, bits u8, window [32768]byte
//
// in is the first compressed byte not fully consumed, bits the number of
// high bits of the byte before it still to consume; window ends with the
// byte just before out (at out < 32768 only its last out bytes are data).
const (
	zinfoHeaderSize = 12
	zinfoPointSize  = 17 + WindowSize
)

func zinfoErr(off int64, format string, args ...any) error {
	return &FormatError{What: "zinfo", Off: off, Msg: fmt.Sprintf(format, args...)}
}

// ReadZinfo reads a SOCI zinfo v2. The result has Size and CompSize -1
// (unknown) and no SpanCRC; UnmarshalMeta can fill them in. Memory grows
// with the bytes actually read, never with the point count the header
// claims; trailing bytes after the last point are an error.
func ReadZinfo(r io.Reader) (*Index, error) {
	var h [zinfoHeaderSize]byte
	if n, err := io.ReadFull(r, h[:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, zinfoErr(int64(n), "truncated header (%d of %d bytes)", n, zinfoHeaderSize)
		}
		return nil, err
	}
	have := binary.LittleEndian.Uint32(h[0:])
	span := binary.LittleEndian.Uint64(h[4:])
	if have == 0 {
		return nil, zinfoErr(0, "no points")
	}
	if span == 0 || span > maxOffset {
		return nil, zinfoErr(4, "span %d out of range", span)
	}
	ix := &Index{Span: int64(span), Size: -1, CompSize: -1,
		Points: make([]Point, 0, min(int(have), 1024))}
	buf := make([]byte, zinfoPointSize)
	off := int64(zinfoHeaderSize)
	for i := range int(have) {
		if n, err := io.ReadFull(r, buf); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return nil, zinfoErr(off+int64(n), "truncated at point %d of %d (header claims %d points, %d bytes each)", i, have, have, zinfoPointSize)
			}
			return nil, err
		}
		in := binary.LittleEndian.Uint64(buf[0:])
		out := binary.LittleEndian.Uint64(buf[8:])
		bits := buf[16]
		if in > maxOffset || out > maxOffset {
			return nil, zinfoErr(off, "point %d: offset out of range (in %d, out %d)", i, in, out)
		}
		p := Point{In: int64(in), Out: int64(out), Bits: bits}
		w := min(p.Out, WindowSize)
		p.Window = append([]byte(nil), buf[zinfoPointSize-int(w):]...)
		ix.Points = append(ix.Points, p)
		if err := ix.checkPoint(i); err != nil {
			return nil, zinfoErr(off, "%s", err.(*FormatError).Msg)
		}
		off += zinfoPointSize
	}
	var one [1]byte
	if n, _ := io.ReadFull(r, one[:]); n > 0 {
		return nil, zinfoErr(off, "trailing bytes after %d points", have)
	}
	return ix, nil
}

// WriteZinfo writes the index as SOCI zinfo v2. Windows shorter than 32 KiB
// are padded with zeros in front.
func (ix *Index) WriteZinfo(w io.Writer) error {
	if err := ix.Validate(); err != nil {
		return err
	}
	if len(ix.Points) > int(^uint32(0)) {
		return errors.New("gzran: too many points for zinfo")
	}
	span := ix.Span
	if span <= 0 {
		span = DefaultSpan
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	var h [zinfoHeaderSize]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(len(ix.Points)))
	binary.LittleEndian.PutUint64(h[4:], uint64(span))
	bw.Write(h[:])
	buf := make([]byte, zinfoPointSize)
	for i := range ix.Points {
		p := &ix.Points[i]
		putZinfoPoint(buf, p)
		if _, err := bw.Write(buf); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// putZinfoPoint encodes p into buf (zinfoPointSize bytes).
func putZinfoPoint(buf []byte, p *Point) {
	binary.LittleEndian.PutUint64(buf[0:], uint64(p.In))
	binary.LittleEndian.PutUint64(buf[8:], uint64(p.Out))
	buf[16] = p.Bits
	win := buf[17:]
	pad := WindowSize - len(p.Window)
	clear(win[:pad])
	copy(win[pad:], p.Window)
}
