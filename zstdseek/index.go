// Package zstdseek gives random access to the uncompressed bytes of a zstd
// blob (RFC 8878). A blob is a sequence of independent frames; zstdseek
// indexes where each data frame lies in the compressed blob and which
// uncompressed bytes it holds, and a Reader serves any uncompressed range by
// decoding only the frames it touches (with a bounded cache of decoded frames).
//
// The index comes from one of:
//   - ReadSeekTable: the seek table of the seekable zstd format (a skippable
//     frame at the end of the blob), read without decoding anything;
//   - Builder / Build: one streaming decode of the whole blob, which works for
//     any zstd blob (zstd CLI, pzstd, klauspost, zstd:chunked layers from
//     containers/storage with their TOC and tar-split in skippable frames);
//   - Index.UnmarshalBinary: an index persisted earlier with MarshalBinary.
//
// Random access is only practical when frames are small: a single-frame blob
// has to be decoded from its start for any byte (MaxFrame tells callers).
//
// Nothing read is trusted: frame and block headers, seek tables and persisted
// indexes are checked before anything is allocated from their lengths, and a
// frame whose decoded bytes differ in size (or checksum) from what the index
// says is an error, never short or wrong bytes.
package zstdseek

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Frame is one zstd data frame of a blob.
type Frame struct {
	CompOff, CompSize int64 // the frame in the compressed blob
	Off, Size         int64 // its uncompressed bytes
	Checksum          bool  // frame has a content checksum (verified on decode)
	// Sum32 is the low 32 bits of XXH64 of the frame's uncompressed bytes,
	// when HasSum32 is set (from a seek table with checksums, or computed by
	// the Builder). The Reader checks it after every decode.
	Sum32    uint32
	HasSum32 bool
}

// Index lists the data frames of a zstd blob.
type Index struct {
	Frames   []Frame // data frames only (skippable frames are not listed), ascending, contiguous Off
	Size     int64   // uncompressed total
	CompSize int64   // size of the compressed blob
}

// ErrNoSeekTable reports a blob that does not end with a seekable-format seek table.
var ErrNoSeekTable = errors.New("zstdseek: no seek table")

// FormatError reports bad input: the offset (in the compressed blob, or in
// the persisted index for UnmarshalBinary), the rule broken and the value found.
type FormatError struct {
	Off  int64
	Rule string
	Val  int64
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("zstdseek: offset %d: %s (got %d)", e.Off, e.Rule, e.Val)
}

func formatErr(off int64, val int64, rule string, args ...any) error {
	if len(args) > 0 {
		rule = fmt.Sprintf(rule, args...)
	}
	return &FormatError{Off: off, Rule: rule, Val: val}
}

// minFrameSize is the smallest possible zstd frame: magic (4), frame header
// descriptor (1), window descriptor or 1-byte content size (1), one block header (3).
const minFrameSize = 9

// maxLen bounds every length and offset so that sums never overflow int64.
const maxLen = 1 << 60

// MaxFrame reports the largest frame's uncompressed size.
func (ix *Index) MaxFrame() int64 {
	var m int64
	for _, f := range ix.Frames {
		m = max(m, f.Size)
	}
	return m
}

// Validate checks the index's own consistency: frames in ascending,
// non-overlapping compressed ranges inside CompSize, each at least a minimal
// frame long; uncompressed ranges contiguous from 0 and summing to Size.
func (ix *Index) Validate() error {
	if ix.CompSize < 0 || ix.CompSize > maxLen || ix.Size < 0 || ix.Size > maxLen {
		return fmt.Errorf("zstdseek: index: sizes out of range (compressed %d, uncompressed %d)", ix.CompSize, ix.Size)
	}
	var compEnd, off int64
	for i, f := range ix.Frames {
		switch {
		case f.CompOff < compEnd || f.CompOff > ix.CompSize:
			return fmt.Errorf("zstdseek: index: frame %d at compressed offset %d: before the previous frame's end %d or beyond the blob (%d bytes)", i, f.CompOff, compEnd, ix.CompSize)
		case f.CompSize < minFrameSize || f.CompSize > ix.CompSize-f.CompOff:
			return fmt.Errorf("zstdseek: index: frame %d at compressed offset %d: compressed size %d below %d or beyond the blob (%d bytes)", i, f.CompOff, f.CompSize, minFrameSize, ix.CompSize)
		case f.Off != off:
			return fmt.Errorf("zstdseek: index: frame %d: uncompressed offset %d, want %d (frames must be contiguous)", i, f.Off, off)
		case f.Size < 0 || f.Size > ix.Size-off:
			return fmt.Errorf("zstdseek: index: frame %d at uncompressed offset %d: size %d beyond the total %d", i, f.Off, f.Size, ix.Size)
		}
		compEnd = f.CompOff + f.CompSize
		off += f.Size
	}
	if off != ix.Size {
		return fmt.Errorf("zstdseek: index: frames hold %d uncompressed bytes, total says %d", off, ix.Size)
	}
	return nil
}

