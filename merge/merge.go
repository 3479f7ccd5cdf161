// Package merge builds a metadata-only EROFS index over several layers,
// EROFS images or tar layers (plain, gzip, zstd; tar.go): the overlay of their trees (later layers win, OCI and overlayfs
// whiteouts and opaque directories applied), written with package
// erofs/build. Regular files become chunk-based inodes whose chunk indexes
// point (device_id, block) into the layer that provides the data; the
// device table has one slot per layer, tagged with the layer's UUID (EROFS)
// or its diffID (tar: the sha256 of the uncompressed tar, which is what the
// slot's device serves; gzip:/zstd: sources decompress). An index with a
// tar layer uses 512-byte blocks, and EROFS layers of any block size can be
// mixed in (their block addresses are counted in 512-byte units).
// Layers are only read; a tar layer is read once, as a stream.
//
// Data that is not block-addressable in its layer (inline tails, compressed
// files) is copied into the index, or refused with Options.NoCopy.
//
// API:
//
//	type Layer struct { Name string; R io.ReaderAt; Size int64; DiffID string }
//	func Detect(r io.ReaderAt, size int64) (Kind, error)
//	type Options struct { NoCopy bool; AlignBlocks uint64; Hook func(path string, f *File) error }
//	func Plan(layers []Layer, opt Options) (*build.Image, *Report, error)
//	func Merge(w io.WriterAt, layers []Layer, opt Options) (*Report, error)
//
// Plan returns the tree to write; Options.Hook sees every regular file of
// the result (its layer, inode and content reader) and may add xattrs, the
// place where per-file fingerprints would be computed.
package merge

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/bits"
	"slices"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/erofs/build"
)

// Layer is one input image, lowest first.
type Layer struct {
	Name string // for messages (a file name)
	R    io.ReaderAt
	Size int64
	// DiffID, if set, is the expected sha256 of a tar layer's
	// uncompressed content ("sha256:HEX"); a mismatch is an error.
	DiffID string
	// Digest, if set, is the expected sha256 of a tar layer's bytes as
	// given (compressed); Raw, if set, receives them in order during the
	// one pass (e.g. to record per-chunk digests).
	Digest string
	Raw    io.Writer
}

// Options for Plan and Merge.
type Options struct {
	// NoCopy refuses layers whose files are not block-addressable
	// (inline tails, compressed data) instead of copying their data.
	NoCopy bool
	// AlignBlocks aligns the uniaddr of each layer's slot (0: contiguous).
	AlignBlocks uint64
	// AlignBytes, if set, does the same in bytes (a multiple of the
	// index's block size, which depends on the layers).
	AlignBytes int64
	// Hook, if set, is called for every regular file of the result once
	// the overlay is complete (e.g. to add fingerprint xattrs).
	Hook func(path string, f *File) error
}

// File is a regular file of the merged tree, as passed to Options.Hook.
type File struct {
	Layer int          // index into the layers
	Inode *build.Inode // the inode to be written; Xattrs may be changed
	Src   *erofs.Inode // the inode in its layer
	Data  io.ReaderAt  // the file's content (Inode.Size bytes)

	copied int64 // bytes copied into the index
	how    string
	seen   bool
}

// Report summarizes a merge.
type Report struct {
	Layers      int
	Files       int   // regular files in the result
	Referenced  int   // regular files whose data stays in the layers
	Copied      int   // regular files whose data (or tail) was copied
	CopiedBytes int64 // bytes copied into the index
	Whiteouts   int   // whiteouts and opaque directories applied
	Stats       *build.Stats
	// Info has one entry per layer: its kind, and for tar layers the
	// diffID, tar size and compressed-stream index.
	Info []LayerInfo
}

// ErrNotAddressable is wrapped by refusals under Options.NoCopy.
var ErrNotAddressable = errors.New("data is not block-addressable in its layer")

// maxDepth bounds directory nesting in layers.
const maxDepth = 1024

// node is a path of the merged tree.
type node struct {
	ino   *build.Inode
	kids  map[string]*node // directories
	file  *File            // regular files
	isDir bool
}

