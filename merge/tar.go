package merge

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/erofs/build"
	"github.com/erofs-blockd/erofs-blockd/gzran"
	"github.com/erofs-blockd/erofs-blockd/tarscan"
	"github.com/erofs-blockd/erofs-blockd/zstdseek"
)

// This file reads tar layers (plain, gzip, zstd) in one streaming pass:
// the decompressor records its random-access index, a hash of the
// uncompressed stream gives the diffID, and package tarscan reports every
// entry with the offset of its data in the uncompressed tar. Regular files
// become chunk-based inodes pointing at those offsets (512-byte blocks).

// Kind is what a layer is, recognised from its content.
type Kind string

const (
	KindEROFS   Kind = "erofs"
	KindTar     Kind = "tar"
	KindTarGzip Kind = "tar+gzip"
	KindTarZstd Kind = "tar+zstd"
)

// tarBlockBits: indexes over tar layers use 512-byte blocks (tar's unit).
const tarBlockBits = 9

// maxCopyBytes bounds sparse-file data held in memory to be copied into
// the index when the layer has no random access (a single-frame zstd).
const maxCopyBytes = 256 << 20

// Detect tells a layer's kind from its first bytes: gzip, zstd (a frame
// or a skippable frame), tar (ustar magic, or a v7 header with a valid
// checksum), else EROFS, whose parser then says precisely what is wrong.
func Detect(r io.ReaderAt, size int64) (Kind, error) {
	head := make([]byte, max(0, min(size, 1024+4)))
	if n, err := r.ReadAt(head, 0); n < len(head) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return "", fmt.Errorf("read the first %d bytes: %w", len(head), err)
	}
	switch {
	case len(head) >= 2 && head[0] == 0x1f && head[1] == 0x8b:
		return KindTarGzip, nil
	case len(head) >= 4 && (bytes.Equal(head[:4], []byte{0x28, 0xb5, 0x2f, 0xfd}) ||
		head[0]&0xf0 == 0x50 && bytes.Equal(head[1:4], []byte{0x2a, 0x4d, 0x18})):
		return KindTarZstd, nil
	case len(head) >= 1024+4 && le32(head[1024:]) == erofs.SuperMagic:
		return KindEROFS, nil
	case len(head) >= 512 && (bytes.Equal(head[257:262], []byte("ustar")) || tarChecksumOK(head[:512])):
		return KindTar, nil
	}
	return KindEROFS, nil
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// tarChecksumOK reports whether a 512-byte block is a tar header by its
// checksum (v7 archives have no magic).
func tarChecksumOK(h []byte) bool {
	field := bytes.TrimRight(bytes.TrimLeft(h[148:156], " \x00"), " \x00")
	if len(field) == 0 {
		return false
	}
	var want int64
	for _, c := range field {
		if c < '0' || c > '7' {
			return false
		}
		want = want*8 + int64(c-'0')
	}
	var sum int64
	for i, c := range h {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int64(c)
	}
	return sum == want && sum != 8*' '
}

// LayerInfo describes one layer of a merge.
type LayerInfo struct {
	Name string
	Kind Kind
	// Tar layers: the diffID (sha256 of the uncompressed tar), its size,
	// and the index that gives random access to the compressed layer.
	DiffID  string
	TarSize int64
	Gzip    *gzran.Index
	Zstd    *zstdseek.Index
}

// tarLayer is a tar layer after its pass.
type tarLayer struct {
	idx  int
	name string
	info LayerInfo
	root *tnode
	// ra reads the uncompressed tar at random (nil: not possible, e.g. a
	// single-frame zstd layer).
	ra io.ReaderAt
}

// tnode is a path of one tar layer's own tree.
type tnode struct {
	isDir bool
	leaf  *node        // non-directories (shared by hard links)
	ino   *build.Inode // directories: nil if only implied by a path
	kids  map[string]*tnode
	// opaque and whiteouts hide lower layers' entries of this directory.
	opaque    bool
	whiteouts map[string]bool
}

