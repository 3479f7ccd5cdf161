package verify

import (
	"errors"
	"fmt"
	"math"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

func sprintf(format string, a ...any) string { return fmt.Sprintf(format, a...) }

func hasData(ino *erofs.Inode) bool {
	switch ino.Mode & erofs.S_IFMT {
	case erofs.S_IFREG, erofs.S_IFDIR, erofs.S_IFLNK:
		return true
	}
	return false
}

// checkInode checks one newly reached inode: header, xattrs, data ranges
// and (Options.Content) its content.
func (c *checker) checkInode(ino *erofs.Inode, path *pathNode) {
	c.rep.Inodes++
	switch ino.Mode & erofs.S_IFMT {
	case erofs.S_IFDIR:
		c.rep.Dirs++
	case erofs.S_IFREG:
		c.rep.Files++
	case erofs.S_IFLNK:
		c.rep.Symlinks++
	default:
		c.rep.Specials++
	}
	sb := c.sb
	if ino.Extended && ino.Nb != 0 && !sb.HasIncompat(erofs.Incompat48Bit) && hasData(ino) {
		c.addf(path, ino.Nid, ino.Off+6, RuleStartHi, "extended inode i_nb = %#x without the 48BIT feature", ino.Nb)
	}
	if hasData(ino) {
		// fs/erofs (6.12, 6.18) does not check CHUNKED_FILE when reading a
		// chunk-based inode and fsck.erofs 1.9 accepts it; erofs-utils 1.9
		// rebuild mode and --tar=i write such images. Only a warning.
		if ino.Layout == erofs.LayoutChunkBased && !sb.HasIncompat(erofs.IncompatChunkedFile) {
			c.warnf(path, ino.Nid, ino.Off, RuleInodeLayout, "chunk-based inode without the CHUNKED_FILE feature (accepted by the kernel and fsck.erofs)")
		}
		if ino.Layout == erofs.LayoutChunkBased && ino.ChunkFormat&erofs.ChunkFormat48Bit != 0 && !sb.HasIncompat(erofs.Incompat48Bit) {
			c.addf(path, ino.Nid, ino.Off+0x10, RuleChunkFormat, "48-bit chunk format without the 48BIT feature")
		}
	}
	c.checkXattrs(ino, path)
	if !hasData(ino) {
		return
	}
	n := c.nodes[ino.Nid]
	if n == nil {
		n = &node{ino: ino, path: path}
	}
	rs, ok := c.rangesOf(n)
	if !ok {
		return
	}
	switch {
	case ino.IsSymlink():
		c.checkSymlink(ino, path)
	case ino.IsReg() && c.opt.Content:
		c.jobs <- contentJob{ino: ino, path: path, rs: rs}
	}
	if !ino.IsDir() {
		n.ranges = nil // keep ranges only for directories (read next)
	}
}

// rangesOf returns (and caches) the checked data ranges of n.ino; ok is
// false when they could not be decoded or broke a rule (already reported).
func (c *checker) rangesOf(n *node) ([]erofs.Range, bool) {
	if n.rangesDone {
		return n.ranges, n.rangesOK
	}
	n.rangesDone = true
	ino := n.ino
	rs, err := c.img.DataRanges(ino)
	if err != nil {
		if !c.refineRangeErr(ino, n.path, err) {
			c.addErr(n.path, ino.Nid, ino.Off, RuleDataDecode, err)
		}
		return nil, false
	}
	n.ranges, n.rangesOK = rs, c.checkRanges(ino, n.path, rs)
	return n.ranges, n.rangesOK
}

func (c *checker) checkSymlink(ino *erofs.Inode, path *pathNode) {
	if ino.Size == 0 || ino.Size > 4095 {
		c.addf(path, ino.Nid, ino.Off+8, RuleSymlink, "symlink target of %d bytes (want 1..4095)", ino.Size)
		return
	}
	if _, err := c.img.Readlink(ino); err != nil {
		c.addErr(path, ino.Nid, ino.Off, RuleSymlink, err)
	}
}

// checkSpecial checks the packed and metabox inodes.
func (c *checker) checkSpecial() {
	sb := c.sb
	check := func(name string, nid uint64) {
		p := &pathNode{parent: &pathNode{}, name: name}
		ino, err := c.img.Inode(nid)
		if err != nil {
			c.addErr(p, nid, erofs.SuperblockOffset, RuleSpecialInode, err)
			return
		}
		if !ino.IsReg() {
			c.addf(p, nid, ino.Off+4, RuleSpecialInode, "%s inode is a %s, not a regular file", name, ino.TypeName())
			return
		}
		c.special++
		n := &node{ino: ino, path: p}
		c.rangesOf(n)
		if name == "<packed>" {
			c.packedSize = ino.Size
		}
	}
	c.packedSize = -1
	if sb.HasIncompat(erofs.IncompatMetabox) {
		check("<metabox>", sb.MetaboxNid)
	}
	if sb.HasIncompat(erofs.IncompatFragments) && sb.PackedNid != 0 {
		check("<packed>", sb.PackedNid)
	}
}

// refineRangeErr turns the decoder's "data beyond end of device N" (which
// DataRanges reports for the first bad range) into the verifier's finer
// rules (straddle, slot, device) by re-checking that range. It returns
// false if nothing was reported.
func (c *checker) refineRangeErr(ino *erofs.Inode, path *pathNode, err error) bool {
	var fe *erofs.FormatError
	if !errors.As(err, &fe) {
		return false
	}
	var dev int
	if _, e := fmt.Sscanf(fe.Rule, "data beyond end of device %d", &dev); e != nil {
		return false
	}
	n, ok := fe.Val.(int64)
	if !ok || n < 0 || fe.Off < 0 || dev < 0 || dev > len(c.devs) {
		return false
	}
	r := erofs.Range{Device: dev, Phys: fe.Off, Length: n, PhysLen: n, Kind: erofs.KindChunk}
	if dev == 0 {
		r.Kind = erofs.KindFlat
	}
	if addSat(r.Phys, roundUp(n, c.bs)) == math.MaxInt64 {
		return false
	}
	before := c.problemCount()
	c.checkPhys(ino, path, r, n, roundUp(n, c.bs))
	return c.problemCount() > before
}
