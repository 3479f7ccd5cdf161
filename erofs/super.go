package erofs

import (
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf8"
)

// On-disk constants.
const (
	SuperblockOffset = 1024       // absolute byte offset of the superblock
	SuperMagic       = 0xE0F5E1E2 // EROFS_SUPER_MAGIC_V1
	SuperblockSize   = 128        // base superblock size (sb_extslots = 0)
	DeviceSlotSize   = 128
	NidMetaboxBit    = uint64(1) << 63
	nullAddr32       = 0xFFFFFFFF
	addrMask48       = 1<<48 - 1

	MinBlkSzBits = 9
	MaxBlkSzBits = 16
)

// Compat feature bits.
const (
	CompatSbChksum         = 0x01
	CompatMtime            = 0x02
	CompatXattrFilter      = 0x04
	CompatSharedEaInMetabx = 0x08
	CompatPlainXattrPfx    = 0x10
	CompatIshareXattrs     = 0x20
)

// Incompat feature bits.
const (
	IncompatZeroPadding  = 0x001
	IncompatComprCfgs    = 0x002 // == BIG_PCLUSTER
	IncompatChunkedFile  = 0x004
	IncompatDeviceTable  = 0x008 // == COMPR_HEAD2
	IncompatZTailpacking = 0x010
	IncompatFragments    = 0x020 // == DEDUPE
	IncompatXattrPrefix  = 0x040
	Incompat48Bit        = 0x080
	IncompatMetabox      = 0x100
	IncompatAll          = 0x1FF
)

var compatNames = []string{"sb_csum", "mtime", "xattr_filter", "shared_ea_in_metabox", "plain_xattr_pfx", "ishare_xattrs"}
var incompatNames = []string{"0padding", "big_pcluster", "chunked_file", "device_table", "ztailpacking", "fragments", "xattr_prefixes", "48bit", "metabox"}

// ComprCfg is one compression configuration record (COMPR_CFGS).
type ComprCfg struct {
	Alg  int    // 0 LZ4, 1 LZMA, 2 DEFLATE, 3 ZSTD
	Off  int64  // absolute offset of the le16 length
	Data []byte // payload
}

// Superblock is the decoded EROFS superblock. Raw fields keep their on-disk
// values; derived fields (RootNid, Blocks, BlockSize, Devices) are computed
// as the kernel does.
type Superblock struct {
	Magic           uint32
	Checksum        uint32
	FeatureCompat   uint32
	BlkSzBits       uint8
	ExtSlots        uint8
	RootNid2b       uint16 // union with BlocksHi
	Inos            uint64
	Epoch           uint64
	FixedNsec       uint32
	BlocksLo        uint32
	MetaBlkAddr     uint32
	XattrBlkAddr    uint32
	UUID            [16]byte
	VolumeName      [16]byte
	FeatureIncompat uint32
	ComprAlgs       uint16 // available_compr_algs or lz4_max_distance
	ExtraDevices    uint16
	DevtSlotOff     uint16
	DirBlkBits      uint8
	XattrPrefixCnt  uint8
	XattrPrefixOff  uint32 // xattr_prefix_start (in 4-byte units)
	PackedNid       uint64
	XattrFilterRes  uint8
	IshareXattrPfx  uint8
	Reserved        [2]byte
	BuildTime       uint32
	RootNid8b       uint64
	Reserved2       uint64
	MetaboxNid      uint64 // only when ExtSlots >= 1
	Reserved3       uint64

	// Derived.
	RootNid    uint64
	Blocks     uint64 // primary device blocks (48-bit aware)
	SbSize     int    // 128 + 16*ExtSlots
	ComprCfgs  []ComprCfg
	Devices    []DeviceSlot // slot i is device_id i+1
	DeviceMask uint16
}

// BlockSize returns 1 << BlkSzBits.
func (sb *Superblock) BlockSize() int64 { return 1 << sb.BlkSzBits }

// HasCompat / HasIncompat test feature bits.
func (sb *Superblock) HasCompat(bit uint32) bool   { return sb.FeatureCompat&bit != 0 }
func (sb *Superblock) HasIncompat(bit uint32) bool { return sb.FeatureIncompat&bit != 0 }