func newTdir() *tnode {
	return &tnode{isDir: true, kids: map[string]*tnode{}, whiteouts: map[string]bool{}}
}

// hashCounter hashes and counts the uncompressed stream.
type hashCounter struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (c *hashCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

// scanTar reads a tar layer once and builds its tree.
func (m *merger) scanTar(i int, l Layer, name string, kind Kind) (*tarLayer, error) {
	tl := &tarLayer{idx: i, name: name, root: newTdir(), info: LayerInfo{Name: name, Kind: kind}}
	var src io.Reader = io.NewSectionReader(l.R, 0, l.Size)
	var rawHash hash.Hash
	var tees []io.Writer
	if l.Raw != nil {
		tees = append(tees, l.Raw)
	}
	if l.Digest != "" {
		rawHash = sha256.New()
		tees = append(tees, rawHash)
	}
	if len(tees) > 0 {
		src = io.TeeReader(src, io.MultiWriter(tees...))
	}
	raw := bufio.NewReaderSize(src, 1<<20)
	var dec io.Reader = raw
	var gz *gzran.Builder
	var zs *zstdseek.Builder
	switch kind {
	case KindTarGzip:
		gz = gzran.NewBuilder(raw, 0)
		dec = gz
	case KindTarZstd:
		zs = zstdseek.NewBuilder(raw)
		dec = zs
	}
	hc := &hashCounter{r: dec, h: sha256.New()}
	tr := tarscan.NewReader(bufio.NewReaderSize(hc, 1<<20))
	// Hard links name an earlier entry of the same layer.
	byPath := map[string]*tnode{}
	copyBudget := int64(maxCopyBytes)
	for {
		e, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("merge: %s: %w", name, err)
		}
		if err := m.tarEntry(tl, tr, e, byPath, &copyBudget); err != nil {
			return nil, err
		}
	}
	// The rest of the stream (end-of-archive blocks, record padding) is
	// part of the tar the kernel reads and of its diffID; reading to EOF
	// also checks the compressed stream's trailer.
	if _, err := io.Copy(io.Discard, hc); err != nil {
		return nil, fmt.Errorf("merge: %s: after the end of the archive: %w", name, err)
	}
	if _, err := io.Copy(io.Discard, raw); err != nil { // the raw tail, for Raw and Digest
		return nil, fmt.Errorf("merge: %s: %w", name, err)
	}
	if rawHash != nil {
		if got := "sha256:" + hex.EncodeToString(rawHash.Sum(nil)); got != l.Digest {
			return nil, fmt.Errorf("merge: %s: content is %s, not its digest %s", name, got, l.Digest)
		}
	}
	tl.info.TarSize = hc.n
	tl.info.DiffID = "sha256:" + hex.EncodeToString(hc.h.Sum(nil))
	if l.DiffID != "" && l.DiffID != tl.info.DiffID {
		return nil, fmt.Errorf("merge: %s: uncompressed content is %s, expected diffID %s", name, tl.info.DiffID, l.DiffID)
	}
	switch kind {
	case KindTar:
		tl.ra = l.R
	case KindTarGzip:
		ix, err := gz.Index()
		if err != nil {
			return nil, fmt.Errorf("merge: %s: gzip index: %w", name, err)
		}
		tl.info.Gzip = ix
		if tl.ra, err = gzran.NewReader(l.R, l.Size, ix, gzran.Options{}); err != nil {
			return nil, fmt.Errorf("merge: %s: gzip reader: %w", name, err)
		}
	case KindTarZstd:
		ix, err := zs.Index()
		if err != nil {
			return nil, fmt.Errorf("merge: %s: zstd index: %w", name, err)
		}
		tl.info.Zstd = ix
		if r, err := zstdseek.NewReader(l.R, ix, zstdseek.Options{}); err == nil {
			tl.ra = r
		}
	}
	if tl.info.TarSize == 0 {
		return nil, fmt.Errorf("merge: %s: empty tar", name)
	}
	return tl, nil
}

