// Package decompress turns the raw bytes of one EROFS physical cluster
// (pcluster) into the logical bytes of the extent that references it.
//
// It knows the EROFS framing of each algorithm (see the Linux kernel's
// fs/erofs/decompressor*.c and erofs-utils lib/decompress.c) and nothing about
// inodes or indexes; package zmap finds the extents, package erofs reads the
// raw bytes.
//
// API (stable; changes are noted here):
//
//	type Alg uint8
//	const (
//	    LZ4 Alg = 0; LZMA Alg = 1; Deflate Alg = 2; Zstd Alg = 3 // on-disk algorithm ids
//	    Shifted Alg = 4    // uncompressed (PLAIN lcluster), data at the start of the pcluster
//	    Interlaced Alg = 5 // uncompressed, rotated by the block offset of the extent start
//	)
//	func (a Alg) String() string
//
//	type Options struct {
//	    ZeroPadding      bool  // superblock LZ4_0PADDING (incompat 0x1): LZ4 data is tail-aligned
//	    Partial          bool  // the stream may decode to more than Skip+len(dst) bytes (PARTIAL_REF,
//	                           // or a read of only a prefix of the extent)
//	    Skip             int   // decoded bytes to discard before dst[0] (read starting inside the extent)
//	    BlockSize        int   // filesystem block size; needed for Interlaced; bounds the zero-padding scan
//	                           // to the first block, as the kernel does (0: scan the whole pcluster)
//	    InterlacedOffset int   // Interlaced only: block offset of the extent's logical start (m_la % bs)
//	}
//	// Decompress fills dst with decoded bytes [o.Skip, o.Skip+len(dst)) of the
//	// pcluster src. Without o.Partial the stream must decode to exactly
//	// o.Skip+len(dst) bytes. Errors wrap ErrCorrupt or ErrUnsupported.
//	func Decompress(alg Alg, dst, src []byte, o Options) error
//
//	var ErrCorrupt     // corrupt or truncated stream, or a size mismatch
//	var ErrUnsupported // e.g. an unknown algorithm or a pcluster beyond the limits
//	const MaxPclusterSize = 1 << 20   // Z_EROFS_PCLUSTER_MAX_SIZE: len(src) above this is ErrUnsupported
//	const MaxDecodedSize  = 12 << 20  // Z_EROFS_PCLUSTER_MAX_DSIZE: Skip+len(dst) above this is ErrUnsupported
//
// Framing facts (kernel decompressor*.c):
//   - LZ4 is a raw LZ4 block. With ZeroPadding the compressed bytes end at the
//     end of the pcluster and leading zero bytes are padding; an all-zero first
//     block is corrupt. Without it (legacy images) the data starts at byte 0 and
//     is followed by garbage, so decoding stops once the output is full.
//   - DEFLATE is raw deflate (RFC 1951, no zlib header), ZSTD is a zstd frame;
//     both are tail-aligned with leading zero padding, always.
//   - LZMA is MicroLZMA (xz-embedded's framing of raw LZMA1, lzma.go), also
//     tail-aligned with leading zero padding.
//
// No input can make Decompress panic or allocate more than MaxDecodedSize
// beyond dst.
package decompress

import (
	"errors"
	"fmt"
)

// Alg is an EROFS compression format as found in a map header or extent
// record, plus the two uncompressed formats the kernel uses for PLAIN
// lclusters.
type Alg uint8

// Algorithms. The first four are the on-disk ids (Z_EROFS_COMPRESSION_*).
const (
	LZ4        Alg = 0
	LZMA       Alg = 1
	Deflate    Alg = 2
	Zstd       Alg = 3
	Shifted    Alg = 4
	Interlaced Alg = 5
)

// String names the algorithm.
func (a Alg) String() string {
	switch a {
	case LZ4:
		return "lz4"
	case LZMA:
		return "lzma"
	case Deflate:
		return "deflate"
	case Zstd:
		return "zstd"
	case Shifted:
		return "plain"
	case Interlaced:
		return "interlaced"
	}
	return fmt.Sprintf("alg(%d)", uint8(a))
}

// Limits from the kernel's erofs_fs.h.
const (
	MaxPclusterSize = 1 << 20  // Z_EROFS_PCLUSTER_MAX_SIZE
	MaxDecodedSize  = 12 << 20 // Z_EROFS_PCLUSTER_MAX_DSIZE
)

// Errors. Every error Decompress returns wraps one of these.
var (
	ErrCorrupt     = errors.New("corrupt compressed data")
	ErrUnsupported = errors.New("unsupported compression")
)

