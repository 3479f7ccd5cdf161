package erofs

import (
	"fmt"
	"io"
	"math"
)

// Dev is an extra device: a reader and its size in bytes.
type Dev struct {
	R    io.ReaderAt
	Size int64
}

// Option configures Open.
type Option func(*openCfg)

type openCfg struct {
	devs []Dev
	flat bool
}

// WithDevices supplies the extra devices in slot order (device_id 1..N).
func WithDevices(devs ...Dev) Option { return func(c *openCfg) { c.devs = devs } }

// WithFlat makes data on extra devices readable through the primary reader
// at uniaddr*blocksize (a composed flat device), as the kernel's flatdev mode.
func WithFlat() Option { return func(c *openCfg) { c.flat = true } }

// source is a bounded metadata/data source.
type source struct {
	r       io.ReaderAt
	size    int64
	metabox bool
}

// read reads exactly n bytes at off, checking bounds.
func (s *source) read(off int64, n int, rule string) ([]byte, error) {
	if off < 0 || n < 0 || off > s.size || int64(n) > s.size-off {
		return nil, &FormatError{Off: off, Rule: rule + " beyond end of " + s.name(), Val: n, InMetabox: s.metabox}
	}
	b := make([]byte, n)
	if err := readFull(s.r, b, off); err != nil {
		return nil, &FormatError{Off: off, Rule: "read " + s.name(), Err: err, InMetabox: s.metabox}
	}
	return b, nil
}

func (s *source) name() string {
	if s.metabox {
		return "metabox"
	}
	return "image"
}

func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// Image is an opened EROFS image. It is safe for concurrent use as long as
// the underlying readers are.
type Image struct {
	SB       *Superblock
	prim     source
	devs     []Dev
	flat     bool
	bs       int64
	bits     uint8
	metabox  *source
	packed   *Inode
	prefixes []xattrPrefix
	root     *Inode
}

// Open decodes the superblock, device table, metabox, packed inode and long
// xattr prefixes of the image on primary (size bytes) and checks the root.
func Open(primary io.ReaderAt, size int64, opts ...Option) (*Image, error) {
	var cfg openCfg
	for _, o := range opts {
		o(&cfg)
	}
	if size < 0 {
		return nil, ferr(0, "negative image size", size)
	}
	sb, err := ReadSuperblock(primary, size)
	if err != nil {
		return nil, err
	}
	img := &Image{SB: sb, prim: source{r: primary, size: size}, devs: cfg.devs, flat: cfg.flat,
		bs: sb.BlockSize(), bits: sb.BlkSzBits}
	for i, d := range cfg.devs {
		if d.R == nil || d.Size < 0 {
			return nil, fmt.Errorf("erofs: device %d: nil reader or negative size", i+1)
		}
	}
	if len(cfg.devs) > 0 && len(cfg.devs) != sb.NumDevices() {
		return nil, fmt.Errorf("erofs: %d devices given, image has %d extra devices", len(cfg.devs), sb.NumDevices())
	}
	if sb.HasIncompat(IncompatMetabox) {
		mb, err := img.Inode(sb.MetaboxNid)
		if err != nil {
			return nil, fmt.Errorf("metabox inode: %w", err)
		}
		if !mb.IsReg() {
			return nil, &FormatError{Off: mb.Off, Rule: "metabox inode is not a regular file", Nid: mb.Nid, HasNid: true}
		}
		f, err := img.OpenFile(mb)
		if err != nil {
			return nil, fmt.Errorf("metabox inode: %w", err)
		}
		img.metabox = &source{r: f, size: mb.Size, metabox: true}
	}
	if sb.HasIncompat(IncompatFragments) && sb.PackedNid != 0 {
		p, err := img.Inode(sb.PackedNid)
		if err != nil {
			return nil, fmt.Errorf("packed inode: %w", err)
		}
		if !p.IsReg() {
			return nil, &FormatError{Off: p.Off, Rule: "packed inode is not a regular file", Nid: p.Nid, HasNid: true}
		}
		img.packed = p
	}
	if err := img.loadPrefixes(); err != nil {
		return nil, err
	}
	root, err := img.Inode(sb.RootNid)
	if err != nil {
		return nil, fmt.Errorf("root inode: %w", err)
	}
	if !root.IsDir() {
		return nil, &FormatError{Off: root.Off, Rule: "root inode is not a directory", Nid: root.Nid, HasNid: true, Val: fmt.Sprintf("%o", root.Mode)}
	}
	img.root = root
	return img, nil
}

