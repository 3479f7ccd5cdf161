package zstdseek

import "encoding/binary"

// RFC 8878 structure: frames, skippable frames and block headers. Only what
// is needed to find where a frame ends; the decoder checks the rest.

const (
	frameMagic      = 0xFD2FB528
	skippableMask   = 0xFFFFFFF0
	skippableMagic  = 0x184D2A50 // 0x184D2A50..0x184D2A5F
	seekTableMagic  = 0x184D2A5E
	seekFooterMagic = 0x8F92EAB1
	maxBlockSize    = 128 << 10 // Block_Maximum_Size upper bound
	maxHeaderSize   = 4 + 1 + 1 + 4 + 8
	blockRaw        = 0
	blockRLE        = 1
	blockCompressed = 2
)

func isSkippable(magic uint32) bool { return magic&skippableMask == skippableMagic }

// frameHeader is a parsed zstd frame header.
type frameHeader struct {
	len         int    // header bytes including the magic
	window      uint64 // Window_Size (for single-segment frames: the content size)
	contentSize int64  // Frame_Content_Size, -1 if absent
	checksum    bool   // Content_Checksum_Flag
	dictID      uint32
}

// parseFrameHeader parses a frame header at the start of b. If b is too
// short it returns need > len(b) (the header's full length, when known) and
// no error. Offsets in errors are relative to base.
func parseFrameHeader(b []byte, base int64) (h frameHeader, need int, err error) {
	if len(b) < 5 {
		return h, 5, nil
	}
	if m := binary.LittleEndian.Uint32(b); m != frameMagic {
		return h, 0, formatErr(base, int64(m), "not a zstd frame: magic is not 0xFD2FB528")
	}
	fhd := b[4]
	if fhd&0x08 != 0 {
		return h, 0, formatErr(base+4, int64(fhd), "frame header descriptor: reserved bit 3 set")
	}
	single := fhd&0x20 != 0
	h.checksum = fhd&0x04 != 0
	didSize := [4]int{0, 1, 2, 4}[fhd&3]
	fcsSize := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcsSize == 0 && single {
		fcsSize = 1
	}
	wdSize := 1
	if single {
		wdSize = 0
	}
	h.len = 5 + wdSize + didSize + fcsSize
	if len(b) < h.len {
		return h, h.len, nil
	}
	p := 5
	if !single {
		wd := b[p]
		exp := uint(wd >> 3)
		base := uint64(1) << (10 + exp)
		h.window = base + base/8*uint64(wd&7)
		p++
	}
	switch didSize {
	case 1:
		h.dictID = uint32(b[p])
	case 2:
		h.dictID = uint32(binary.LittleEndian.Uint16(b[p:]))
	case 4:
		h.dictID = binary.LittleEndian.Uint32(b[p:])
	}
	p += didSize
	h.contentSize = -1
	switch fcsSize {
	case 1:
		h.contentSize = int64(b[p])
	case 2:
		h.contentSize = int64(binary.LittleEndian.Uint16(b[p:])) + 256
	case 4:
		h.contentSize = int64(binary.LittleEndian.Uint32(b[p:]))
	case 8:
		v := binary.LittleEndian.Uint64(b[p:])
		if v > maxLen {
			return h, 0, formatErr(base+int64(p), int64(v>>1), "frame content size beyond 2^60")
		}
		h.contentSize = int64(v)
	}
	if single {
		h.window = uint64(h.contentSize)
	}
	if h.dictID != 0 {
		return h, 0, formatErr(base+5+int64(wdSize), int64(h.dictID), "frame needs a dictionary (not supported)")
	}
	return h, h.len, nil
}

// blockHeader decodes a 3-byte block header: whether it is the last block
// and how many bytes of block content follow it.
func blockHeader(b []byte, off int64) (last bool, body int, err error) {
	v := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
	last = v&1 != 0
	size := int(v >> 3)
	switch (v >> 1) & 3 {
	case blockRaw, blockCompressed:
		body = size
	case blockRLE:
		body = 1
	default:
		return false, 0, formatErr(off, int64(v), "block type 3 is reserved")
	}
	if size > maxBlockSize {
		return false, 0, formatErr(off, int64(size), "block size above 128 KiB")
	}
	return last, body, nil
}

// frameExtent walks the frame at the start of b and returns its header and
// its total length (header, blocks, checksum). Offsets in errors are base+i.
func frameExtent(b []byte, base int64) (frameHeader, int64, error) {
	h, need, err := parseFrameHeader(b, base)
	if err != nil {
		return h, 0, err
	}
	if need > len(b) {
		return h, 0, formatErr(base, int64(len(b)), "truncated frame header (needs %d bytes)", need)
	}
	p := int64(h.len)
	for {
		if int64(len(b))-p < 3 {
			return h, 0, formatErr(base+p, int64(len(b))-p, "truncated frame: block header missing")
		}
		last, body, err := blockHeader(b[p:], base+p)
		if err != nil {
			return h, 0, err
		}
		p += 3
		if int64(len(b))-p < int64(body) {
			return h, 0, formatErr(base+p, int64(body), "truncated frame: block content beyond the end")
		}
		p += int64(body)
		if last {
			break
		}
	}
	if h.checksum {
		if int64(len(b))-p < 4 {
			return h, 0, formatErr(base+p, int64(len(b))-p, "truncated frame: content checksum missing")
		}
		p += 4
	}
	return h, p, nil
}
