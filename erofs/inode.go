package erofs

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"math"
)

// Layout is an inode data layout (i_format bits 1..3).
type Layout uint8

const (
	LayoutFlatPlain         Layout = 0
	LayoutCompressedFull    Layout = 1
	LayoutFlatInline        Layout = 2
	LayoutCompressedCompact Layout = 3
	LayoutChunkBased        Layout = 4
)

func (l Layout) String() string {
	switch l {
	case LayoutFlatPlain:
		return "flat_plain"
	case LayoutCompressedFull:
		return "compressed_full"
	case LayoutFlatInline:
		return "flat_inline"
	case LayoutCompressedCompact:
		return "compressed_compact"
	case LayoutChunkBased:
		return "chunk_based"
	}
	return fmt.Sprintf("layout(%d)", uint8(l))
}

// Compressed reports whether l is a compressed layout.
func (l Layout) Compressed() bool { return l == LayoutCompressedFull || l == LayoutCompressedCompact }

// Mode type bits (S_IFMT).
const (
	S_IFMT   = 0o170000
	S_IFSOCK = 0o140000
	S_IFLNK  = 0o120000
	S_IFREG  = 0o100000
	S_IFBLK  = 0o060000
	S_IFDIR  = 0o040000
	S_IFCHR  = 0o020000
	S_IFIFO  = 0o010000
)

// Chunk format bits.
const (
	ChunkFormatBlkBits = 0x1F
	ChunkFormatIndexes = 0x20
	ChunkFormat48Bit   = 0x40
	ChunkFormatAll     = 0x7F
)

// Inode is a decoded on-disk inode.
type Inode struct {
	Nid       uint64
	Off       int64 // iloc: byte offset in the primary image, or in the metabox data (InMetabox)
	InMetabox bool
	Extended  bool
	Format    uint16 // raw i_format
	Layout    Layout
	Mode      uint32 // i_mode (type and permission bits)
	Nb        uint16 // raw i_nb
	Size      int64
	Nlink     uint32
	UID, GID  uint32
	Mtime     int64
	MtimeNsec uint32
	Ino       uint32
	RawU      uint32 // raw i_u

	Rdev             uint32 // CHR/BLK: new_encode_dev value
	StartBlk         uint64 // flat layouts
	NullAddr         bool   // flat layouts: start block is EROFS_NULL_ADDR
	CompressedBlocks uint64 // compressed layouts
	ChunkFormat      uint16 // chunk-based layout
	ChunkBits        uint   // chunk-based: log2 chunk size in bytes

	ISize      int    // 32 or 64
	XattrCount uint16 // raw i_xattr_icount
	XattrSize  int    // ibody xattr size (0 or 12+4*(count-1))
	DataOff    int64  // Off + ISize + XattrSize: start of layout payload
	DotOmitted bool   // directories: no "." entry
	Nlink1     bool   // compact non-directories: NLINK_1 bit
}

func (ino *Inode) IsDir() bool     { return ino.Mode&S_IFMT == S_IFDIR }
func (ino *Inode) IsReg() bool     { return ino.Mode&S_IFMT == S_IFREG }
func (ino *Inode) IsSymlink() bool { return ino.Mode&S_IFMT == S_IFLNK }

// Major and Minor decode Rdev (new_encode_dev form).
func (ino *Inode) Major() uint32 { return (ino.Rdev & 0xFFF00) >> 8 }
func (ino *Inode) Minor() uint32 { return ino.Rdev&0xFF | (ino.Rdev>>12)&0xFFF00 }

