package zstdseek

import (
	"encoding/binary"
	"fmt"
	"io"
)

// MaxSeekFrames caps the number of frames a seek table may list (whatever
// its footer claims), so that the index of a hostile blob stays bounded.
const MaxSeekFrames = 1 << 22

const seekFooterSize = 9 // Number_Of_Frames u32, Seek_Table_Descriptor u8, Seekable_Magic_Number u32

// ReadSeekTable reads a seekable-zstd seek table (skippable frame magic
// 0x184D2A5E, footer {n_frames u32, descriptor u8, magic 0x8F92EAB1},
// entries {c_size u32, d_size u32[, xxh64 low32]}) from the end of the blob
// of the given size. It returns ErrNoSeekTable if the blob does not end with
// the seekable magic, and a *FormatError if the table is damaged or does not
// describe the blob exactly (frames from offset 0 up to the table).
// Nothing is decoded: a seek table whose sizes lie is caught by the Reader.
func ReadSeekTable(r io.ReaderAt, size int64) (*Index, error) {
	if size < seekFooterSize {
		return nil, ErrNoSeekTable
	}
	var foot [seekFooterSize]byte
	if err := readFull(r, foot[:], size-seekFooterSize); err != nil {
		return nil, fmt.Errorf("zstdseek: reading seek table footer: %w", err)
	}
	if binary.LittleEndian.Uint32(foot[5:]) != seekFooterMagic {
		return nil, ErrNoSeekTable
	}
	footOff := size - seekFooterSize
	n := int64(binary.LittleEndian.Uint32(foot[:]))
	desc := foot[4]
	if desc&0x7C != 0 {
		return nil, formatErr(footOff+4, int64(desc), "seek table descriptor: reserved bits 2-6 set")
	}
	esz := int64(8)
	if desc&0x80 != 0 {
		esz = 12
	}
	tableLen := 8 + n*esz + seekFooterSize
	if tableLen > size {
		return nil, formatErr(footOff, n, "seek table of %d frames (%d bytes) larger than the blob (%d bytes)", n, tableLen, size)
	}
	tableOff := size - tableLen
	if n > tableOff/minFrameSize {
		return nil, formatErr(footOff, n, "seek table lists more frames than the %d bytes before it can hold", tableOff)
	}
	if n > MaxSeekFrames {
		return nil, formatErr(footOff, n, "seek table lists more than %d frames", MaxSeekFrames)
	}
	var hdr [8]byte
	if err := readFull(r, hdr[:], tableOff); err != nil {
		return nil, fmt.Errorf("zstdseek: reading seek table header at %d: %w", tableOff, err)
	}
	if m := binary.LittleEndian.Uint32(hdr[:]); m != seekTableMagic {
		return nil, formatErr(tableOff, int64(m), "seek table frame magic is not 0x184D2A5E (footer says %d frames)", n)
	}
	if fs := int64(binary.LittleEndian.Uint32(hdr[4:])); fs != tableLen-8 {
		return nil, formatErr(tableOff+4, fs, "seek table frame size is not %d (%d entries of %d bytes + footer)", tableLen-8, n, esz)
	}
	ix := &Index{CompSize: size, Frames: make([]Frame, 0, min(n, 4096))}
	buf := make([]byte, min(n, 4096)*esz)
	var compOff, off int64
	for i := int64(0); i < n; {
		k := min(n-i, int64(len(buf))/esz)
		chunk := buf[:k*esz]
		pos := tableOff + 8 + i*esz
		if err := readFull(r, chunk, pos); err != nil {
			return nil, fmt.Errorf("zstdseek: reading seek table entries at %d: %w", pos, err)
		}
		for j := int64(0); j < k; j, i = j+1, i+1 {
			e := chunk[j*esz:]
			f := Frame{
				CompOff:  compOff,
				CompSize: int64(binary.LittleEndian.Uint32(e)),
				Off:      off,
				Size:     int64(binary.LittleEndian.Uint32(e[4:])),
			}
			if esz == 12 {
				f.Sum32, f.HasSum32 = binary.LittleEndian.Uint32(e[8:]), true
			}
			if f.CompSize < minFrameSize || f.CompSize > tableOff-compOff {
				return nil, formatErr(pos+j*esz, f.CompSize, "seek table entry %d: compressed size below %d or beyond the table at %d (frame at %d)", i, minFrameSize, tableOff, compOff)
			}
			compOff += f.CompSize
			off += f.Size
			ix.Frames = append(ix.Frames, f)
		}
	}
	if compOff != tableOff {
		return nil, formatErr(tableOff, compOff, "seek table frames end at %d, not at the table", compOff)
	}
	ix.Size = off
	return ix, nil
}

// readFull reads exactly len(p) bytes at off; a short read is io.ErrUnexpectedEOF.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %d bytes at %d: got %d: %w", len(p), off, n, err)
}
