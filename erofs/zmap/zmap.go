// Package zmap decodes the block map of a compressed EROFS inode (datalayout
// 1 = COMPRESSED_FULL, 3 = COMPRESSED_COMPACT) into extents, applying the
// Linux kernel's sanity checks (fs/erofs/zmap.c, erofs-utils lib/zmap.c).
//
// It does not import package erofs: the caller passes plain values.
//
// API (stable; changes are noted here):
//
//	type Params struct {
//	    Meta      io.ReaderAt // where the inode's metadata lives (primary image, or decoded metabox)
//	    MetaSize  int64       // bytes readable from Meta; index reads past it are errors
//	    HeaderOff int64       // byte offset in Meta of the 8-byte map header = round_up(inode end incl. xattrs, 8)
//	    Compact   bool        // datalayout 3 (COMPRESSED_COMPACT); false: 1 (COMPRESSED_FULL)
//	    Size      int64       // i_size
//	    BlkSzBits uint8
//	    BigPcluster, ZeroPadding, Ztailpacking, Fragments, Is48Bit bool // superblock features
//	        // (Ztailpacking and Is48Bit are accepted but not needed: the kernel does not
//	        // require the ztailpacking bit, and no index field depends on 48BIT)
//	    Algs      uint16      // available_compr_algs (or 1<<LZ4 without COMPR_CFGS)
//	}
//
//	type Kind uint8
//	const (
//	    Blocks   Kind = iota // raw pcluster: PLen bytes at byte PStart of the unified address space (device_id 0)
//	    Inline               // ztailpacking: raw pcluster: PLen bytes at byte PStart of Meta
//	    Fragment             // uncompressed: LLen bytes at byte PStart of the packed inode's data
//	    Hole                 // unmapped (EXTENTS records with plen 0): reads as zeros
//	)
//
//	type Extent struct {
//	    LStart, LLen int64          // logical range [LStart, LStart+LLen)
//	    Kind         Kind
//	    PStart, PLen int64          // see Kind; PLen is 0 for Hole, LLen for Fragment
//	    Alg          decompress.Alg // Blocks/Inline: LZ4, LZMA, Deflate, Zstd, Shifted or Interlaced
//	    Partial      bool           // PARTIAL_REF: the pcluster decodes to more than LLen bytes
//	    Lcn          int64          // head lcluster number (or record index in EXTENTS mode)
//	}
//	func (e Extent) Compressed() bool // Blocks/Inline with LZ4/LZMA/Deflate/Zstd
//
//	// Map decodes the whole file, extents in logical order, covering [0, Size) exactly.
//	func Map(p Params) ([]Extent, error)
//
//	// Find returns the index of the extent containing logical offset off, or -1.
//	func Find(exts []Extent, off int64) int
//
//	// Decode writes the logical bytes [e.LStart+off, e.LStart+off+len(dst)) of e into dst.
//	// raw is: Blocks/Inline: the PLen raw pcluster bytes; Fragment: the LLen bytes
//	// at PStart of the packed inode; Hole: ignored (nil).
//	func Decode(e Extent, raw, dst []byte, off int64, zeroPadding bool, blkSzBits uint8) error
//
//	// Error reports a violated rule at byte Off of Meta (or -1 if no single
//	// offset applies). Unsupported marks EOPNOTSUPP-class rules; errors.Is(err,
//	// decompress.ErrUnsupported) is then true.
//	type Error struct { Off int64; Rule string; Unsupported bool }
//
// A file reader is then: Map once, binary-search the extent for an offset,
// read raw (device_id 0 unified address for Blocks, Meta for Inline, packed
// inode for Fragment), and call Decode.
//
// Deviations from the kernel, all stricter: extents must tile [0, Size)
// exactly (the kernel re-maps per offset and would read inconsistent indexes
// differently at different offsets); EXTENTS records (16/32 B) must have
// strictly increasing lstart. A PLAIN pcluster without a big-pcluster count is
// one block (erofs-utils 1.9 semantics; equal to one lcluster on every image
// mkfs writes, since lclusterbits == blkszbits).
package zmap

import (
	"fmt"
	"io"
	"sort"

	"github.com/erofs-blockd/erofs-blockd/erofs/decompress"
)