// NumDevices returns the number of extra devices in effect (0 without DEVICE_TABLE).
func (sb *Superblock) NumDevices() int {
	if !sb.HasIncompat(IncompatDeviceTable) {
		return 0
	}
	return int(sb.ExtraDevices)
}

// Features returns the names of all set feature bits, compat first, then
// incompat; unknown bits are rendered as "compat_0x..." / "incompat_0x...".
func (sb *Superblock) Features() []string {
	var out []string
	add := func(v uint32, names []string, pfx string) {
		for i := 0; i < 32; i++ {
			if v&(1<<i) == 0 {
				continue
			}
			if i < len(names) {
				out = append(out, names[i])
			} else {
				out = append(out, pfx+"_"+hex32(uint32(1)<<i))
			}
		}
	}
	add(sb.FeatureCompat, compatNames, "compat")
	add(sb.FeatureIncompat, incompatNames, "incompat")
	return out
}

// VolumeNameString returns the volume name up to the first NUL.
func (sb *Superblock) VolumeNameString() string {
	n := 0
	for n < len(sb.VolumeName) && sb.VolumeName[n] != 0 {
		n++
	}
	return string(sb.VolumeName[:n])
}

// ChecksumLen returns the number of bytes from offset 1024 covered by the
// superblock CRC for the given blkszbits.
func ChecksumLen(blkszbits uint8) int {
	bs := 1 << blkszbits
	if bs > SuperblockOffset {
		return bs - SuperblockOffset
	}
	return bs
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// SuperblockChecksum computes the superblock CRC32C over image bytes
// [1024, 1024+ChecksumLen) with the checksum field treated as zero. block0
// holds the image from offset 0 and must be at least 1024+ChecksumLen long;
// otherwise 0 is returned.
func SuperblockChecksum(block0 []byte, blkszbits uint8) uint32 {
	l := ChecksumLen(blkszbits)
	if len(block0) < SuperblockOffset+l || blkszbits > 30 {
		return 0
	}
	// Raw CRC32C (init ~0, no final inversion): ^crc32.Checksum.
	c := crc32.Update(0, castagnoli, block0[SuperblockOffset:SuperblockOffset+4])
	c = crc32.Update(c, castagnoli, []byte{0, 0, 0, 0})
	c = crc32.Update(c, castagnoli, block0[SuperblockOffset+8:SuperblockOffset+l])
	return ^c
}

// DeviceTableOffset returns the absolute byte offset of device slot 0.
func (sb *Superblock) DeviceTableOffset() int64 { return DeviceTableOffset(sb.DevtSlotOff) }

// DeviceTableOffset returns the absolute byte offset of the device table for
// a devt_slotoff value.
func DeviceTableOffset(devtSlotOff uint16) int64 { return int64(devtSlotOff) * DeviceSlotSize }

// ParseSuperblock decodes and checks the superblock. b holds the image from
// offset 0: at least 1024+128 bytes, and at least 1024+ChecksumLen bytes
// when the checksum feature is set. The device table is decoded too when it
// lies inside b (otherwise a FormatError "device table beyond buffer").
func ParseSuperblock(b []byte) (*Superblock, error) {
	sb, err := parseSuperblockBase(b)
	if err != nil {
		return nil, err
	}
	if n := sb.NumDevices(); n > 0 {
		off := sb.DeviceTableOffset()
		end := off + int64(n)*DeviceSlotSize
		if end > int64(len(b)) {
			return nil, ferr(off, "device table beyond buffer", end)
		}
		if err := sb.decodeDevices(b[off:end]); err != nil {
			return nil, err
		}
	}
	return sb, nil
}

// ReadSuperblock reads and decodes the superblock and device table from the
// primary device r of the given size.
func ReadSuperblock(r io.ReaderAt, size int64) (*Superblock, error) {
	if size < SuperblockOffset+SuperblockSize {
		return nil, ferr(0, "image too small for superblock", size)
	}
	n := min(size, int64(SuperblockOffset+(1<<MaxBlkSzBits)))
	b := make([]byte, n)
	if _, err := r.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, &FormatError{Off: 0, Rule: "read superblock", Err: err}
	}
	sb, err := parseSuperblockBase(b)
	if err != nil {
		return nil, err
	}
	if nd := sb.NumDevices(); nd > 0 {
		off := sb.DeviceTableOffset()
		end := off + int64(nd)*DeviceSlotSize
		if end > size {
			return nil, ferr(off, "device table beyond end of image", end)
		}
		tb := make([]byte, end-off)
		if _, err := r.ReadAt(tb, off); err != nil && err != io.EOF {
			return nil, &FormatError{Off: off, Rule: "read device table", Err: err}
		}
		if err := sb.decodeDevices(tb); err != nil {
			return nil, err
		}
	}
	return sb, nil
}