// lookupDir walks (creating implied directories) to the directory that
// holds path's last component.
func (tl *tarLayer) lookupDir(path string) (*tnode, string, error) {
	dir := tl.root
	comps := strings.Split(path, "/")
	if len(comps) > maxDepth {
		return nil, "", fmt.Errorf("merge: %s: %s: nested deeper than %d", tl.name, path, maxDepth)
	}
	for _, c := range comps[:len(comps)-1] {
		k := dir.kids[c]
		if k == nil || !k.isDir {
			// A file in the way is replaced, as tar extraction does.
			k = newTdir()
			dir.kids[c] = k
		}
		dir = k
	}
	return dir, comps[len(comps)-1], nil
}

func validName(s string) bool {
	return s != "" && s != "." && s != ".." && len(s) <= 255 && !strings.ContainsRune(s, 0)
}

// tarEntry adds one entry to the layer's tree.
func (m *merger) tarEntry(tl *tarLayer, tr *tarscan.Reader, e *tarscan.Entry, byPath map[string]*tnode, budget *int64) error {
	errf := func(format string, a ...any) error {
		return fmt.Errorf("merge: %s: %s (tar offset %d): %s", tl.name, e.Name, e.Header, fmt.Sprintf(format, a...))
	}
	if e.UID < 0 || e.UID > math.MaxUint32 || e.GID < 0 || e.GID > math.MaxUint32 {
		return errf("owner %d:%d does not fit 32 bits", e.UID, e.GID)
	}
	ino := &build.Inode{Mode: e.Mode & 0o7777, UID: uint32(e.UID), GID: uint32(e.GID), Mtime: e.ModTime, MtimeNsec: e.ModTimeNsec}
	for _, x := range e.Xattrs {
		ino.Xattrs = append(ino.Xattrs, build.Xattr{Name: x.Name, Value: x.Value})
	}
	if e.Name == "." {
		if e.Type != '5' {
			return errf("the root is not a directory")
		}
		ino.Mode |= erofs.S_IFDIR
		tl.root.ino = m.dirAttrs(tl.root, ino)
		return nil
	}
	dir, base, err := tl.lookupDir(e.Name)
	if err != nil {
		return err
	}
	if !validName(base) {
		return errf("invalid name %q", base)
	}
	if strings.HasPrefix(base, ".wh.") {
		if base == ".wh..wh..opq" {
			dir.opaque = true
		} else if w := base[4:]; validName(w) {
			dir.whiteouts[w] = true
		} else {
			return errf("whiteout of an invalid name")
		}
		return nil
	}
	var n *tnode
	switch e.Type {
	case '5':
		ino.Mode |= erofs.S_IFDIR
		if cur := dir.kids[base]; cur != nil && cur.isDir {
			cur.ino = m.dirAttrs(cur, ino) // a directory named again: new attributes, same children
			byPath[e.Name] = cur
			return nil
		}
		n = newTdir()
		n.ino = m.dirAttrs(n, ino)
	case '1':
		t := byPath[e.Linkname]
		if t == nil && !tl.hides(e.Linkname) {
			// A link to a lower layer's file, as extraction onto the
			// lower layers makes it (one inode, two names).
			if lower := m.lookup(e.Linkname); lower != nil && !lower.isDir {
				t = &tnode{leaf: lower}
			}
		}
		if t == nil || t.isDir {
			return errf("hard link to %q, which is neither an earlier non-directory entry of this layer nor a file of a lower layer", e.Linkname)
		}
		n = t
	case '2':
		if e.Linkname == "" || len(e.Linkname) > 4095 {
			return errf("symlink target of %d bytes", len(e.Linkname))
		}
		// Linux symlinks are always 0777 (what extraction gives,
		// whatever the header says).
		ino.Mode = erofs.S_IFLNK | 0o777
		ino.Target = e.Linkname
		n = &tnode{leaf: &node{ino: ino}}
	case '3', '4':
		if e.Type == '3' && e.Devmajor == 0 && e.Devminor == 0 {
			// An overlayfs-style whiteout (char 0:0), as in EROFS layers.
			dir.whiteouts[base] = true
			delete(dir.kids, base)
			return nil
		}
		ino.Mode |= map[byte]uint32{'3': erofs.S_IFCHR, '4': erofs.S_IFBLK}[e.Type]
		if e.Devmajor >= 1<<12 || e.Devminor >= 1<<20 {
			return errf("device %d:%d does not fit", e.Devmajor, e.Devminor)
		}
		ino.Rdev = build.Mkdev(e.Devmajor, e.Devminor)
		n = &tnode{leaf: &node{ino: ino}}
	case '6':
		ino.Mode |= erofs.S_IFIFO
		n = &tnode{leaf: &node{ino: ino}}
	case '0':
		ino.Mode |= erofs.S_IFREG
		f, err := m.tarFile(tl, tr, e, ino, budget)
		if err != nil {
			return err
		}
		n = &tnode{leaf: &node{ino: ino, file: f}}
	default:
		return errf("unsupported entry type %q", e.Type)
	}
	dir.kids[base] = n
	byPath[e.Name] = n
	return nil
}

