package erofs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// RangeKind says what a Range is.
type RangeKind uint8

const (
	KindFlat     RangeKind = iota // uncompressed blocks (flat layouts)
	KindInline                    // tail stored inline after the inode (metadata source)
	KindChunk                     // one or more chunks of a chunk-based file
	KindHole                      // reads as zeros, no storage
	KindPcluster                  // compressed physical cluster(s)
	KindFragment                  // data inside the packed inode
)

func (k RangeKind) String() string {
	return [...]string{"flat", "inline", "chunk", "hole", "pcluster", "fragment", "?"}[min(int(k), 6)]
}

// Range is a piece of the physical layout of an inode's data.
//
// Logical/Length are in file bytes. For flat and chunk ranges the storage is
// Length rounded up to the block size, starting at byte Phys of Device
// (0 = unified address space / primary, N = extra device N). For inline
// ranges Phys is a byte offset in the primary image, or in the metabox data
// when InMetabox is set. For pclusters, Phys/PhysLen is the compressed byte
// range (device 0); a ztailpacking tail is KindInline with Compressed set
// and PhysLen compressed bytes in the metadata source. For fragments,
// Phys is the offset inside the packed inode's data. Holes have Phys = -1.
type Range struct {
	Logical    int64
	Length     int64
	Device     int
	Phys       int64
	PhysLen    int64
	Kind       RangeKind
	InMetabox  bool
	Alg        int  // pclusters: decompress.Alg value
	Compressed bool // pcluster/inline bytes need the decompressor
}

func (r Range) String() string {
	return fmt.Sprintf("%s[%d+%d dev%d @%#x/%d]", r.Kind, r.Logical, r.Length, r.Device, r.Phys, r.PhysLen)
}

// DataRanges returns the physical layout of ino's data, in logical order,
// with adjacent compatible ranges merged.
//
// Every range stored on a device that can be resolved (the primary, a device
// given with WithDevices, or any device under WithFlat) is checked to lie
// within that device ("data beyond end of device N"); ranges on a missing
// device are returned unchecked.
func (img *Image) DataRanges(ino *Inode) ([]Range, error) {
	rs, err := img.dataRanges(ino)
	if err == nil {
		for _, r := range rs {
			if err = img.checkRange(r); err != nil {
				break
			}
		}
	}
	if err != nil {
		return nil, withNid(err, ino.Nid)
	}
	return rs, nil
}

// checkRange bounds-checks a range's storage.
func (img *Image) checkRange(r Range) error {
	var n int64
	switch r.Kind {
	case KindFlat, KindChunk, KindPcluster:
		n = r.PhysLen
	default:
		return nil // holes; inline and fragments are checked when mapped
	}
	_, base, size, err := img.resolveDev(r.Device, r.Phys)
	if err != nil {
		if errors.Is(err, ErrMissingDevice) {
			return nil
		}
		return err
	}
	pos, ok := addOK(base, r.Phys)
	if !ok || r.Phys < 0 || pos > size || n > size-pos {
		return ferr(r.Phys, fmt.Sprintf("data beyond end of device %d", r.Device), n)
	}
	return nil
}

func (img *Image) dataRanges(ino *Inode) ([]Range, error) {
	if !hasData(ino) || ino.Size == 0 {
		return nil, nil
	}
	if ino.Layout.Compressed() {
		return img.compressedRanges(ino)
	}
	var out []Range
	add := func(r Range) {
		if n := len(out); n > 0 {
			p := &out[n-1]
			if p.Kind == r.Kind && p.Device == r.Device && p.InMetabox == r.InMetabox &&
				p.Logical+p.Length == r.Logical && (r.Kind == KindHole || (r.Kind != KindInline && p.Phys+p.Length == r.Phys)) {
				p.Length += r.Length
				p.PhysLen += r.PhysLen
				return
			}
		}
		out = append(out, r)
	}
	if ino.Layout == LayoutChunkBased {
		if err := img.chunkRanges(ino, add); err != nil {
			return nil, err
		}
		return out, nil
	}
	// Flat layouts.
	for off := int64(0); off < ino.Size; {
		r, err := img.flatMap(ino, off)
		if err != nil {
			return nil, err
		}
		add(r)
		off = r.Logical + r.Length
	}
	return out, nil
}

func hasData(ino *Inode) bool {
	switch ino.Mode & S_IFMT {
	case S_IFREG, S_IFDIR, S_IFLNK:
		return true
	}
	return false
}