func parseSuperblockBase(b []byte) (*Superblock, error) {
	const o = SuperblockOffset
	if len(b) < o+SuperblockSize {
		return nil, ferr(0, "image too small for superblock", len(b))
	}
	le := binary.LittleEndian
	s := b[o:]
	sb := &Superblock{
		Magic:           le.Uint32(s[0:]),
		Checksum:        le.Uint32(s[4:]),
		FeatureCompat:   le.Uint32(s[8:]),
		BlkSzBits:       s[12],
		ExtSlots:        s[13],
		RootNid2b:       le.Uint16(s[14:]),
		Inos:            le.Uint64(s[16:]),
		Epoch:           le.Uint64(s[24:]),
		FixedNsec:       le.Uint32(s[32:]),
		BlocksLo:        le.Uint32(s[36:]),
		MetaBlkAddr:     le.Uint32(s[40:]),
		XattrBlkAddr:    le.Uint32(s[44:]),
		FeatureIncompat: le.Uint32(s[0x50:]),
		ComprAlgs:       le.Uint16(s[0x54:]),
		ExtraDevices:    le.Uint16(s[0x56:]),
		DevtSlotOff:     le.Uint16(s[0x58:]),
		DirBlkBits:      s[0x5A],
		XattrPrefixCnt:  s[0x5B],
		XattrPrefixOff:  le.Uint32(s[0x5C:]),
		PackedNid:       le.Uint64(s[0x60:]),
		XattrFilterRes:  s[0x68],
		IshareXattrPfx:  s[0x69],
		BuildTime:       le.Uint32(s[0x6C:]),
		RootNid8b:       le.Uint64(s[0x70:]),
		Reserved2:       le.Uint64(s[0x78:]),
	}
	copy(sb.UUID[:], s[0x30:])
	copy(sb.VolumeName[:], s[0x40:])
	copy(sb.Reserved[:], s[0x6A:])
	if sb.Magic != SuperMagic {
		return nil, ferr(o, "bad superblock magic", hex32(sb.Magic))
	}
	if sb.BlkSzBits < MinBlkSzBits || sb.BlkSzBits > MaxBlkSzBits {
		return nil, ferr(o+0x0C, "blkszbits out of range", sb.BlkSzBits)
	}
	sb.SbSize = SuperblockSize + 16*int(sb.ExtSlots)
	l := ChecksumLen(sb.BlkSzBits)
	if sb.SbSize > l {
		return nil, ferr(o+0x0D, "superblock extslots exceed checksummed area", sb.ExtSlots)
	}
	if sb.HasCompat(CompatSbChksum) {
		if len(b) < o+l {
			return nil, ferr(o+4, "image too small for superblock checksum", len(b))
		}
		if c := SuperblockChecksum(b, sb.BlkSzBits); c != sb.Checksum {
			return nil, ferr(o+4, "superblock checksum mismatch", hex32(sb.Checksum)+" != computed "+hex32(c))
		}
	}
	if len(b) < o+sb.SbSize {
		return nil, ferr(o, "image too small for superblock", len(b))
	}
	if sb.ExtSlots >= 1 {
		sb.MetaboxNid = le.Uint64(s[0x80:])
		sb.Reserved3 = le.Uint64(s[0x88:])
	}
	if u := sb.FeatureIncompat &^ IncompatAll; u != 0 {
		return nil, ferr(o+0x50, "unknown incompat feature bits", hex32(u))
	}
	if sb.DirBlkBits != 0 {
		return nil, ferr(o+0x5A, "dirblkbits must be 0", sb.DirBlkBits)
	}
	sb.RootNid = uint64(sb.RootNid2b)
	sb.Blocks = uint64(sb.BlocksLo)
	if sb.HasIncompat(Incompat48Bit) && sb.RootNid8b != 0 {
		sb.RootNid = sb.RootNid8b
		sb.Blocks |= uint64(sb.RootNid2b) << 32
	}
	if sb.RootNid&NidMetaboxBit != 0 && !sb.HasIncompat(IncompatMetabox) {
		return nil, ferr(o+0x70, "root nid has metabox bit without METABOX", sb.RootNid)
	}
	if sb.HasIncompat(IncompatMetabox) {
		if sb.ExtSlots < 1 {
			return nil, ferr(o+0x0D, "METABOX needs sb_extslots >= 1", sb.ExtSlots)
		}
		if sb.MetaboxNid&NidMetaboxBit != 0 {
			return nil, ferr(o+0x80, "metabox nid has metabox bit", sb.MetaboxNid)
		}
	}
	if sb.HasIncompat(IncompatFragments) && sb.PackedNid&NidMetaboxBit != 0 && !sb.HasIncompat(IncompatMetabox) {
		return nil, ferr(o+0x60, "packed nid has metabox bit without METABOX", sb.PackedNid)
	}
	if sb.XattrPrefixCnt > 128 {
		return nil, ferr(o+0x5B, "xattr_prefix_count above 128", sb.XattrPrefixCnt)
	}
	if sb.HasCompat(CompatIshareXattrs) && sb.IshareXattrPfx >= sb.XattrPrefixCnt {
		return nil, ferr(o+0x69, "ishare xattr prefix id beyond prefix count", sb.IshareXattrPfx)
	}
	if sb.HasIncompat(IncompatComprCfgs) {
		if u := sb.ComprAlgs &^ 0xF; u != 0 {
			return nil, unsup(o+0x54, "unknown compression algorithms", hex32(uint32(u)))
		}
		pos := int64(o + sb.SbSize)
		for alg := 0; alg < 4; alg++ {
			if sb.ComprAlgs&(1<<alg) == 0 {
				continue
			}
			pos = (pos + 3) &^ 3
			if pos+2 > int64(len(b)) {
				return nil, ferr(pos, "compression config beyond buffer", alg)
			}
			n := int64(le.Uint16(b[pos:]))
			if n == 0 {
				n = 65536
			}
			if pos+2+n > int64(len(b)) {
				return nil, ferr(pos, "compression config beyond buffer", n)
			}
			sb.ComprCfgs = append(sb.ComprCfgs, ComprCfg{Alg: alg, Off: pos, Data: append([]byte(nil), b[pos+2:pos+2+n]...)})
			pos += 2 + n
		}
	}
	if sb.NumDevices() > 0 {
		off := sb.DeviceTableOffset()
		if off < int64(o+sb.SbSize) {
			return nil, ferr(o+0x58, "device table overlaps superblock", sb.DevtSlotOff)
		}
		n := uint32(sb.ExtraDevices) + 1
		m := uint32(1)
		for m < n {
			m <<= 1
		}
		sb.DeviceMask = uint16(m - 1)
	}
	return sb, nil
}