// lookup finds path in the merged tree of the lower layers.
func (m *merger) lookup(path string) *node {
	n := m.root
	for _, c := range strings.Split(path, "/") {
		if n == nil || !n.isDir {
			return nil
		}
		n = n.kids[c]
	}
	return n
}

// hides reports whether this layer's whiteouts or opaque directories so
// far hide path of the lower layers.
func (tl *tarLayer) hides(path string) bool {
	d := tl.root
	comps := strings.Split(path, "/")
	for i, c := range comps {
		if d.opaque || d.whiteouts[c] {
			return true
		}
		if i == len(comps)-1 {
			break
		}
		if d = d.kids[c]; d == nil {
			return false
		}
		if !d.isDir {
			return true // replaced by a non-directory in this layer
		}
	}
	return false
}

// dirAttrs returns the inode for a directory (keeping the opaque xattr out
// of the result: it is applied, like .wh..wh..opq).
func (m *merger) dirAttrs(n *tnode, ino *build.Inode) *build.Inode {
	var kept []build.Xattr
	for _, x := range ino.Xattrs {
		if isOpaqueXattr(erofs.Xattr{Name: x.Name, Value: x.Value}) {
			n.opaque = true
			continue
		}
		kept = append(kept, x)
	}
	ino.Xattrs = kept
	return ino
}

// tarFile maps a regular file's data in the tar: one chunk run at its
// offset, holes for a sparse file's gaps, or a copy when a sparse file's
// runs are not on 512-byte boundaries.
func (m *merger) tarFile(tl *tarLayer, tr *tarscan.Reader, e *tarscan.Entry, ino *build.Inode, budget *int64) (*File, error) {
	ino.Size = e.Size
	f := &File{Layer: tl.idx, Inode: ino}
	if e.Size == 0 {
		f.Data = bytes.NewReader(nil)
		return f, nil
	}
	const bs = 1 << tarBlockBits
	var segs []segment
	aligned := e.Offset%bs == 0
	if e.Sparse == nil {
		segs = []segment{{logical: 0, length: e.Size, phys: e.Offset}}
	} else {
		pos, phys := int64(0), e.Offset
		for _, fr := range e.Sparse {
			if fr.Length == 0 {
				continue
			}
			if fr.Offset < pos || fr.Offset+fr.Length > e.Size {
				return nil, fmt.Errorf("merge: %s: %s: sparse map out of order or beyond the size", tl.name, e.Name)
			}
			if fr.Offset > pos {
				segs = append(segs, segment{logical: pos, length: fr.Offset - pos, hole: true})
			}
			segs = append(segs, segment{logical: fr.Offset, length: fr.Length, phys: phys})
			if fr.Offset%bs != 0 || phys%bs != 0 || (fr.Length%bs != 0 && fr.Offset+fr.Length != e.Size) {
				aligned = false
			}
			phys += fr.Length
			pos = fr.Offset + fr.Length
		}
		if pos < e.Size {
			segs = append(segs, segment{logical: pos, length: e.Size - pos, hole: true})
		}
		if len(segs) == 0 {
			segs = []segment{{logical: 0, length: e.Size, hole: true}}
		}
	}
	f.Data = tl.fileReader(e)
	if aligned {
		ino.ChunkBits, ino.Chunks = chunks(segs, e.Size, uint16(tl.idx+1), bs)
		return f, nil
	}
	why := "a sparse file whose data runs are not on 512-byte boundaries"
	if m.opt.NoCopy {
		return nil, fmt.Errorf("merge: %s: %s: %s cannot be referenced in place; merge without --no-copy: %w", tl.name, e.Name, why, ErrNotAddressable)
	}
	f.how, f.copied = why, e.Size
	if tl.ra != nil {
		ino.Data = f.Data
		return f, nil
	}
	// No random access to this layer: keep the stored runs now.
	if e.DataSize > *budget {
		return nil, fmt.Errorf("merge: %s: %s: %s, and the layer has no random access (one zstd frame): more than %d bytes to copy", tl.name, e.Name, why, maxCopyBytes)
	}
	*budget -= e.DataSize
	packed := make([]byte, e.DataSize)
	if _, err := io.ReadFull(tr, packed); err != nil {
		return nil, fmt.Errorf("merge: %s: %s: read data: %w", tl.name, e.Name, err)
	}
	ino.Data = &sparseReader{r: bytes.NewReader(packed), base: 0, frags: e.Sparse, size: e.Size}
	f.Data = ino.Data
	return f, nil
}

