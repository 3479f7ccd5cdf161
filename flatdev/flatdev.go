// Package flatdev assembles one flat block device from an EROFS primary image
// and its extra-device blobs: it checks that the blobs belong to the image,
// plans the unified address space (package mapping), writes a correct device
// table (blocks, uniaddr, tags kept) and superblock CRC32C into an in-memory
// overlay of the primary, and serves reads across the extents. Input files
// are never modified.
package flatdev

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/mapping"
)

// Source is one input file (or anything with the same shape).
type Source struct {
	Name string // for messages
	R    io.ReaderAt
	Size int64
}

// Options tune composition.
type Options struct {
	// Align is the alignment, in bytes, of uniaddrs the composer assigns
	// (0: one block). Must be a multiple of the block size.
	Align int64
	// VerifyDigests hashes blobs whose slot tag is a sha256 and compares.
	VerifyDigests bool
	// Progress, when set, is called while hashing with bytes done and total.
	Progress func(name string, done, total int64)
	// OnError, when set, is called for every failed read of an input file
	// while the device is served (I/O error, or ErrTruncated), with the
	// file's Source.Name. It must be fast and safe for concurrent use: it is
	// the hook for error counters and rate-limited logging.
	OnError func(blob string, err error)
}

// Device is the composed flat device. It implements blockdev.Device,
// blockdev.Mapper and is safe for concurrent use.
type Device struct {
	m       *mapping.Map
	srcs    []Source // index = mapping dev (0 = primary)
	overlay []patch  // sorted, non-overlapping patches of the primary
	sb      *erofs.Superblock
	slots   []erofs.DeviceSlot // as rewritten
	onError func(blob string, err error)
	nowait  []blockdev.NoWaitReader // per input; nil: always would block (nowait.go)
}

type patch struct {
	off  int64
	data []byte
}

var (
	_ blockdev.Device = (*Device)(nil)
	_ blockdev.Mapper = (*Device)(nil)
)

// Error is a composition refusal. It names the file(s) involved.
type Error struct {
	File string
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	s := e.File + ": " + e.Msg
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// New composes primary and blobs (in device-table slot order).
func New(primary Source, blobs []Source, opt Options) (*Device, error) {
	sb, err := erofs.ReadSuperblock(primary.R, primary.Size)
	if err != nil {
		return nil, &Error{File: primary.Name, Msg: "not a usable EROFS primary image", Err: err}
	}
	bs := sb.BlockSize()
	n := sb.NumDevices()
	if len(blobs) != n {
		return nil, &Error{File: primary.Name, Msg: fmt.Sprintf("the image's device table lists %d extra device(s) but %d blob(s) were given", n, len(blobs))}
	}
	pblocks := sb.Blocks
	if pblocks == 0 {
		pblocks = uint64((primary.Size + bs - 1) / bs)
	}
	if uint64(primary.Size) < pblocks*uint64(bs) {
		return nil, &Error{File: primary.Name, Msg: fmt.Sprintf("image has %d bytes, shorter than the %d blocks of %d bytes its superblock declares", primary.Size, pblocks, bs)}
	}
	if err := checkBlobs(sb, blobs, opt); err != nil {
		return nil, err
	}
	align := uint64(1)
	if opt.Align > 0 {
		if opt.Align%bs != 0 {
			return nil, fmt.Errorf("align %d is not a multiple of the block size %d", opt.Align, bs)
		}
		align = uint64(opt.Align / bs)
	}
	in := mapping.Input{BlockBits: sb.BlkSzBits, PrimaryBlocks: pblocks, Align: align, AddrBits: 32}
	if sb.HasIncompat(erofs.Incompat48Bit) {
		in.AddrBits = 48
	}
	for i, b := range blobs {
		in.Slots = append(in.Slots, mapping.Slot{Blocks: sb.Devices[i].Blocks, UniAddr: sb.Devices[i].UniAddr})
		in.BlobSizes = append(in.BlobSizes, b.Size)
		in.Names = append(in.Names, b.Name)
	}
	m, err := mapping.Plan(in)
	if err != nil {
		return nil, &Error{File: primary.Name, Msg: "cannot lay out the unified address space", Err: err}
	}
	d := &Device{m: m, sb: sb, srcs: append([]Source{primary}, blobs...), onError: opt.OnError}
	d.nowait = noWaitReaders(d.srcs)
	if err := d.buildOverlay(primary); err != nil {
		return nil, err
	}
	return d, nil
}

// checkBlobs verifies that each blob is the one its slot's tag names.
func checkBlobs(sb *erofs.Superblock, blobs []Source, opt Options) error {
	for i, b := range blobs {
		slot := &sb.Devices[i]
		switch slot.TagKind() {
		case erofs.TagUUID:
			// Rebuild mode: the tag is the source image's UUID. A blob that is
			// itself an EROFS image must carry that UUID.
			bsb, err := erofs.ReadSuperblock(b.R, b.Size)
			if err != nil {
				continue // a raw data blob: nothing to compare against
			}
			got := hex.EncodeToString(bsb.UUID[:])
			if want := slot.TagString(); !equalFoldHex(got, want) {
				return &Error{File: b.Name, Msg: fmt.Sprintf(
					"device %d: the primary's slot tag names an image with UUID %s but this blob's UUID is %s; are the --blob files in device-table order?", i+1, want, got)}
			}
		case erofs.TagSHA256:
			if !opt.VerifyDigests {
				continue
			}
			h := sha256.New()
			r := io.NewSectionReader(b.R, 0, b.Size)
			var src io.Reader = r
			if opt.Progress != nil {
				src = &progressReader{r: r, name: b.Name, total: b.Size, fn: opt.Progress}
			}
			if _, err := io.Copy(h, src); err != nil {
				return &Error{File: b.Name, Msg: "reading blob for its digest", Err: err}
			}
			got := hex.EncodeToString(h.Sum(nil))
			if want := slot.TagString(); !equalFoldHex(got, want) {
				return &Error{File: b.Name, Msg: fmt.Sprintf("device %d: sha256 %s does not match the slot tag %s; wrong blob or wrong order?", i+1, got, want)}
			}
		}
	}
	return nil
}

func equalFoldHex(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i]|0x20, b[i]|0x20
		if x != y {
			return false
		}
	}
	return true
}