func hex32(v uint32) string {
	const digits = "0123456789abcdef"
	var b [10]byte
	b[0], b[1] = '0', 'x'
	for i := 0; i < 8; i++ {
		b[9-i] = digits[v>>(4*i)&0xF]
	}
	return string(b[:])
}

func (sb *Superblock) decodeDevices(tb []byte) error {
	is48 := sb.HasIncompat(Incompat48Bit)
	for i := 0; i+DeviceSlotSize <= len(tb); i += DeviceSlotSize {
		var d DeviceSlot
		if err := d.UnmarshalBinary(tb[i : i+DeviceSlotSize]); err != nil {
			return err
		}
		if !is48 {
			d.Blocks &= 0xFFFFFFFF
			d.UniAddr &= 0xFFFFFFFF
		}
		sb.Devices = append(sb.Devices, d)
	}
	return nil
}

// DeviceSlot is one 128-byte device table entry.
type DeviceSlot struct {
	Tag       [64]byte
	Blocks    uint64 // blocks_lo | blocks_hi<<32 (hi only honoured with 48BIT)
	UniAddr   uint64 // uniaddr_lo | uniaddr_hi<<32 (hi only honoured with 48BIT)
	BlocksHi  uint16 // raw on-disk hi fields (for validation)
	UniAddrHi uint16
	Reserved  [52]byte
}

