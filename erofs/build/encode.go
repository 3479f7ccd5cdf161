package build

import (
	"bufio"
	"fmt"
	"io"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

// This file encodes the planned layout: superblock, device table, inodes
// and the data blocks.

func (wr *writer) putSuper(b []byte, total uint64, slots []erofs.DeviceSlot) {
	s := b[erofs.SuperblockOffset:]
	le.PutUint32(s[0x00:], erofs.SuperMagic)
	le.PutUint32(s[0x08:], erofs.CompatSbChksum|erofs.CompatMtime)
	s[0x0C] = wr.bits
	le.PutUint16(s[0x0E:], uint16(wr.plans[0].nid()))
	le.PutUint64(s[0x10:], uint64(len(wr.plans)))
	le.PutUint64(s[0x18:], uint64(wr.epoch))
	le.PutUint32(s[0x24:], uint32(total))
	copy(s[0x30:0x40], wr.img.UUID[:])
	incompat := uint32(0)
	if len(slots) > 0 {
		incompat |= erofs.IncompatDeviceTable
		le.PutUint16(s[0x56:], uint16(len(slots)))
		le.PutUint16(s[0x58:], devtSlotOff)
	}
	if wr.stats.ChunkFiles > 0 || len(slots) > 0 {
		incompat |= erofs.IncompatChunkedFile
	}
	le.PutUint32(s[0x50:], incompat)
	for i, d := range slots {
		erofs.PutDeviceSlot(b[devtSlotOff*erofs.DeviceSlotSize+i*erofs.DeviceSlotSize:], d)
	}
}

func (wr *writer) putInode(meta []byte, p *plan) {
	b := meta[p.off : p.off+int64(p.total)]
	ino := p.ino
	var layout erofs.Layout
	var iu uint32
	switch p.kind {
	case dataNone:
		layout, iu = erofs.LayoutFlatPlain, nullAddr
	case dataInline:
		layout, iu = erofs.LayoutFlatInline, nullAddr
	case dataPlain:
		layout, iu = erofs.LayoutFlatPlain, uint32(p.startBlk)
	case dataChunks:
		layout, iu = erofs.LayoutChunkBased, erofs.ChunkFormatIndexes|uint32(ino.ChunkBits)
	}
	switch typeOf(ino.Mode) {
	case erofs.S_IFCHR, erofs.S_IFBLK:
		iu = ino.Rdev
	case erofs.S_IFIFO, erofs.S_IFSOCK:
		iu = 0
	}
	format := uint16(layout) << 1
	if p.extended {
		format |= 1
	}
	le.PutUint16(b[0:], format)
	if len(p.xattr) > 0 {
		le.PutUint16(b[2:], uint16((len(p.xattr)-12)/4+1))
	}
	le.PutUint16(b[4:], uint16(ino.Mode))
	le.PutUint32(b[0x10:], iu)
	le.PutUint32(b[0x14:], p.seq)
	if p.extended {
		le.PutUint64(b[0x08:], uint64(p.size))
		le.PutUint32(b[0x18:], ino.UID)
		le.PutUint32(b[0x1C:], ino.GID)
		le.PutUint64(b[0x20:], uint64(ino.Mtime))
		le.PutUint32(b[0x28:], ino.MtimeNsec)
		le.PutUint32(b[0x2C:], p.nlink)
	} else {
		le.PutUint16(b[0x06:], uint16(p.nlink))
		le.PutUint32(b[0x08:], uint32(p.size))
		le.PutUint32(b[0x0C:], uint32(ino.Mtime-wr.epoch))
		le.PutUint16(b[0x18:], uint16(ino.UID))
		le.PutUint16(b[0x1A:], uint16(ino.GID))
	}
	copy(b[p.isize():], p.xattr)
	pl := b[p.payloadOff():]
	switch p.kind {
	case dataInline:
		copy(pl, p.inline)
	case dataChunks:
		k := 0
		for i, c := range ino.Chunks {
			e := pl[8*i:]
			switch {
			case c.Hole:
				le.PutUint32(e[4:], nullAddr)
			case c.Device == 0:
				le.PutUint32(e[4:], uint32(p.chunkBlk[k]))
				k++
			default:
				le.PutUint16(e[2:], c.Device)
				le.PutUint32(e[4:], uint32(c.Block))
			}
		}
	}
}

// writeData writes the data blocks in allocation order.
func (wr *writer) writeData(w io.WriterAt, dataStart uint64) error {
	bs := wr.bs
	ow := &offWriter{w: w, off: int64(dataStart) * bs}
	bw := bufio.NewWriterSize(ow, 1<<20)
	buf := make([]byte, 1<<20)
	zeros := make([]byte, 64<<10)
	pad := func(n int64) error {
		if r := n % bs; r != 0 {
			_, err := bw.Write(make([]byte, bs-r))
			return err
		}
		return nil
	}
	for _, p := range wr.plans {
		switch p.kind {
		case dataPlain:
			var err error
			switch typeOf(p.ino.Mode) {
			case erofs.S_IFDIR:
				err = wr.writeDir(bw, p)
			case erofs.S_IFLNK:
				if _, err = bw.Write(p.inline); err == nil {
					err = pad(int64(len(p.inline)))
				}
			default:
				err = copyData(bw, p.ino.Data, p.size, buf)
				if err == nil {
					err = pad(p.size)
				}
			}
			if err != nil {
				return fmt.Errorf("erofs build: %s: %w", p.path, err)
			}
		case dataChunks:
			k := 0
			for _, c := range p.ino.Chunks {
				if c.Hole || c.Device != 0 {
					continue
				}
				if _, err := bw.Write(c.Data); err != nil {
					return fmt.Errorf("erofs build: %s: %w", p.path, err)
				}
				for rest := p.chunkLen[k] - int64(len(c.Data)); rest > 0; {
					n, err := bw.Write(zeros[:min(rest, int64(len(zeros)))])
					if err != nil {
						return fmt.Errorf("erofs build: %s: %w", p.path, err)
					}
					rest -= int64(n)
				}
				k++
			}
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("erofs build: write data: %w", err)
	}
	if ow.off != int64(wr.dataNext)*bs {
		return fmt.Errorf("erofs build: internal error: wrote up to %d, want %d", ow.off, int64(wr.dataNext)*bs)
	}
	return nil
}

func copyData(w io.Writer, r io.ReaderAt, size int64, buf []byte) error {
	for off := int64(0); off < size; {
		n := int(min(int64(len(buf)), size-off))
		if err := readFull(r, buf[:n], off); err != nil {
			return fmt.Errorf("read data at %d: %w", off, err)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}

func (wr *writer) writeDir(w io.Writer, p *plan) error {
	blk := make([]byte, wr.bs)
	for _, ents := range p.blocks {
		clear(blk)
		nameoff := 12 * len(ents)
		for j, e := range ents {
			d := blk[12*j:]
			le.PutUint64(d[0:], e.p.nid())
			le.PutUint16(d[8:], uint16(nameoff))
			d[10] = erofs.DirentType(e.p.ino.Mode)
			nameoff += copy(blk[nameoff:], e.name)
		}
		// Blocks are written in full (zero padded); i_size covers only
		// the used bytes of the last one.
		if _, err := w.Write(blk); err != nil {
			return err
		}
	}
	return nil
}

// offWriter turns a WriterAt into a sequential Writer.
type offWriter struct {
	w   io.WriterAt
	off int64
}

func (o *offWriter) Write(b []byte) (int, error) {
	n, err := o.w.WriteAt(b, o.off)
	o.off += int64(n)
	return n, err
}
