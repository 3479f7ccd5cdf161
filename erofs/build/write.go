package build

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"sort"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

var le = binary.LittleEndian

const (
	nullAddr    = 0xFFFFFFFF
	devtSlotOff = (erofs.SuperblockOffset + erofs.SuperblockSize) / erofs.DeviceSlotSize // 9: byte 1152
	// maxChunkBits bounds the chunk format's block-bits field.
	maxChunkBits = erofs.ChunkFormatBlkBits
)

// dataKind says where an inode's data goes.
type dataKind uint8

const (
	dataNone   dataKind = iota // special files, empty files
	dataInline                 // FLAT_INLINE: all data after the inode
	dataPlain                  // FLAT_PLAIN: data blocks in the image
	dataChunks                 // CHUNK_BASED
)

// dirent is one entry of a planned directory.
type dirent struct {
	name string
	p    *plan
}

// plan is the layout of one inode.
type plan struct {
	ino      *Inode
	path     string
	parent   *plan
	nlink    uint32
	subdirs  uint32
	seq      uint32 // i_ino
	extended bool
	kind     dataKind
	xattr    []byte
	inline   []byte // dataInline payload
	size     int64
	ents     []dirent   // directories, sorted, with "." and ".."
	blocks   [][]dirent // directories: entries per block
	off      int64      // byte offset of the inode (nid = off/32)
	total    int        // bytes of inode + xattrs + payload
	startBlk uint64     // dataPlain: first data block
	nblocks  uint64
	chunkBlk []uint64 // dataChunks: image blocks of chunks with Data
	chunkLen []int64  // dataChunks: bytes reserved for those chunks (whole blocks)
}

func (p *plan) nid() uint64 { return uint64(p.off) / 32 }

// writer holds the state of one Write.
type writer struct {
	img      *Image
	bs       int64 // block size
	bits     uint8
	plans    []*plan
	byInode  map[*Inode]*plan
	epoch    int64
	stats    Stats
	dataNext uint64 // next free data block
}

// Write encodes img into w (from offset 0; w should be empty or be
// truncated by the caller to Stats.Blocks*BlockSize afterwards; Write
// writes every byte of that range).
func Write(w io.WriterAt, img *Image) (*Stats, error) {
	if img.Root == nil || typeOf(img.Root.Mode) != erofs.S_IFDIR {
		return nil, &Error{Path: "/", Msg: "root is not a directory"}
	}
	if len(img.Devices) > math.MaxUint16-1 {
		return nil, fmt.Errorf("erofs build: %d devices, at most %d", len(img.Devices), math.MaxUint16-1)
	}
	for i, d := range img.Devices {
		if len(d.Tag) > 64 {
			return nil, fmt.Errorf("erofs build: device %d: tag longer than 64 bytes", i+1)
		}
		if d.Blocks == 0 || d.Blocks >= 1<<32 {
			return nil, fmt.Errorf("erofs build: device %d: %d blocks (want 1..2^32-1)", i+1, d.Blocks)
		}
	}
	wr := &writer{img: img, byInode: map[*Inode]*plan{}, bits: img.BlockBits}
	if wr.bits == 0 {
		wr.bits = blkBits
	}
	if wr.bits < 9 || wr.bits > blkBits {
		return nil, fmt.Errorf("erofs build: block bits %d (want 9..12)", wr.bits)
	}
	wr.bs = int64(1) << wr.bits
	bs := wr.bs
	if err := wr.collect(); err != nil {
		return nil, err
	}
	if err := wr.prepare(); err != nil {
		return nil, err
	}
	metaStart := roundUp(int64(devtSlotOff)*erofs.DeviceSlotSize+int64(len(img.Devices))*erofs.DeviceSlotSize, bs)
	metaEnd := wr.place(metaStart)
	dataStart := uint64(roundUp(metaEnd, bs) / bs)
	wr.dataNext = dataStart
	wr.allocData()
	total := wr.dataNext
	if total >= 1<<32 {
		return nil, fmt.Errorf("erofs build: image of %d blocks needs 48-bit addressing (unsupported)", total)
	}
	slots, err := wr.slots(total)
	if err != nil {
		return nil, err
	}
	meta := make([]byte, int64(dataStart)*bs)
	wr.putSuper(meta, total, slots)
	for _, p := range wr.plans {
		wr.putInode(meta, p)
	}
	csum := erofs.SuperblockChecksum(meta, wr.bits)
	le.PutUint32(meta[erofs.SuperblockOffset+4:], csum)
	if _, err := w.WriteAt(meta, 0); err != nil {
		return nil, fmt.Errorf("erofs build: write metadata: %w", err)
	}
	if err := wr.writeData(w, dataStart); err != nil {
		return nil, err
	}
	wr.stats.Inodes = len(wr.plans)
	wr.stats.Blocks = total
	wr.stats.BlockSize = bs
	wr.stats.MetaBlocks = dataStart
	wr.stats.DataBlocks = total - dataStart
	wr.stats.Slots = slots
	wr.stats.RootNid = wr.plans[0].nid()
	return &wr.stats, nil
}