// UnmarshalBinary decodes a 128-byte slot (hi fields included unconditionally).
func (d *DeviceSlot) UnmarshalBinary(b []byte) error {
	if len(b) < DeviceSlotSize {
		return ferr(0, "short device slot", len(b))
	}
	le := binary.LittleEndian
	copy(d.Tag[:], b[:64])
	d.BlocksHi = le.Uint16(b[0x48:])
	d.UniAddrHi = le.Uint16(b[0x4A:])
	d.Blocks = uint64(le.Uint32(b[0x40:])) | uint64(d.BlocksHi)<<32
	d.UniAddr = uint64(le.Uint32(b[0x44:])) | uint64(d.UniAddrHi)<<32
	copy(d.Reserved[:], b[0x4C:])
	return nil
}

// MarshalBinary encodes the slot; the hi fields are bits 32..47 of Blocks
// and UniAddr.
func (d DeviceSlot) MarshalBinary() ([]byte, error) {
	b := make([]byte, DeviceSlotSize)
	PutDeviceSlot(b, d)
	return b, nil
}

// PutDeviceSlot encodes slot into buf[0:128].
func PutDeviceSlot(buf []byte, d DeviceSlot) {
	le := binary.LittleEndian
	_ = buf[DeviceSlotSize-1]
	copy(buf[:64], d.Tag[:])
	le.PutUint32(buf[0x40:], uint32(d.Blocks))
	le.PutUint32(buf[0x44:], uint32(d.UniAddr))
	le.PutUint16(buf[0x48:], uint16(d.Blocks>>32))
	le.PutUint16(buf[0x4A:], uint16(d.UniAddr>>32))
	copy(buf[0x4C:], d.Reserved[:])
}

// Tag kinds returned by TagKind.
const (
	TagEmpty  = "empty"
	TagUUID   = "uuid"   // 32 lowercase/uppercase hex characters
	TagSHA256 = "sha256" // 64 hex characters
	TagText   = "text"
	TagBinary = "binary"
)

func (d *DeviceSlot) tagBytes() []byte {
	n := 0
	for n < len(d.Tag) && d.Tag[n] != 0 {
		n++
	}
	return d.Tag[:n]
}

// TagKind classifies the tag: empty, uuid, sha256, text or binary.
func (d *DeviceSlot) TagKind() string {
	t := d.tagBytes()
	if len(t) == 0 {
		return TagEmpty
	}
	if isHex(t) && len(t) == 32 {
		return TagUUID
	}
	if isHex(t) && len(t) == 64 {
		return TagSHA256
	}
	for _, c := range t {
		if c < 0x20 || c > 0x7e {
			return TagBinary
		}
	}
	if !utf8.Valid(t) {
		return TagBinary
	}
	return TagText
}

// TagString renders the tag: "" when empty, the text (up to the first NUL)
// for uuid/sha256/text tags and "hex:<hex of all 64 bytes>" for binary tags.
func (d *DeviceSlot) TagString() string {
	if d.TagKind() == TagBinary {
		return "hex:" + hex.EncodeToString(d.Tag[:])
	}
	return strings.Clone(string(d.tagBytes()))
}

func isHex(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// MapUnified maps a byte offset of the unified address space (device_id 0)
// to a device as the kernel does in multi-device mode: the first extra
// device with uniaddr != 0 whose [uniaddr, uniaddr+blocks) block range
// contains off, else the primary (dev 0, devOff = off).
func (sb *Superblock) MapUnified(off int64) (dev int, devOff int64) {
	bs := sb.BlockSize()
	for i, d := range sb.Devices {
		if d.UniAddr == 0 || d.UniAddr >= 1<<48 || d.Blocks >= 1<<48 {
			continue
		}
		lo, ok1 := mulOK(int64(d.UniAddr), bs)
		hi, ok2 := mulOK(int64(d.UniAddr+d.Blocks), bs)
		if ok1 && ok2 && off >= lo && off < hi {
			return i + 1, off - lo
		}
	}
	return 0, off
}