type layerCtx struct {
	idx  int
	name string
	img  *erofs.Image
	// nids maps a layer's non-directory nids to their merged inode (hard
	// links stay links).
	nids map[uint64]*node
	dirs map[uint64]bool // directory nids already walked (cycles)
}

type merger struct {
	opt    Options
	layers []*layerCtx
	root   *node
	rep    Report
	bs     int64 // block size of the index
}

// Merge plans the index over layers and writes it to w.
func Merge(w io.WriterAt, layers []Layer, opt Options) (*Report, error) {
	img, rep, err := Plan(layers, opt)
	if err != nil {
		return nil, err
	}
	st, err := build.Write(w, img)
	if err != nil {
		return nil, err
	}
	rep.Stats = st
	return rep, nil
}

// Plan reads the layers and returns the merged tree and device table.
func Plan(layers []Layer, opt Options) (*build.Image, *Report, error) {
	if len(layers) == 0 {
		return nil, nil, errors.New("merge: no layers")
	}
	if len(layers) > 0xFFFE {
		return nil, nil, fmt.Errorf("merge: %d layers, at most %d", len(layers), 0xFFFE)
	}
	m := &merger{opt: opt, root: &node{isDir: true, kids: map[string]*node{}}, bs: build.BlockSize}
	out := &build.Image{AlignBlocks: opt.AlignBlocks}
	uuidSrc := sha256.New()
	uuidSrc.Write([]byte("erofs-blockd merge"))
	kinds := make([]Kind, len(layers))
	for i, l := range layers {
		k, err := Detect(l.R, l.Size)
		if err != nil {
			return nil, nil, fmt.Errorf("merge: %s: %w", layerName(i, l), err)
		}
		kinds[i] = k
		if k != KindEROFS {
			m.bs = 1 << tarBlockBits
		}
	}
	if m.bs != build.BlockSize {
		out.BlockBits = tarBlockBits
	}
	if opt.AlignBytes > 0 {
		if opt.AlignBytes%m.bs != 0 {
			return nil, nil, fmt.Errorf("merge: alignment %d is not a multiple of the index's block size %d", opt.AlignBytes, m.bs)
		}
		out.AlignBlocks = uint64(opt.AlignBytes / m.bs)
	}
	for i, l := range layers {
		name := layerName(i, l)
		if kinds[i] != KindEROFS {
			tl, err := m.scanTar(i, l, name, kinds[i])
			if err != nil {
				return nil, nil, err
			}
			m.rep.Info = append(m.rep.Info, tl.info)
			out.Devices = append(out.Devices, build.Device{Tag: strings.TrimPrefix(tl.info.DiffID, "sha256:"),
				Blocks: uint64((tl.info.TarSize + m.bs - 1) / m.bs)})
			uuidSrc.Write([]byte(tl.info.DiffID))
			m.overlay(m.root, tl.root)
			continue
		}
		lc, dev, err := m.openLayer(i, l, name)
		if err != nil {
			return nil, nil, err
		}
		m.layers = append(m.layers, lc)
		m.rep.Info = append(m.rep.Info, LayerInfo{Name: name, Kind: KindEROFS})
		out.Devices = append(out.Devices, dev)
		uuidSrc.Write(lc.img.SB.UUID[:])
		if err := m.applyDir(lc, lc.img.Root(), m.root, "/", 0); err != nil {
			return nil, nil, err
		}
	}
	if m.root.ino == nil {
		m.root.ino = &build.Inode{Mode: erofs.S_IFDIR | 0o755}
	}
	// A deterministic UUID: the same layers give the same index.
	copy(out.UUID[:], uuidSrc.Sum(nil)[:16])
	out.UUID[6] = out.UUID[6]&0x0f | 0x50
	out.UUID[8] = out.UUID[8]&0x3f | 0x80
	root, err := m.finish(m.root, "/")
	if err != nil {
		return nil, nil, err
	}
	out.Root = root
	m.rep.Layers = len(layers)
	return out, &m.rep, nil
}