func roundUp(v, a int64) int64 { return (v + a - 1) / a * a }

// collect walks the tree breadth-first, dedupes hard-linked inodes and
// counts links.
func (wr *writer) collect() error {
	root := &plan{ino: wr.img.Root, path: "/"}
	root.parent = root
	wr.byInode[wr.img.Root] = root
	wr.plans = append(wr.plans, root)
	for i := 0; i < len(wr.plans); i++ {
		d := wr.plans[i]
		if typeOf(d.ino.Mode) != erofs.S_IFDIR {
			continue
		}
		names := map[string]bool{}
		d.ents = append(d.ents, dirent{".", d}, dirent{"..", d.parent})
		for _, e := range d.ino.Entries {
			cpath := d.path + e.Name
			if e.Name == "" || e.Name == "." || e.Name == ".." || len(e.Name) > 255 || indexByte(e.Name, '/') >= 0 || indexByte(e.Name, 0) >= 0 {
				return &Error{Path: cpath, Msg: fmt.Sprintf("invalid name %q", e.Name)}
			}
			if names[e.Name] {
				return &Error{Path: cpath, Msg: "duplicate name"}
			}
			names[e.Name] = true
			if e.Inode == nil {
				return &Error{Path: cpath, Msg: "nil inode"}
			}
			c, ok := wr.byInode[e.Inode]
			isDir := typeOf(e.Inode.Mode) == erofs.S_IFDIR
			if ok && isDir {
				return &Error{Path: cpath, Msg: "directory reached twice (hard-linked directory or cycle)"}
			}
			if !ok {
				c = &plan{ino: e.Inode, path: cpath, parent: d}
				if isDir {
					c.path += "/"
				}
				wr.byInode[e.Inode] = c
				wr.plans = append(wr.plans, c)
			}
			if isDir {
				d.subdirs++
			} else {
				c.nlink++
			}
			d.ents = append(d.ents, dirent{e.Name, c})
		}
		sort.Slice(d.ents, func(a, b int) bool { return d.ents[a].name < d.ents[b].name })
	}
	if len(wr.plans) >= 1<<32 {
		return fmt.Errorf("erofs build: %d inodes", len(wr.plans))
	}
	return nil
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// prepare decides inode formats, xattr bodies and data layouts.
func (wr *writer) prepare() error {
	wr.epoch = math.MaxInt64
	for _, p := range wr.plans {
		if m := p.ino.Mtime; m >= 0 && m < wr.epoch {
			wr.epoch = m
		}
	}
	if wr.epoch == math.MaxInt64 {
		wr.epoch = 0
	}
	for i, p := range wr.plans {
		ino := p.ino
		p.seq = uint32(i + 1)
		if typeOf(ino.Mode) == erofs.S_IFDIR {
			p.nlink = 2 + p.subdirs
		}
		var err error
		if p.xattr, err = encodeXattrs(ino.Xattrs); err != nil {
			return &Error{Path: p.path, Msg: err.Error()}
		}
		switch typeOf(ino.Mode) {
		case erofs.S_IFDIR:
			p.layoutDir(wr.bs)
		case erofs.S_IFLNK:
			if ino.Target == "" || len(ino.Target) > 4095 {
				return &Error{Path: p.path, Msg: fmt.Sprintf("symlink target of %d bytes", len(ino.Target))}
			}
			p.size = int64(len(ino.Target))
			p.kind = dataInline
			p.inline = []byte(ino.Target)
		case erofs.S_IFREG:
			if err := wr.prepareFile(p); err != nil {
				return err
			}
		case erofs.S_IFCHR, erofs.S_IFBLK, erofs.S_IFIFO, erofs.S_IFSOCK:
		default:
			return &Error{Path: p.path, Msg: fmt.Sprintf("bad mode %o", ino.Mode)}
		}
		mt := ino.Mtime - wr.epoch
		p.extended = ino.UID > math.MaxUint16 || ino.GID > math.MaxUint16 || p.nlink > math.MaxUint16 ||
			p.size > math.MaxUint32 || mt < 0 || mt > math.MaxUint32 || ino.MtimeNsec != 0
		// Inline payloads must sit in the inode's block; otherwise use
		// data blocks.
		if p.kind == dataInline && int64(p.payloadOff()+len(p.inline)) > wr.bs {
			p.kind = dataPlain
		}
	}
	return nil
}

func (wr *writer) prepareFile(p *plan) error {
	ino := p.ino
	bs := wr.bs
	p.size = ino.Size
	if ino.Size < 0 {
		return &Error{Path: p.path, Msg: "negative size"}
	}
	switch {
	case ino.Chunks != nil:
		if ino.Data != nil {
			return &Error{Path: p.path, Msg: "both Data and Chunks"}
		}
		if ino.ChunkBits > maxChunkBits {
			return &Error{Path: p.path, Msg: fmt.Sprintf("chunk bits %d > %d", ino.ChunkBits, maxChunkBits)}
		}
		cs := int64(bs) << ino.ChunkBits
		if n := (ino.Size + cs - 1) / cs; int64(len(ino.Chunks)) != n {
			return &Error{Path: p.path, Msg: fmt.Sprintf("%d chunks for %d bytes in %d-byte chunks (want %d)", len(ino.Chunks), ino.Size, cs, n)}
		}
		for i, c := range ino.Chunks {
			clen := min(cs, ino.Size-int64(i)*cs)
			switch {
			case c.Hole:
			case c.Device == 0:
				if int64(len(c.Data)) > clen {
					return &Error{Path: p.path, Msg: fmt.Sprintf("chunk %d: %d data bytes for a %d-byte chunk", i, len(c.Data), clen)}
				}
			case int(c.Device) > len(wr.img.Devices):
				return &Error{Path: p.path, Msg: fmt.Sprintf("chunk %d: device %d of %d", i, c.Device, len(wr.img.Devices))}
			default:
				nb := uint64((clen + bs - 1) / bs)
				if c.Block >= nullAddr || c.Block+nb > wr.img.Devices[c.Device-1].Blocks {
					return &Error{Path: p.path, Msg: fmt.Sprintf("chunk %d: blocks %d+%d beyond device %d (%d blocks)", i, c.Block, nb, c.Device, wr.img.Devices[c.Device-1].Blocks)}
				}
			}
		}
		if ino.Size > 0 {
			p.kind = dataChunks
			wr.stats.ChunkFiles++
		}
	case ino.Data != nil:
		if ino.Size > 0 {
			p.kind = dataInline
			if ino.Size <= bs {
				p.inline = make([]byte, ino.Size)
				if err := readFull(ino.Data, p.inline, 0); err != nil {
					return &Error{Path: p.path, Msg: "read data: " + err.Error()}
				}
			} else {
				p.kind = dataPlain
			}
			wr.stats.CopiedBytes += ino.Size
		}
	case ino.Size != 0:
		return &Error{Path: p.path, Msg: "size without Data or Chunks"}
	}
	return nil
}

func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// layoutDir cuts a directory's sorted entries into blocks.
func (p *plan) layoutDir(bs int64) {
	p.kind = dataPlain
	var cur []dirent
	used := 0
	for _, e := range p.ents {
		need := 12 + len(e.name)
		if int64(used+need) > bs {
			p.blocks = append(p.blocks, cur)
			cur, used = nil, 0
		}
		cur = append(cur, e)
		used += need
	}
	p.blocks = append(p.blocks, cur)
	p.size = int64(len(p.blocks)-1)*bs + int64(used)
}

func (p *plan) isize() int {
	if p.extended {
		return 64
	}
	return 32
}

// payloadOff is the offset of the inline payload / chunk table in the inode.
func (p *plan) payloadOff() int {
	o := p.isize() + len(p.xattr)
	if p.kind == dataChunks {
		o = (o + 7) &^ 7
	}
	return o
}

// place assigns inode offsets from byte start and returns the end.
func (wr *writer) place(start int64) int64 {
	pos, bs := start, wr.bs
	for _, p := range wr.plans {
		p.total = p.payloadOff()
		switch p.kind {
		case dataInline:
			p.total += len(p.inline)
		case dataChunks:
			p.total += 8 * len(p.ino.Chunks)
		}
		pos = roundUp(pos, 32)
		inBlk := pos % bs
		if (p.kind == dataInline && inBlk+int64(p.total) > bs) || (p.extended && inBlk+64 > bs) {
			pos = roundUp(pos, bs)
		}
		p.off = pos
		pos += int64(p.total)
	}
	return pos
}

// allocData assigns data blocks in plan order.
func (wr *writer) allocData() {
	bs := wr.bs
	for _, p := range wr.plans {
		switch p.kind {
		case dataPlain:
			p.nblocks = uint64((p.size + bs - 1) / bs)
			p.startBlk = wr.dataNext
			wr.dataNext += p.nblocks
		case dataChunks:
			cs := int64(bs) << p.ino.ChunkBits
			for i, c := range p.ino.Chunks {
				if !c.Hole && c.Device == 0 {
					// The whole chunk is stored: data, then zeros.
					n := roundUp(min(cs, p.size-int64(i)*cs), bs)
					p.chunkBlk = append(p.chunkBlk, wr.dataNext)
					p.chunkLen = append(p.chunkLen, n)
					wr.dataNext += uint64(n / bs)
				}
			}
		}
	}
}

// slots assigns uniaddrs after the image's total blocks.
func (wr *writer) slots(total uint64) ([]erofs.DeviceSlot, error) {
	align := max(wr.img.AlignBlocks, 1)
	next := total
	var out []erofs.DeviceSlot
	for i, d := range wr.img.Devices {
		next = (next + align - 1) / align * align
		if next+d.Blocks >= 1<<32 {
			return nil, fmt.Errorf("erofs build: device %d: unified address %d+%d beyond 32 bits", i+1, next, d.Blocks)
		}
		var s erofs.DeviceSlot
		copy(s.Tag[:], d.Tag)
		s.Blocks, s.UniAddr = d.Blocks, next
		out = append(out, s)
		next += d.Blocks
	}
	return out, nil
}