// chunkRanges calls fn for every chunk of a chunk-based inode, in order.
func (img *Image) chunkRanges(ino *Inode, fn func(Range)) error {
	t, err := img.chunkTable(ino)
	if err != nil {
		return err
	}
	const batch = 4096
	for i := int64(0); i < t.n; i += batch {
		cnt := min(batch, t.n-i)
		b, err := t.src.read(t.start+i*t.unit, int(cnt*t.unit), "chunk table")
		if err != nil {
			return err
		}
		for j := int64(0); j < cnt; j++ {
			r, err := img.chunkEntry(ino, t, i+j, b[j*t.unit:(j+1)*t.unit])
			if err != nil {
				return err
			}
			fn(r)
		}
	}
	return nil
}

// flatMap maps logical offset off of a flat inode.
func (img *Image) flatMap(ino *Inode, off int64) (Range, error) {
	if ino.Size > math.MaxInt64-img.bs {
		return Range{}, ferr(ino.Off+8, "file size too large", ino.Size)
	}
	nblocks := int64(0)
	if ino.Size > 0 {
		nblocks = (ino.Size-1)>>img.bits + 1
	}
	blockBytes := nblocks << img.bits
	if ino.Layout == LayoutFlatInline {
		blockBytes = (nblocks - 1) << img.bits
	}
	if off >= blockBytes {
		// inline tail
		src, _ := img.metaSource(ino.Nid)
		tail := ino.Size - blockBytes
		if ino.DataOff+tail > src.size {
			return Range{}, ferr(ino.DataOff, "inline data beyond end of "+src.name(), tail)
		}
		return Range{Logical: blockBytes, Length: tail, Phys: ino.DataOff, PhysLen: tail, Kind: KindInline, InMetabox: src.metabox}, nil
	}
	if ino.NullAddr {
		return Range{Logical: 0, Length: min(blockBytes, ino.Size), Phys: -1, Kind: KindHole}, nil
	}
	phys, ok := mulOK(int64(ino.StartBlk), img.bs)
	if !ok {
		return Range{}, ferr(ino.Off+0x10, "start block address overflows", ino.StartBlk)
	}
	length := min(blockBytes, ino.Size)
	if _, ok := addOK(phys, blockBytes); !ok {
		return Range{}, ferr(ino.Off+0x10, "data range overflows", ino.StartBlk)
	}
	return Range{Logical: 0, Length: length, Phys: phys, PhysLen: length, Kind: KindFlat}, nil
}

type chunkTable struct {
	src        *source
	start      int64
	n          int64
	unit       int64
	chunkBytes int64
}

func (img *Image) chunkTable(ino *Inode) (*chunkTable, error) {
	src, _ := img.metaSource(ino.Nid)
	t := &chunkTable{src: src, unit: 4}
	if ino.ChunkFormat&ChunkFormatIndexes != 0 {
		t.unit = 8
	}
	if ino.ChunkBits >= 63 {
		return nil, unsup(ino.Off+0x10, "chunk size too large", ino.ChunkBits)
	}
	t.chunkBytes = int64(1) << ino.ChunkBits
	t.n = (ino.Size-1)>>ino.ChunkBits + 1
	t.start = (ino.DataOff + t.unit - 1) &^ (t.unit - 1)
	if t.n > (src.size-t.start)/t.unit || t.start > src.size {
		return nil, ferr(t.start, "chunk table beyond end of "+src.name(), t.n)
	}
	return t, nil
}

// chunkEntry decodes entry i (raw bytes e).
func (img *Image) chunkEntry(ino *Inode, t *chunkTable, i int64, e []byte) (Range, error) {
	le := binary.LittleEndian
	eoff := t.start + i*t.unit
	logical := i * t.chunkBytes
	length := min(t.chunkBytes, ino.Size-logical)
	var blk uint64
	dev := 0
	if t.unit == 4 {
		lo := le.Uint32(e)
		if lo == nullAddr32 {
			return Range{Logical: logical, Length: length, Phys: -1, Kind: KindHole}, nil
		}
		blk = uint64(lo)
	} else {
		hi := uint64(le.Uint16(e[0:]))
		id := le.Uint16(e[2:])
		lo := uint64(le.Uint32(e[4:]))
		mask := uint64(nullAddr32)
		if ino.ChunkFormat&ChunkFormat48Bit != 0 {
			mask = addrMask48
		}
		blk = (hi<<32 | lo) & mask
		if blk == mask {
			return Range{Logical: logical, Length: length, Phys: -1, Kind: KindHole}, nil
		}
		if id&^img.SB.DeviceMask != 0 {
			return Range{}, &FormatError{Off: eoff + 2, Rule: "chunk index device_id beyond device mask", Val: fmt.Sprintf("%d > mask %d", id, img.SB.DeviceMask), InMetabox: t.src.metabox}
		}
		if int(id) > img.SB.NumDevices() {
			return Range{}, &FormatError{Off: eoff + 2, Rule: "chunk index device_id beyond extra devices", Val: id, InMetabox: t.src.metabox}
		}
		dev = int(id)
	}
	phys, ok := mulOK(int64(blk), img.bs)
	if !ok || blk >= 1<<48 {
		return Range{}, &FormatError{Off: eoff, Rule: "chunk start block address overflows", Val: blk, InMetabox: t.src.metabox}
	}
	return Range{Logical: logical, Length: length, Device: dev, Phys: phys, PhysLen: length, Kind: KindChunk}, nil
}

