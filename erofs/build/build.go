// Package build encodes EROFS images: a superblock with CRC32C, a device
// table, compact and extended inodes, inline xattrs, FLAT_PLAIN
// directories, inline or plain symlinks and copied file data, and
// chunk-based regular files whose 8-byte chunk indexes point at blocks of
// extra devices. It owns the writing side of the on-disk format and nothing
// else: callers (package merge) decide what the tree contains.
//
// The image uses 4 KiB blocks unless Image.BlockBits says otherwise
// (512-byte blocks for indexes over tar layers). The first 4 KiB hold the superblock and the device
// table (which spills into further blocks for more than 23 devices), then
// comes the inode area (meta_blkaddr 0, so nid = byte offset / 32), then
// data blocks: directories, plain symlinks and copied file content.
// Compact inodes are used where every field fits, extended ones otherwise.
// nlink is computed from the tree (2 + subdirectories for directories, the
// number of entries pointing at the inode for everything else).
//
// API:
//
//	type Image struct { Root *Inode; Devices []Device; UUID [16]byte; AlignBlocks uint64 }
//	type Inode struct { Mode, UID, GID, ...; Xattrs; Size, Data, ChunkBits, Chunks; Target; Entries }
//	func Write(w io.WriterAt, img *Image) (*Stats, error)
//	func Mkdev(major, minor uint32) uint32
package build

import (
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

// BlockSize is the default block size of written images (Image.BlockBits 0).
const (
	BlockSize = 4096
	blkBits   = 12
)

// Image is the tree and device table to write.
type Image struct {
	Root    *Inode
	Devices []Device // extra devices, device_id 1..N
	UUID    [16]byte
	// AlignBlocks aligns each device's uniaddr (in blocks, power of two or
	// any positive value; 0 or 1: contiguous after the previous device).
	AlignBlocks uint64
	// BlockBits is log2 of the block size, 9 (512 B, tar indexes) to 12;
	// 0 means 12. Chunk sizes, device blocks and uniaddrs count in it.
	BlockBits uint8
}

// Device is one device-table slot. Its uniaddr is assigned by Write.
type Device struct {
	Tag    string // at most 64 bytes, e.g. a UUID as 32 hex characters
	Blocks uint64 // device size in blocks
}

// Xattr is one extended attribute with its full name ("user.x").
type Xattr struct {
	Name  string
	Value []byte
}

// Chunk is one chunk of a chunk-based regular file.
type Chunk struct {
	Hole   bool   // reads as zeros
	Device uint16 // 1..N: Block is on extra device N; 0: Data is copied into the image
	Block  uint64 // first block on Device
	Data   []byte // Device 0: the chunk's bytes (at most the chunk's length)
}

// Entry is a directory entry. "." and ".." are added by Write.
type Entry struct {
	Name  string
	Inode *Inode
}

// Inode is one file, directory, symlink or special file. Several entries
// may point at the same non-directory Inode (hard links).
type Inode struct {
	Mode      uint32 // S_IFMT type bits and permission bits
	UID, GID  uint32
	Mtime     int64
	MtimeNsec uint32
	Rdev      uint32 // character and block devices: new_encode_dev form (Mkdev)
	Xattrs    []Xattr

	// Regular files: Size bytes, either copied from Data, or described by
	// Chunks (ceil(Size / chunk size) of them, chunk size block size <<
	// ChunkBits). Neither: Size must be 0.
	Size      int64
	Data      io.ReaderAt
	ChunkBits uint8
	Chunks    []Chunk

	// Symlinks.
	Target string

	// Directories.
	Entries []Entry
}

// Mkdev returns the new_encode_dev form of a device number.
func Mkdev(major, minor uint32) uint32 {
	return minor&0xff | major<<8 | (minor&^0xff)<<12
}

// Stats describes a written image.
type Stats struct {
	Inodes      int
	Blocks      uint64 // total blocks of the image (the file is Blocks*BlockSize bytes)
	BlockSize   int64  // bytes per block
	MetaBlocks  uint64 // superblock, device table and inodes
	DataBlocks  uint64 // directories, plain symlinks, copied data
	CopiedBytes int64  // regular-file bytes copied into the image
	ChunkFiles  int    // chunk-based regular files
	Slots       []erofs.DeviceSlot
	RootNid     uint64
}

// Error is an invalid input tree.
type Error struct {
	Path string
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("erofs build: %s: %s", e.Path, e.Msg) }

func typeOf(mode uint32) uint32 { return mode & erofs.S_IFMT }

// shortPrefixes in the order names are matched (longest first).
var shortPrefixes = []struct {
	p     string
	idx   uint8
	exact bool
}{
	{"system.posix_acl_default", 3, true},
	{"system.posix_acl_access", 2, true},
	{"security.", 6, false},
	{"trusted.", 4, false},
	{"user.", 1, false},
}

// encodeXattrs returns the ibody (header + inline entries) for xs, or nil.
func encodeXattrs(xs []Xattr) ([]byte, error) {
	if len(xs) == 0 {
		return nil, nil
	}
	b := make([]byte, 12)
	seen := map[string]bool{}
	for _, x := range xs {
		if seen[x.Name] {
			return nil, fmt.Errorf("xattr %q twice", x.Name)
		}
		seen[x.Name] = true
		var idx uint8
		var suffix string
		for _, p := range shortPrefixes {
			if p.exact && x.Name == p.p || !p.exact && strings.HasPrefix(x.Name, p.p) {
				idx, suffix = p.idx, x.Name[len(p.p):]
				break
			}
		}
		if idx == 0 {
			return nil, fmt.Errorf("xattr %q: no EROFS name prefix for it", x.Name)
		}
		if len(suffix) > 255 {
			return nil, fmt.Errorf("xattr %q: name longer than 255 bytes after its prefix", x.Name)
		}
		if len(x.Value) > math.MaxUint16 {
			return nil, fmt.Errorf("xattr %q: value of %d bytes", x.Name, len(x.Value))
		}
		e := make([]byte, (4+len(suffix)+len(x.Value)+3)&^3)
		e[0], e[1] = uint8(len(suffix)), idx
		le.PutUint16(e[2:], uint16(len(x.Value)))
		copy(e[4:], suffix)
		copy(e[4+len(suffix):], x.Value)
		b = append(b, e...)
	}
	if (len(b)-12)/4+1 > math.MaxUint16 {
		return nil, fmt.Errorf("xattrs take %d bytes, more than an inode can hold", len(b))
	}
	return b, nil
}