func layerName(i int, l Layer) string {
	if l.Name == "" {
		return fmt.Sprintf("layer %d", i+1)
	}
	return l.Name
}

// openLayer opens one EROFS layer and describes its device slot.
func (m *merger) openLayer(i int, l Layer, name string) (*layerCtx, build.Device, error) {
	img, err := erofs.Open(newSegReader(l.R, l.Size), l.Size)
	if err != nil {
		return nil, build.Device{}, fmt.Errorf("merge: %s: not a usable EROFS image (nor a tar, tar+gzip or tar+zstd layer): %w", name, err)
	}
	if m.bs == build.BlockSize && img.BlockSize() != build.BlockSize {
		return nil, build.Device{}, fmt.Errorf("merge: %s: block size %d, merge needs %d (or a tar layer in the merge: then any)", name, img.BlockSize(), build.BlockSize)
	}
	if n := img.SB.NumDevices(); n > 0 {
		return nil, build.Device{}, fmt.Errorf("merge: %s: has %d extra device(s); merge takes single-device layer images", name, n)
	}
	blocks := uint64((l.Size + m.bs - 1) / m.bs)
	if blocks == 0 || blocks >= 1<<32 {
		return nil, build.Device{}, fmt.Errorf("merge: %s: %d blocks", name, blocks)
	}
	lc := &layerCtx{idx: i, name: name, img: img, nids: map[uint64]*node{}, dirs: map[uint64]bool{}}
	return lc, build.Device{Tag: hex.EncodeToString(img.SB.UUID[:]), Blocks: blocks}, nil
}

func (m *merger) errf(lc *layerCtx, path string, format string, a ...any) error {
	return fmt.Errorf("merge: %s: %s: %s", lc.name, path, fmt.Sprintf(format, a...))
}

func isOpaqueXattr(x erofs.Xattr) bool {
	return (x.Name == "trusted.overlay.opaque" || x.Name == "user.overlay.opaque") && string(x.Value) == "y"
}

// applyDir overlays the layer directory dir onto dst.
func (m *merger) applyDir(lc *layerCtx, dir *erofs.Inode, dst *node, path string, depth int) error {
	if depth > maxDepth {
		return m.errf(lc, path, "directories nested deeper than %d", maxDepth)
	}
	if lc.dirs[dir.Nid] {
		return m.errf(lc, path, "directory inode %d reached twice (cycle or hard-linked directory)", dir.Nid)
	}
	lc.dirs[dir.Nid] = true
	ino, xs, err := m.attrs(lc, dir, path)
	if err != nil {
		return err
	}
	opaque := false
	var kept []build.Xattr
	for _, x := range xs {
		if isOpaqueXattr(x) {
			opaque = true
			continue
		}
		kept = append(kept, build.Xattr{Name: x.Name, Value: x.Value})
	}
	ino.Xattrs = kept
	dst.ino = ino
	ents, err := lc.img.ReadDir(dir)
	if err != nil {
		return m.errf(lc, path, "read directory: %v", err)
	}
	for _, e := range ents {
		if e.Name == ".wh..wh..opq" {
			opaque = true
		}
	}
	if opaque {
		m.rep.Whiteouts++
		dst.kids = map[string]*node{}
	}
	// Whiteouts apply to lower layers only: first remove, then add.
	for _, e := range ents {
		if strings.HasPrefix(e.Name, ".wh.") && e.Name != ".wh..wh..opq" {
			delete(dst.kids, e.Name[4:])
			m.rep.Whiteouts++
		}
	}
	for _, e := range ents {
		if e.Name == "." || e.Name == ".." || strings.HasPrefix(e.Name, ".wh.") {
			continue
		}
		cpath := path + e.Name
		child, err := lc.img.Inode(e.Nid)
		if err != nil {
			return m.errf(lc, cpath, "%v", err)
		}
		if child.Mode&erofs.S_IFMT == erofs.S_IFCHR && child.Rdev == 0 {
			// overlayfs whiteout
			delete(dst.kids, e.Name)
			m.rep.Whiteouts++
			continue
		}
		if child.IsDir() {
			cur := dst.kids[e.Name]
			if cur == nil || !cur.isDir {
				cur = &node{isDir: true, kids: map[string]*node{}}
				dst.kids[e.Name] = cur
			}
			if err := m.applyDir(lc, child, cur, cpath+"/", depth+1); err != nil {
				return err
			}
			continue
		}
		n, err := m.leaf(lc, child, cpath)
		if err != nil {
			return err
		}
		dst.kids[e.Name] = n
	}
	return nil
}