// mapAt returns the range of an uncompressed inode containing off.
func (img *Image) mapAt(ino *Inode, off int64) (Range, error) {
	if ino.Layout == LayoutChunkBased {
		t, err := img.chunkTable(ino)
		if err != nil {
			return Range{}, err
		}
		i := off >> ino.ChunkBits
		e, err := t.src.read(t.start+i*t.unit, int(t.unit), "chunk table")
		if err != nil {
			return Range{}, err
		}
		return img.chunkEntry(ino, t, i, e)
	}
	return img.flatMap(ino, off)
}

// File reads an inode's content. It implements io.ReaderAt.
type File struct {
	img *Image
	ino *Inode
	z   *zreader // compressed layouts
}

// OpenFile returns a reader for ino's content.
func (img *Image) OpenFile(ino *Inode) (*File, error) {
	if !hasData(ino) {
		return nil, &FormatError{Off: ino.Off, Rule: "inode has no data", Nid: ino.Nid, HasNid: true, Val: ino.TypeName()}
	}
	f := &File{img: img, ino: ino}
	if ino.Layout.Compressed() && ino.Size > 0 {
		z, err := img.newZReader(ino)
		if err != nil {
			return nil, withNid(err, ino.Nid)
		}
		f.z = z
	}
	return f, nil
}

// Open looks up nid and returns a reader for its content.
func (img *Image) Open(nid uint64) (*File, error) {
	ino, err := img.Inode(nid)
	if err != nil {
		return nil, err
	}
	return img.OpenFile(ino)
}

// Inode returns the file's inode.
func (f *File) Inode() *Inode { return f.ino }

// Size returns the file size.
func (f *File) Size() int64 { return f.ino.Size }

// ReadAt implements io.ReaderAt.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("erofs: negative offset")
	}
	if off >= f.ino.Size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > f.ino.Size-off {
		p = p[:f.ino.Size-off]
	}
	n, err := f.readAt(p, off)
	if err != nil {
		return n, withNid(err, f.ino.Nid)
	}
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

func (f *File) readAt(p []byte, off int64) (int, error) {
	if f.z != nil {
		return f.z.readAt(p, off)
	}
	img := f.img
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		r, err := img.mapAt(f.ino, pos)
		if err != nil {
			return done, err
		}
		if pos < r.Logical || pos >= r.Logical+r.Length {
			return done, ferr(f.ino.Off, "mapping does not cover offset", pos)
		}
		n := int(min(int64(len(p)-done), r.Logical+r.Length-pos))
		q := p[done : done+n]
		in := pos - r.Logical
		switch r.Kind {
		case KindHole:
			clear(q)
		case KindInline:
			src, _ := img.metaSource(f.ino.Nid)
			if err := readFull(src.r, q, r.Phys+in); err != nil {
				return done, &FormatError{Off: r.Phys + in, Rule: "read inline data", Err: err, InMetabox: src.metabox}
			}
		default:
			if err := img.ReadPhys(r.Device, r.Phys+in, q); err != nil {
				return done, err
			}
		}
		done += n
	}
	return done, nil
}

// ReadAll returns the whole content of ino (refusing sizes above max bytes).
func (img *Image) ReadAll(ino *Inode, max int64) ([]byte, error) {
	if ino.Size > max {
		return nil, &FormatError{Off: ino.Off, Rule: "file larger than limit", Val: ino.Size, Nid: ino.Nid, HasNid: true}
	}
	f, err := img.OpenFile(ino)
	if err != nil {
		return nil, err
	}
	b := make([]byte, ino.Size)
	if _, err := f.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, err
	}
	return b, nil
}

// Readlink returns a symlink's target.
func (img *Image) Readlink(ino *Inode) (string, error) {
	if !ino.IsSymlink() {
		return "", &FormatError{Off: ino.Off, Rule: "not a symlink", Nid: ino.Nid, HasNid: true}
	}
	if ino.Size > 4096 || ino.Size > img.bs*16 {
		return "", &FormatError{Off: ino.Off + 8, Rule: "symlink target too long", Val: ino.Size, Nid: ino.Nid, HasNid: true}
	}
	b, err := img.ReadAll(ino, 4096)
	if err != nil {
		return "", err
	}
	return string(b), nil
}