// Options describe how a pcluster is framed and which part of its decoded
// stream the caller wants.
type Options struct {
	// ZeroPadding is the superblock's LZ4_0PADDING feature: LZ4 data is
	// tail-aligned in the pcluster with leading zeros.
	ZeroPadding bool
	// Partial allows the stream to decode to more than Skip+len(dst) bytes.
	Partial bool
	// Skip is the number of decoded bytes to discard before dst[0].
	Skip int
	// BlockSize is the filesystem block size: required for Interlaced; when
	// set, zero padding must end within the first block (kernel
	// z_erofs_fixup_insize).
	BlockSize int
	// InterlacedOffset is the block offset of the extent's logical start
	// (Interlaced only).
	InterlacedOffset int
}

func corrupt(alg Alg, format string, a ...any) error {
	return fmt.Errorf("%v: %s: %w", alg, fmt.Sprintf(format, a...), ErrCorrupt)
}

// Decompress fills dst with the decoded bytes [o.Skip, o.Skip+len(dst)) of
// the pcluster src, decoded with alg.
func Decompress(alg Alg, dst, src []byte, o Options) error {
	if o.Skip < 0 {
		return fmt.Errorf("%v: negative skip %d: %w", alg, o.Skip, ErrCorrupt)
	}
	if len(src) > MaxPclusterSize {
		return fmt.Errorf("%v: pcluster of %d bytes exceeds %d: %w", alg, len(src), MaxPclusterSize, ErrUnsupported)
	}
	total := o.Skip + len(dst)
	if total > MaxDecodedSize || total < 0 {
		return fmt.Errorf("%v: decoded size %d exceeds %d: %w", alg, total, MaxDecodedSize, ErrUnsupported)
	}
	switch alg {
	case Shifted:
		if total > len(src) {
			return corrupt(alg, "decoded length %d exceeds pcluster size %d", total, len(src))
		}
		copy(dst, src[o.Skip:total])
		return nil
	case Interlaced:
		return interlaced(dst, src, o)
	case LZ4, Deflate, Zstd, LZMA:
	default:
		return fmt.Errorf("%v: unknown algorithm: %w", alg, ErrUnsupported)
	}

	in := src
	if alg != LZ4 || o.ZeroPadding {
		// Tail-aligned: skip the zero padding. The kernel looks for the
		// first non-zero byte (z_erofs_fixup_insize); all zeros is corrupt.
		// The kernel only scans the first block for it.
		lim := len(in)
		if o.BlockSize > 0 && o.BlockSize < lim {
			lim = o.BlockSize
		}
		i := 0
		for i < lim && in[i] == 0 {
			i++
		}
		if i == lim {
			return corrupt(alg, "first %d bytes of the pcluster are all zero padding", lim)
		}
		in = in[i:]
	}

	// Decode into dst directly when nothing is skipped; otherwise into a
	// scratch buffer of the bounded total size.
	out := dst
	if o.Skip > 0 {
		out = make([]byte, total)
	}
	var err error
	switch alg {
	case LZ4:
		// Legacy (non-0padding) pclusters carry trailing garbage, so the
		// kernel decodes them with LZ4_decompress_safe_partial.
		partial := o.Partial || !o.ZeroPadding
		if !partial && lz4Fast(out, in) {
			break
		}
		err = lz4Block(out, in, partial)
	case Deflate:
		err = inflate(out, in, o.Partial)
	case Zstd:
		err = unzstd(out, in, o.Partial)
	case LZMA:
		err = unlzma(out, in, o.Partial)
	}
	if err != nil {
		return err
	}
	if o.Skip > 0 {
		copy(dst, out[o.Skip:])
	}
	return nil
}

// interlaced undoes the rotation of an INTERLACED plain pcluster: the first
// bs - InterlacedOffset%bs logical bytes sit at the end of the pcluster, the
// rest at its start (kernel z_erofs_transform_plain).
func interlaced(dst, src []byte, o Options) error {
	total := o.Skip + len(dst)
	if o.BlockSize <= 0 || o.BlockSize&(o.BlockSize-1) != 0 {
		return corrupt(Interlaced, "bad block size %d", o.BlockSize)
	}
	if total > len(src) {
		return corrupt(Interlaced, "decoded length %d exceeds pcluster size %d", total, len(src))
	}
	cur := o.BlockSize - o.InterlacedOffset&(o.BlockSize-1)
	if cur > len(src) {
		return corrupt(Interlaced, "pcluster of %d bytes shorter than rotation %d", len(src), cur)
	}
	// Logical byte k is src[len(src)-cur+k] for k < cur, else src[k-cur].
	if o.Skip < cur {
		copy(dst, src[len(src)-cur+o.Skip:len(src)-cur+min(cur, total)])
	}
	if total > cur {
		from := max(o.Skip, cur)
		copy(dst[from-o.Skip:], src[from-cur:total-cur])
	}
	return nil
}