type progressReader struct {
	r           io.Reader
	name        string
	done, total int64
	fn          func(string, int64, int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	p.fn(p.name, p.done, p.total)
	return n, err
}

// buildOverlay rewrites the device table and the superblock checksum in
// memory.
func (d *Device) buildOverlay(primary Source) error {
	sb := d.sb
	n := sb.NumDevices()
	if n == 0 {
		return nil
	}
	// Block 0 holds the superblock and everything its CRC covers.
	head := make([]byte, min(int64(erofs.SuperblockOffset+erofs.ChecksumLen(sb.BlkSzBits)), primary.Size))
	if _, err := readFull(primary.R, head, 0); err != nil {
		return &Error{File: primary.Name, Msg: "reading the superblock block", Err: err}
	}
	toff := sb.DeviceTableOffset()
	table := make([]byte, n*erofs.DeviceSlotSize)
	if _, err := readFull(primary.R, table, toff); err != nil {
		return &Error{File: primary.Name, Msg: fmt.Sprintf("reading the device table at offset %d", toff), Err: err}
	}
	for i := 0; i < n; i++ {
		s := sb.Devices[i]
		e := d.m.Device(i + 1)
		s.Blocks, s.UniAddr = e.Blocks, e.Start
		erofs.PutDeviceSlot(table[i*erofs.DeviceSlotSize:], s)
		d.slots = append(d.slots, s)
	}
	// Merge the table into head where they overlap, so the CRC sees it.
	tend := toff + int64(len(table))
	if toff < int64(len(head)) {
		copy(head[toff:], table)
	}
	if sb.HasCompat(erofs.CompatSbChksum) {
		crc := erofs.SuperblockChecksum(head, sb.BlkSzBits)
		putLE32(head[erofs.SuperblockOffset+4:], crc)
	}
	d.overlay = append(d.overlay, patch{off: 0, data: head})
	if tend > int64(len(head)) {
		start := max(toff, int64(len(head)))
		d.overlay = append(d.overlay, patch{off: start, data: table[start-toff:]})
	}
	sort.Slice(d.overlay, func(i, j int) bool { return d.overlay[i].off < d.overlay[j].off })
	return nil
}

func putLE32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

func readFull(r io.ReaderAt, p []byte, off int64) (int, error) {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Size is the byte size of the composed device.
func (d *Device) Size() int64 { return d.m.Size() }

// Map returns the planned address space.
func (d *Device) Map() *mapping.Map { return d.m }

// Superblock returns the primary's superblock as read (before rewriting).
func (d *Device) Superblock() *erofs.Superblock { return d.sb }

// Slots returns the device table as written into the composed device.
func (d *Device) Slots() []erofs.DeviceSlot { return d.slots }

// Sources returns the inputs, index 0 the primary.
func (d *Device) Sources() []Source { return d.srcs }

// ErrTruncated is wrapped by read errors caused by a blob that is now
// shorter than it was when the device was composed.
var ErrTruncated = errors.New("blob is shorter than when it was composed")

// ReadAt reads the composed device. Holes read as zeros; a blob's partial
// last block reads as zeros past the blob's size at composition time.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("flatdev: negative offset %d", off)
	}
	size := d.m.Size()
	if off >= size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > size-off {
		p = p[:size-off]
	}
	err := d.m.Runs(off, int64(len(p)), func(r mapping.Run) error {
		buf := p[r.Off-off : r.Off-off+r.Len]
		if r.Hole {
			clear(buf)
			return nil
		}
		return d.readDev(r.Dev, buf, r.DevOff)
	})
	if err != nil {
		return 0, err
	}
	if len(p) < want {
		return len(p), io.EOF
	}
	return len(p), nil
}