// FileMode converts Mode to an io/fs FileMode.
func (ino *Inode) FileMode() fs.FileMode {
	m := fs.FileMode(ino.Mode & 0o777)
	switch ino.Mode & S_IFMT {
	case S_IFDIR:
		m |= fs.ModeDir
	case S_IFLNK:
		m |= fs.ModeSymlink
	case S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case S_IFBLK:
		m |= fs.ModeDevice
	case S_IFIFO:
		m |= fs.ModeNamedPipe
	case S_IFSOCK:
		m |= fs.ModeSocket
	}
	if ino.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if ino.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if ino.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// DirentType returns the dirent file_type (FtReg, FtDir, ...) for an i_mode.
func DirentType(mode uint32) uint8 {
	switch mode & S_IFMT {
	case S_IFREG:
		return FtReg
	case S_IFDIR:
		return FtDir
	case S_IFCHR:
		return FtChr
	case S_IFBLK:
		return FtBlk
	case S_IFIFO:
		return FtFifo
	case S_IFSOCK:
		return FtSock
	case S_IFLNK:
		return FtSymlink
	}
	return FtUnknown
}

// TypeName returns file, dir, symlink, char, block, fifo or socket.
func (ino *Inode) TypeName() string {
	switch ino.Mode & S_IFMT {
	case S_IFREG:
		return "file"
	case S_IFDIR:
		return "dir"
	case S_IFLNK:
		return "symlink"
	case S_IFCHR:
		return "char"
	case S_IFBLK:
		return "block"
	case S_IFIFO:
		return "fifo"
	case S_IFSOCK:
		return "socket"
	}
	return "unknown"
}

// Inode decodes the inode nid (bit 63 set: inode inside the metabox).
func (img *Image) Inode(nid uint64) (*Inode, error) {
	ino, err := img.inode(nid)
	if err != nil {
		return nil, withNid(err, nid)
	}
	return ino, nil
}

func (img *Image) inode(nid uint64) (*Inode, error) {
	src, err := img.metaSource(nid)
	if err != nil {
		return nil, err
	}
	n := nid &^ NidMetaboxBit
	var base int64
	if !src.metabox {
		base = int64(img.SB.MetaBlkAddr) << img.bits // < 2^48, no overflow
	}
	if n > uint64(math.MaxInt64-base)/32 {
		return nil, ferr(base, "nid overflows inode address", nid)
	}
	off := base + int64(n)*32
	b, err := src.read(off, 32, "inode")
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	ino := &Inode{Nid: nid, Off: off, InMetabox: src.metabox}
	ino.Format = le.Uint16(b[0:])
	if ino.Format&^0x1F != 0 {
		return nil, unsup(off, "inode i_format reserved bits set", fmt.Sprintf("%#x", ino.Format))
	}
	ino.Layout = Layout(ino.Format >> 1 & 7)
	if ino.Layout > LayoutChunkBased {
		return nil, unsup(off, "inode data layout reserved", uint8(ino.Layout))
	}
	ino.Extended = ino.Format&1 != 0
	ino.XattrCount = le.Uint16(b[2:])
	ino.Mode = uint32(le.Uint16(b[4:]))
	ino.Nb = le.Uint16(b[6:])
	addrMask := uint64(math.MaxUint32)
	var hi uint64
	if ino.Extended {
		b, err = src.read(off, 64, "extended inode")
		if err != nil {
			return nil, err
		}
		ino.ISize = 64
		sz := le.Uint64(b[8:])
		if int64(sz) < 0 {
			return nil, ferr(off+8, "inode negative i_size", int64(sz))
		}
		ino.Size = int64(sz)
		ino.RawU = le.Uint32(b[0x10:])
		ino.Ino = le.Uint32(b[0x14:])
		ino.UID = le.Uint32(b[0x18:])
		ino.GID = le.Uint32(b[0x1C:])
		ino.Mtime = int64(le.Uint64(b[0x20:]))
		ino.MtimeNsec = le.Uint32(b[0x28:])
		ino.Nlink = le.Uint32(b[0x2C:])
		hi = uint64(ino.Nb)
		addrMask = addrMask48
	} else {
		ino.ISize = 32
		ino.Size = int64(le.Uint32(b[8:]))
		ino.Mtime = int64(img.SB.Epoch) + int64(le.Uint32(b[0x0C:]))
		ino.MtimeNsec = img.SB.FixedNsec
		ino.RawU = le.Uint32(b[0x10:])
		ino.Ino = le.Uint32(b[0x14:])
		ino.UID = uint32(le.Uint16(b[0x18:]))
		ino.GID = uint32(le.Uint16(b[0x1A:]))
		ino.Nlink = uint32(ino.Nb)
		if ino.Format&0x10 != 0 && ino.Mode&S_IFMT != S_IFDIR {
			ino.Nlink1 = true
			ino.Nlink = 1
			hi = uint64(ino.Nb)
			addrMask = addrMask48
		}
	}
	if ino.Format&0x10 != 0 && ino.Mode&S_IFMT == S_IFDIR {
		ino.DotOmitted = true
	}
	switch ino.Mode & S_IFMT {
	case S_IFREG, S_IFDIR, S_IFLNK:
	case S_IFCHR, S_IFBLK:
		ino.Rdev = ino.RawU
	case S_IFIFO, S_IFSOCK:
	default:
		return nil, ferr(off+4, "inode bad file type in i_mode", fmt.Sprintf("%o", ino.Mode))
	}
	if ino.XattrCount == 1 {
		return nil, unsup(off+2, "inode xattr icount 1", 1)
	}
	if ino.XattrCount > 0 {
		ino.XattrSize = 12 + 4*(int(ino.XattrCount)-1)
	}
	ino.DataOff = off + int64(ino.ISize) + int64(ino.XattrSize)
	isData := ino.Mode&S_IFMT == S_IFREG || ino.Mode&S_IFMT == S_IFDIR || ino.Mode&S_IFMT == S_IFLNK
	if !isData {
		// Special files carry no data; the kernel ignores the layout.
		return ino, nil
	}
	switch ino.Layout {
	case LayoutFlatPlain, LayoutFlatInline:
		ino.StartBlk = (uint64(ino.RawU) | hi<<32) & addrMask
		ino.NullAddr = ino.StartBlk == addrMask || (hi == 0 && ino.RawU == nullAddr32)
		if ino.Layout == LayoutFlatInline && ino.Size > 0 {
			tail := ino.Size - (ino.Size-1)/img.bs*img.bs
			if (ino.DataOff&(img.bs-1))+tail > img.bs {
				return nil, ferr(ino.DataOff, "inline data crosses block boundary", tail)
			}
		}
	case LayoutCompressedFull, LayoutCompressedCompact:
		ino.CompressedBlocks = uint64(ino.RawU) | hi<<32
	case LayoutChunkBased:
		ino.ChunkFormat = uint16(ino.RawU)
		if ino.ChunkFormat&^ChunkFormatAll != 0 {
			return nil, unsup(off+0x10, "chunk format reserved bits set", ino.ChunkFormat)
		}
		ino.ChunkBits = uint(img.bits) + uint(ino.ChunkFormat&ChunkFormatBlkBits)
	}
	return ino, nil
}