// find returns the index of the frame holding uncompressed offset off
// (0 <= off < Size), skipping empty frames.
func (ix *Index) find(off int64) int {
	lo, hi := 0, len(ix.Frames)
	for lo < hi { // first frame with Off+Size > off
		m := int(uint(lo+hi) >> 1)
		if f := ix.Frames[m]; f.Off+f.Size <= off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Persisted form (little-endian, varints are encoding/binary uvarints):
//
//	magic "ZSIX" | version u16 = 1 | flags u16 = 0
//	n_frames uvarint | size uvarint | comp_size uvarint
//	n × { gap uvarint (comp_off - previous frame's comp end) | comp_size uvarint |
//	      size uvarint | flags u8 (1 checksum, 2 has sum32) | [sum32 u32] }
//	crc32c u32 of everything before it
const (
	indexMagic   = "ZSIX"
	indexVersion = 1
	flagChecksum = 1
	flagSum32    = 2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// MarshalBinary encodes the index in zstdseek's own persisted form.
func (ix *Index) MarshalBinary() ([]byte, error) {
	if err := ix.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 32+len(ix.Frames)*12)
	b = append(b, indexMagic...)
	b = binary.LittleEndian.AppendUint16(b, indexVersion)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.AppendUvarint(b, uint64(len(ix.Frames)))
	b = binary.AppendUvarint(b, uint64(ix.Size))
	b = binary.AppendUvarint(b, uint64(ix.CompSize))
	var compEnd int64
	for _, f := range ix.Frames {
		b = binary.AppendUvarint(b, uint64(f.CompOff-compEnd))
		b = binary.AppendUvarint(b, uint64(f.CompSize))
		b = binary.AppendUvarint(b, uint64(f.Size))
		var fl byte
		if f.Checksum {
			fl |= flagChecksum
		}
		if f.HasSum32 {
			fl |= flagSum32
		}
		b = append(b, fl)
		if f.HasSum32 {
			b = binary.LittleEndian.AppendUint32(b, f.Sum32)
		}
		compEnd = f.CompOff + f.CompSize
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

// UnmarshalBinary decodes an index written by MarshalBinary and validates it.
func (ix *Index) UnmarshalBinary(b []byte) error {
	const head = 8
	if len(b) < head+3+4 {
		return formatErr(0, int64(len(b)), "persisted index shorter than its minimum of %d bytes", head+3+4)
	}
	if string(b[:4]) != indexMagic {
		return formatErr(0, int64(binary.LittleEndian.Uint32(b)), "persisted index magic is not %q", indexMagic)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != indexVersion {
		return formatErr(4, int64(v), "persisted index version is not %d", indexVersion)
	}
	if fl := binary.LittleEndian.Uint16(b[6:]); fl != 0 {
		return formatErr(6, int64(fl), "persisted index flags must be 0")
	}
	body := b[:len(b)-4]
	if want, got := binary.LittleEndian.Uint32(b[len(b)-4:]), crc32.Checksum(body, castagnoli); want != got {
		return formatErr(int64(len(body)), int64(got), "persisted index CRC32C mismatch (stored %#08x)", want)
	}
	pos := head
	uv := func(what string) (int64, error) {
		v, n := binary.Uvarint(body[pos:])
		if n <= 0 || v > maxLen {
			return 0, formatErr(int64(pos), int64(n), "bad or out-of-range varint for %s", what)
		}
		pos += n
		return int64(v), nil
	}
	n, err := uv("frame count")
	if err != nil {
		return err
	}
	// Each frame takes at least 4 bytes: cap the count by the input before allocating.
	if n > int64(len(body)-pos)/4 {
		return formatErr(head, n, "frame count exceeds what %d bytes can hold", len(body)-pos)
	}
	var out Index
	if out.Size, err = uv("size"); err != nil {
		return err
	}
	if out.CompSize, err = uv("compressed size"); err != nil {
		return err
	}
	out.Frames = make([]Frame, 0, n)
	var compEnd, off int64
	for i := int64(0); i < n; i++ {
		var f Frame
		gap, err := uv("frame gap")
		if err != nil {
			return err
		}
		if f.CompSize, err = uv("frame compressed size"); err != nil {
			return err
		}
		if f.Size, err = uv("frame size"); err != nil {
			return err
		}
		if pos >= len(body) {
			return formatErr(int64(pos), i, "persisted index truncated in frame flags")
		}
		fl := body[pos]
		pos++
		if fl&^(flagChecksum|flagSum32) != 0 {
			return formatErr(int64(pos-1), int64(fl), "unknown frame flags")
		}
		f.Checksum = fl&flagChecksum != 0
		if fl&flagSum32 != 0 {
			if len(body)-pos < 4 {
				return formatErr(int64(pos), i, "persisted index truncated in frame checksum")
			}
			f.HasSum32, f.Sum32 = true, binary.LittleEndian.Uint32(body[pos:])
			pos += 4
		}
		if gap > maxLen-compEnd || f.CompSize > maxLen-compEnd-gap || f.Size > maxLen-off {
			return formatErr(int64(pos), i, "frame offsets overflow")
		}
		f.CompOff, f.Off = compEnd+gap, off
		compEnd, off = f.CompOff+f.CompSize, off+f.Size
		out.Frames = append(out.Frames, f)
	}
	if pos != len(body) {
		return formatErr(int64(pos), int64(len(body)-pos), "trailing bytes after the last frame")
	}
	if err := out.Validate(); err != nil {
		return err
	}
	*ix = out
	return nil
}