// Params describe one compressed inode.
type Params struct {
	Meta      io.ReaderAt
	MetaSize  int64
	HeaderOff int64
	Compact   bool
	Size      int64
	BlkSzBits uint8

	BigPcluster  bool
	ZeroPadding  bool
	Ztailpacking bool
	Fragments    bool
	Is48Bit      bool

	Algs uint16
}

// Kind says where an extent's bytes live.
type Kind uint8

// Extent kinds.
const (
	Blocks Kind = iota
	Inline
	Fragment
	Hole
)

func (k Kind) String() string {
	switch k {
	case Blocks:
		return "blocks"
	case Inline:
		return "inline"
	case Fragment:
		return "fragment"
	case Hole:
		return "hole"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Extent is one mapped logical range of a compressed file.
type Extent struct {
	LStart, LLen int64
	Kind         Kind
	PStart, PLen int64
	Alg          decompress.Alg
	Partial      bool
	Lcn          int64
}

// Compressed reports whether the extent's bytes need a decompressor.
func (e Extent) Compressed() bool {
	return (e.Kind == Blocks || e.Kind == Inline) && e.Alg < decompress.Shifted
}

// Error is a violated on-disk rule.
type Error struct {
	Off         int64
	Rule        string
	Unsupported bool
}

func (e *Error) Error() string {
	s := "compressed index"
	if e.Off >= 0 {
		s += fmt.Sprintf(" at byte %d", e.Off)
	}
	if e.Unsupported {
		s += ": unsupported"
	}
	return s + ": " + e.Rule
}

// Is makes errors.Is(err, decompress.ErrUnsupported) true for unsupported
// features.
func (e *Error) Is(target error) bool {
	return e.Unsupported && target == decompress.ErrUnsupported
}

func errf(off int64, format string, a ...any) error {
	return &Error{Off: off, Rule: fmt.Sprintf(format, a...)}
}

func unsupf(off int64, format string, a ...any) error {
	return &Error{Off: off, Rule: fmt.Sprintf(format, a...), Unsupported: true}
}

// Find returns the index of the extent of exts (as returned by Map)
// containing logical offset off, or -1.
func Find(exts []Extent, off int64) int {
	i := sort.Search(len(exts), func(i int) bool { return exts[i].LStart+exts[i].LLen > off })
	if i < len(exts) && exts[i].LStart <= off {
		return i
	}
	return -1
}

// Decode writes the logical bytes [e.LStart+off, e.LStart+off+len(dst)) of e
// into dst. See the package comment for raw.
func Decode(e Extent, raw, dst []byte, off int64, zeroPadding bool, blkSzBits uint8) error {
	if off < 0 || int64(len(dst)) > e.LLen || off > e.LLen-int64(len(dst)) {
		return fmt.Errorf("zmap: read [%d,+%d) outside extent of %d bytes", off, len(dst), e.LLen)
	}
	switch e.Kind {
	case Hole:
		clear(dst)
		return nil
	case Fragment:
		if int64(len(raw)) < off+int64(len(dst)) {
			return fmt.Errorf("zmap: fragment of %d bytes, need %d", len(raw), off+int64(len(dst)))
		}
		copy(dst, raw[off:])
		return nil
	case Blocks, Inline:
	default:
		return fmt.Errorf("zmap: unknown extent kind %v", e.Kind)
	}
	if int64(len(raw)) != e.PLen {
		return fmt.Errorf("zmap: raw pcluster of %d bytes, extent says %d", len(raw), e.PLen)
	}
	if e.LLen > decompress.MaxDecodedSize {
		return fmt.Errorf("zmap: extent of %d bytes: %w", e.LLen, decompress.ErrUnsupported)
	}
	bs := 1 << blkSzBits
	o := decompress.Options{
		ZeroPadding:      zeroPadding,
		Partial:          e.Partial || off+int64(len(dst)) < e.LLen,
		Skip:             int(off),
		BlockSize:        bs,
		InterlacedOffset: int(e.LStart & int64(bs-1)),
	}
	if err := decompress.Decompress(e.Alg, dst, raw, o); err != nil {
		return fmt.Errorf("extent [%d,+%d) at %v %d: %w", e.LStart, e.LLen, e.Kind, e.PStart, err)
	}
	return nil
}