// attrs copies an inode's metadata; xattrs are returned for the caller.
func (m *merger) attrs(lc *layerCtx, src *erofs.Inode, path string) (*build.Inode, []erofs.Xattr, error) {
	ino := &build.Inode{Mode: src.Mode, UID: src.UID, GID: src.GID, Mtime: src.Mtime, MtimeNsec: src.MtimeNsec, Rdev: src.Rdev}
	xs, err := lc.img.Xattrs(src)
	if err != nil {
		return nil, nil, m.errf(lc, path, "xattrs: %v", err)
	}
	var named []erofs.Xattr
	for _, x := range xs {
		if x.Name != "" { // the kernel ignores unknown name indexes too
			named = append(named, x)
		}
	}
	return ino, named, nil
}

// leaf converts a non-directory inode (once per nid: hard links).
func (m *merger) leaf(lc *layerCtx, src *erofs.Inode, path string) (*node, error) {
	if n := lc.nids[src.Nid]; n != nil {
		return n, nil
	}
	ino, xs, err := m.attrs(lc, src, path)
	if err != nil {
		return nil, err
	}
	for _, x := range xs {
		ino.Xattrs = append(ino.Xattrs, build.Xattr{Name: x.Name, Value: x.Value})
	}
	n := &node{ino: ino}
	switch src.Mode & erofs.S_IFMT {
	case erofs.S_IFLNK:
		t, err := lc.img.Readlink(src)
		if err != nil {
			return nil, m.errf(lc, path, "symlink: %v", err)
		}
		if t == "" {
			return nil, m.errf(lc, path, "empty symlink target")
		}
		ino.Target = t
	case erofs.S_IFREG:
		f, err := m.fileData(lc, src, path, ino)
		if err != nil {
			return nil, err
		}
		n.file = f
	}
	lc.nids[src.Nid] = n
	return n, nil
}

// finish turns the merged tree into build inodes, calling the hook.
func (m *merger) finish(n *node, path string) (*build.Inode, error) {
	if !n.isDir {
		if f := n.file; f != nil && !f.seen {
			f.seen = true
			m.rep.Files++
			if f.how != "" {
				m.rep.Copied++
				m.rep.CopiedBytes += f.copied
			} else {
				m.rep.Referenced++
			}
			if m.opt.Hook != nil {
				if err := m.opt.Hook(path, f); err != nil {
					return nil, fmt.Errorf("merge: %s: %w", path, err)
				}
			}
		}
		return n.ino, nil
	}
	n.ino.Entries = n.ino.Entries[:0]
	// Sorted, so the same layers give the same index byte for byte.
	for _, name := range slices.Sorted(maps.Keys(n.kids)) {
		k := n.kids[name]
		c, err := m.finish(k, path+name+map[bool]string{true: "/", false: ""}[k.isDir])
		if err != nil {
			return nil, err
		}
		n.ino.Entries = append(n.ino.Entries, build.Entry{Name: name, Inode: c})
	}
	return n.ino, nil
}

// segment is a piece of a file's data in its layer.
type segment struct {
	logical, length int64
	hole            bool
	phys            int64  // bytes, flat/chunk segments
	data            []byte // copied tail
}