// fileReader reads a file's content from the uncompressed tar.
func (tl *tarLayer) fileReader(e *tarscan.Entry) io.ReaderAt {
	if tl.ra == nil {
		return errReaderAt{fmt.Errorf("%s: %s: the layer has no random access (one zstd frame)", tl.name, e.Name)}
	}
	if e.Sparse == nil {
		return io.NewSectionReader(tl.ra, e.Offset, e.Size)
	}
	return &sparseReader{r: tl.ra, base: e.Offset, frags: e.Sparse, size: e.Size}
}

type errReaderAt struct{ err error }

func (e errReaderAt) ReadAt([]byte, int64) (int, error) { return 0, e.err }

// sparseReader expands a sparse file: frags (logical runs) are stored back
// to back in r from base; everything else reads as zeros.
type sparseReader struct {
	r     io.ReaderAt
	base  int64
	frags []tarscan.Fragment
	size  int64
}

func (s *sparseReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= s.size {
		return 0, io.EOF
	}
	n := len(p)
	if rest := s.size - off; int64(n) > rest {
		n = int(rest)
	}
	clear(p[:n])
	phys := s.base
	for _, fr := range s.frags {
		lo, hi := max(fr.Offset, off), min(fr.Offset+fr.Length, off+int64(n))
		if lo < hi {
			if _, err := s.r.ReadAt(p[lo-off:hi-off], phys+lo-fr.Offset); err != nil && err != io.EOF {
				return 0, err
			}
		}
		phys += fr.Length
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// overlay applies one tar layer's tree onto the merged tree: whiteouts and
// opaque markers hide lower entries, then this layer's entries are added
// (later layers win).
func (m *merger) overlay(dst *node, src *tnode) {
	if src.ino != nil {
		dst.ino = src.ino
	} else if dst.ino == nil {
		dst.ino = &build.Inode{Mode: erofs.S_IFDIR | 0o755}
	}
	if src.opaque {
		m.rep.Whiteouts++
		dst.kids = map[string]*node{}
	}
	for w := range src.whiteouts {
		delete(dst.kids, w)
		m.rep.Whiteouts++
	}
	for name, c := range src.kids {
		if !c.isDir {
			dst.kids[name] = c.leaf
			continue
		}
		cur := dst.kids[name]
		if cur == nil || !cur.isDir {
			cur = &node{isDir: true, kids: map[string]*node{}}
			dst.kids[name] = cur
		}
		m.overlay(cur, c)
	}
}
