// Package erofs decodes EROFS images: superblock (all fields, CRC32C, feature
// bits, compression configs), device table, compact and extended inodes, the
// five data layouts, directories, chunk maps, xattrs (inline, shared, long
// prefixes, ishare fingerprints) and the metabox. It owns the on-disk format
// and nothing else (no NBD, no files, no caching).
//
// Like debug/elf it never trusts a length: every read is bounds-checked
// against the size of its source, arithmetic is overflow-checked, loops are
// bounded by the image size, and a violated rule is reported as a
// *FormatError carrying the byte offset and a stable rule string.
// Valid-but-unimplemented features wrap ErrUnsupported.
//
// API:
//
//	type FormatError struct { Off int64; Rule string; Val any; Nid uint64; HasNid, InMetabox bool; Err error }
//	var ErrUnsupported, ErrMissingDevice error
//
//	func ParseSuperblock(b []byte) (*Superblock, error)          // b = image from offset 0 (block 0)
//	func ReadSuperblock(r io.ReaderAt, size int64) (*Superblock, error)
//	func SuperblockChecksum(block0 []byte, blkszbits uint8) uint32 // CRC32C as stored at byte 1028
//	func ChecksumLen(blkszbits uint8) int
//	func DeviceTableOffset(devtSlotOff uint16) int64
//	func (*Superblock) Features() []string; BlockSize() int64; NumDevices() int; ...
//	func (*Superblock) MapUnified(off int64) (dev int, devOff int64) // device_id-0 lookup
//	type DeviceSlot struct { Tag [64]byte; Blocks, UniAddr uint64; BlocksHi, UniAddrHi uint16; Reserved [52]byte }
//	func (DeviceSlot) MarshalBinary() ([]byte, error); (*DeviceSlot) UnmarshalBinary([]byte) error
//	func PutDeviceSlot(buf []byte, d DeviceSlot)
//	func (*DeviceSlot) TagKind() string   // "empty", "uuid", "sha256", "text", "binary"
//	func (*DeviceSlot) TagString() string // "" / the text / "hex:..." for binary tags
//
//	func Open(primary io.ReaderAt, size int64, opts ...Option) (*Image, error)
//	func WithDevices(devs ...Dev) Option // extra devices in slot order
//	func WithFlat() Option               // extra devices live in primary at uniaddr*bs
//	func (*Image) Root() *Inode
//	func (*Image) Inode(nid uint64) (*Inode, error)  // nid bit 63: inode in the metabox
//	func (*Image) ReadDir(dir *Inode) ([]Dirent, error)
//	func (*Image) Lookup(path string) (*Inode, error)
//	func (*Image) Walk(fn WalkFunc) error             // rejects directory cycles / hard-linked dirs
//	func (*Image) List(ListOptions) ([]Entry, error) // manifest of the whole tree (for `ls`, tests)
//	func (*Image) Xattrs(ino *Inode) ([]Xattr, error)
//	func (*Image) Fingerprint(ino *Inode) ([]byte, bool, error)
//	func (*Image) DataRanges(ino *Inode) ([]Range, error)
//	func (*Image) OpenFile(ino *Inode) (*File, error) // *File is an io.ReaderAt
//	func (*Image) Open(nid uint64) (*File, error)
//	func (*Image) ReadAll(ino *Inode, max int64) ([]byte, error)
//	func (*Image) Readlink(ino *Inode) (string, error)
//	func (*Image) ReadPhys(dev int, off int64, p []byte) error
//
// Offsets in FormatErrors are absolute byte offsets in the primary image,
// or in the decoded metabox data when InMetabox is set; for dirent rules
// (Rule starting with "dirent") Off is the logical offset inside the
// directory's data.
//
// Device addressing follows the kernel's erofs_map_dev: device 0 is the
// unified address space (with WithDevices, ranges [uniaddr, uniaddr+blocks)
// of a device with uniaddr != 0 are redirected to it, everything else is the
// primary), device N is extra device N (WithDevices), or the primary at
// uniaddr*blocksize (WithFlat). Without either, reading data on device N
// fails with ErrMissingDevice.
//
// Compressed layouts go through packages erofs/zmap and erofs/decompress.
// The packed and the metabox inode must not themselves use fragments
// (rejected to keep reads from recursing).
package erofs
