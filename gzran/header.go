package gzran

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// gzip member header flags (RFC 1952 2.3.1).
const (
	flagText     = 1 << 0
	flagHCRC     = 1 << 1
	flagExtra    = 1 << 2
	flagName     = 1 << 3
	flagComment  = 1 << 4
	flagReserved = 0xe0
)

// hdrReader reads header bytes from br, keeping the header's CRC32 (for
// FHCRC) and turning a short read into a "truncated header" error.
type hdrReader struct {
	br    *bufio.Reader
	start int64 // offset of the header's first byte
	n     int64 // header bytes read so far
	crc   uint32
}

func (h *hdrReader) err(err error) error {
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return gzErr(h.start+h.n, "truncated gzip member header (member at %d)", h.start)
	}
	return ioErr(h.start+h.n, err)
}

func (h *hdrReader) full(b []byte) error {
	n, err := io.ReadFull(h.br, b)
	h.crc = crc32.Update(h.crc, crc32.IEEETable, b[:n])
	h.n += int64(n)
	if err != nil {
		return h.err(err)
	}
	return nil
}

// skipZ skips a zero-terminated field (FNAME, FCOMMENT) of any length
// without buffering it.
func (h *hdrReader) skipZ() error {
	for {
		c, err := h.br.ReadByte()
		if err != nil {
			return h.err(err)
		}
		h.crc = crc32.Update(h.crc, crc32.IEEETable, []byte{c})
		h.n++
		if c == 0 {
			return nil
		}
	}
}

// readHeader parses one gzip member header at offset start and returns its
// length. The header must begin with the magic 1f 8b, method 8 (deflate),
// no reserved flag bits; FEXTRA, FNAME, FCOMMENT are skipped, FHCRC checked.
func readHeader(br *bufio.Reader, start int64) (int64, error) {
	h := &hdrReader{br: br, start: start}
	var b [10]byte
	if err := h.full(b[:]); err != nil {
		if (h.n >= 1 && b[0] != 0x1f) || (h.n >= 2 && b[1] != 0x8b) {
			return 0, gzErr(start, "bad gzip magic (want 1f 8b)")
		}
		return 0, err
	}
	if b[0] != 0x1f || b[1] != 0x8b {
		return 0, gzErr(start, "bad gzip magic %02x %02x (want 1f 8b)", b[0], b[1])
	}
	if b[2] != 8 {
		return 0, gzErr(start+2, "compression method %d (only 8, deflate, is defined)", b[2])
	}
	flg := b[3]
	if flg&flagReserved != 0 {
		return 0, gzErr(start+3, "reserved header flag bits set (flags %#02x)", flg)
	}
	if flg&flagExtra != 0 {
		var x [2]byte
		if err := h.full(x[:]); err != nil {
			return 0, err
		}
		xlen := int64(binary.LittleEndian.Uint16(x[:]))
		var buf [512]byte
		for xlen > 0 {
			k := min(xlen, int64(len(buf)))
			if err := h.full(buf[:k]); err != nil {
				return 0, err
			}
			xlen -= k
		}
	}
	if flg&flagName != 0 {
		if err := h.skipZ(); err != nil {
			return 0, err
		}
	}
	if flg&flagComment != 0 {
		if err := h.skipZ(); err != nil {
			return 0, err
		}
	}
	if flg&flagHCRC != 0 {
		want := uint16(h.crc)
		var x [2]byte
		if err := h.full(x[:]); err != nil {
			return 0, err
		}
		if got := binary.LittleEndian.Uint16(x[:]); got != want {
			return 0, gzErr(start+h.n-2, "header CRC16 %04x, header bytes give %04x", got, want)
		}
	}
	return h.n, nil
}

func ioErr(off int64, err error) error {
	return &ReadError{Off: off, Err: err}
}

// ReadError is a failure of the underlying compressed source (not of the
// format) at a compressed offset.
type ReadError struct {
	Off int64
	Err error
}

func (e *ReadError) Error() string {
	return fmt.Sprintf("gzran: reading compressed data at offset %d: %v", e.Off, e.Err)
}
func (e *ReadError) Unwrap() error { return e.Err }