// readDev fills buf from device dev at devOff.
func (d *Device) readDev(dev int, buf []byte, devOff int64) error {
	src := &d.srcs[dev]
	n := len(buf)
	// Only the part below the size seen at composition time comes from the
	// file; the rest of the last block is zero padding.
	if avail := src.Size - devOff; int64(n) > avail {
		if avail < 0 {
			avail = 0
		}
		clear(buf[avail:])
		n = int(avail)
	}
	if n > 0 {
		got, err := src.R.ReadAt(buf[:n], devOff)
		if got < n {
			if err == nil || err == io.EOF {
				err = fmt.Errorf("%w: %d bytes at offset %d, got %d", ErrTruncated, n, devOff, got)
			}
			if d.onError != nil {
				d.onError(src.Name, err)
			}
			return &Error{File: src.Name, Msg: fmt.Sprintf("read at offset %d", devOff), Err: err}
		}
	}
	if dev == 0 {
		d.applyOverlay(buf, devOff)
	}
	return nil
}

func (d *Device) applyOverlay(buf []byte, off int64) {
	end := off + int64(len(buf))
	for _, p := range d.overlay {
		pend := p.off + int64(len(p.data))
		if pend <= off || p.off >= end {
			continue
		}
		s, e := max(p.off, off), min(pend, end)
		copy(buf[s-off:e-off], p.data[s-p.off:e-p.off])
	}
}

// Extents reports data and hole runs (blockdev.Mapper).
func (d *Device) Extents(off, length int64) ([]blockdev.Extent, error) {
	var out []blockdev.Extent
	err := d.m.Runs(off, length, func(r mapping.Run) error {
		if k := len(out) - 1; k >= 0 && out[k].Hole == r.Hole {
			out[k].Length += r.Len
			return nil
		}
		out = append(out, blockdev.Extent{Offset: r.Off, Length: r.Len, Hole: r.Hole})
		return nil
	})
	return out, err
}

// WriteTo writes the whole composed device to w (holes as zeros).
func (d *Device) WriteTo(w io.Writer) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for off := int64(0); off < d.Size(); {
		n := min(int64(len(buf)), d.Size()-off)
		if _, err := d.ReadAt(buf[:n], off); err != nil && err != io.EOF {
			return total, err
		}
		m, err := w.Write(buf[:n])
		total += int64(m)
		if err != nil {
			return total, err
		}
		off += n
	}
	return total, nil
}