// Root returns the root directory inode.
func (img *Image) Root() *Inode { return img.root }

// BlockSize returns the block size in bytes.
func (img *Image) BlockSize() int64 { return img.bs }

// Size returns the primary image size.
func (img *Image) Size() int64 { return img.prim.size }

// metaSource returns the source holding inode nid's metadata.
func (img *Image) metaSource(nid uint64) (*source, error) {
	if nid&NidMetaboxBit == 0 {
		return &img.prim, nil
	}
	if img.metabox == nil {
		return nil, ferr(0, "nid has metabox bit but image has no metabox", nid)
	}
	return img.metabox, nil
}

// ReadPhys reads len(p) bytes at byte offset off of device dev (0 = the
// unified address space, N = extra device N) following the kernel's
// erofs_map_dev rules. Reads past the end of the resolved device fail.
func (img *Image) ReadPhys(dev int, off int64, p []byte) error {
	r, base, size, err := img.resolveDev(dev, off)
	if err != nil {
		return err
	}
	pos, ok := addOK(base, off)
	if !ok || off < 0 || pos > size || int64(len(p)) > size-pos {
		return ferr(off, fmt.Sprintf("data beyond end of device %d", dev), int64(len(p)))
	}
	if err := readFull(r, p, pos); err != nil {
		return &FormatError{Off: off, Rule: fmt.Sprintf("read device %d", dev), Err: err}
	}
	return nil
}

// resolveDev returns the reader, base offset and size for device dev at off.
func (img *Image) resolveDev(dev int, off int64) (io.ReaderAt, int64, int64, error) {
	n := img.SB.NumDevices()
	if dev < 0 || dev > n {
		return nil, 0, 0, ferr(off, "device id beyond extra devices", dev)
	}
	if dev == 0 {
		if len(img.devs) > 0 && !img.flat {
			if i, rel := img.SB.MapUnified(off); i > 0 {
				return img.devs[i-1].R, rel - off, img.devs[i-1].Size, nil
			}
		}
		return img.prim.r, 0, img.prim.size, nil
	}
	if len(img.devs) > 0 {
		return img.devs[dev-1].R, 0, img.devs[dev-1].Size, nil
	}
	if img.flat {
		d := img.SB.Devices[dev-1]
		if d.UniAddr == 0 {
			// Unified block 0 is the primary's superblock: such a slot was
			// never laid out (e.g. mkfs.erofs 1.5 --blobdev), and the kernel
			// would silently read the primary at the blob offset.
			return nil, 0, 0, ferr(img.SB.DeviceTableOffset()+int64(dev-1)*DeviceSlotSize+0x44, "flat device has no uniaddr", dev)
		}
		base, ok := mulOK(int64(d.UniAddr&addrMask48), img.bs)
		if !ok {
			return nil, 0, 0, ferr(off, "device uniaddr overflows", d.UniAddr)
		}
		return img.prim.r, base, img.prim.size, nil
	}
	return nil, 0, 0, fmt.Errorf("erofs: device %d (tag %q) needed at offset %#x: %w", dev, img.SB.Devices[dev-1].TagString(), off, ErrMissingDevice)
}

func addOK(a, b int64) (int64, bool) {
	c := a + b
	if (b > 0 && c < a) || (b < 0 && c > a) {
		return 0, false
	}
	return c, true
}

func mulOK(a, b int64) (int64, bool) {
	if a < 0 || b < 0 {
		return 0, false
	}
	if a != 0 && b > math.MaxInt64/a {
		return 0, false
	}
	return a * b, true
}