// fileData maps a regular file's data: referenced chunks, or a copy.
func (m *merger) fileData(lc *layerCtx, src *erofs.Inode, path string, ino *build.Inode) (*File, error) {
	ino.Size = src.Size
	f := &File{Layer: lc.idx, Inode: ino, Src: src}
	if src.Size == 0 {
		f.Data = bytes.NewReader(nil)
		return f, nil
	}
	rd, err := lc.img.OpenFile(src)
	if err != nil {
		return nil, m.errf(lc, path, "%v", err)
	}
	f.Data = io.NewSectionReader(rd, 0, src.Size)
	rs, err := lc.img.DataRanges(src)
	if err != nil {
		return nil, m.errf(lc, path, "data: %v", err)
	}
	if len(rs) == 0 {
		return nil, m.errf(lc, path, "no data ranges for %d bytes", src.Size)
	}
	bs := m.bs
	var segs []segment
	var why string
	next := int64(0)
	for i, r := range rs {
		if r.Logical != next || r.Length <= 0 {
			return nil, m.errf(lc, path, "data ranges do not tile the file at %d", next)
		}
		next = r.Logical + r.Length
		switch {
		case r.Kind == erofs.KindHole:
			segs = append(segs, segment{logical: r.Logical, length: r.Length, hole: true})
		case (r.Kind == erofs.KindFlat || r.Kind == erofs.KindChunk) && r.Device == 0 && r.Phys%bs == 0:
			segs = append(segs, segment{logical: r.Logical, length: r.Length, phys: r.Phys})
		case r.Kind == erofs.KindInline && !r.Compressed && i == len(rs)-1 && r.Logical%bs == 0 && r.Length <= lc.img.BlockSize():
			why = "an inline tail"
			segs = append(segs, segment{logical: r.Logical, length: r.Length, data: []byte{}})
		default:
			why = "compressed data"
			if !r.Compressed && r.Kind != erofs.KindPcluster && r.Kind != erofs.KindFragment {
				why = fmt.Sprintf("data that is not block-aligned (%s)", r.Kind)
			}
			segs = nil
		}
		if segs == nil {
			break
		}
	}
	if segs != nil && next != src.Size {
		return nil, m.errf(lc, path, "data ranges end at %d, size %d", next, src.Size)
	}
	if why != "" {
		if m.opt.NoCopy {
			return nil, fmt.Errorf("merge: %s: %s: %s (layout %s) cannot be referenced in place; rebuild the layer with mkfs.erofs -Enoinline_data and without compression, or merge without --no-copy: %w",
				lc.name, path, why, src.Layout, ErrNotAddressable)
		}
		f.how = why
	}
	if segs == nil || src.Size <= bs && why != "" {
		// Copy the whole file (compressed, or small enough to inline).
		ino.Data = f.Data
		f.copied = src.Size
		return f, nil
	}
	if last := &segs[len(segs)-1]; last.data != nil {
		last.data = make([]byte, last.length)
		if _, err := rd.ReadAt(last.data, last.logical); err != nil && !(err == io.EOF) {
			return nil, m.errf(lc, path, "read inline tail: %v", err)
		}
		f.copied = last.length
	}
	ino.ChunkBits, ino.Chunks = chunks(segs, src.Size, uint16(lc.idx+1), bs)
	return f, nil
}

// chunks picks the largest chunk size at which every segment starts on a
// chunk boundary and returns the chunk list.
func chunks(segs []segment, size int64, dev uint16, bs int64) (uint8, []build.Chunk) {
	nblk := uint64((size + bs - 1) / bs)
	cb := uint8(bits.Len64(nblk - 1)) // smallest chunk covering the file
	for _, s := range segs[1:] {
		cb = min(cb, uint8(bits.TrailingZeros64(uint64(s.logical/bs))))
	}
	cb = min(cb, 31)
	cs := int64(bs) << cb
	n := (size + cs - 1) / cs
	out := make([]build.Chunk, n)
	si := 0
	for i := range out {
		lo := int64(i) * cs
		for segs[si].logical+segs[si].length <= lo {
			si++
		}
		s := segs[si]
		switch {
		case s.hole:
			out[i] = build.Chunk{Hole: true}
		case s.data != nil:
			d := s.data[lo-s.logical:]
			out[i] = build.Chunk{Data: d[:min(int64(len(d)), cs)]}
		default:
			out[i] = build.Chunk{Device: dev, Block: uint64((s.phys + lo - s.logical) / bs)}
		}
	}
	return cb, out
}
