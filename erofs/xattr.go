package erofs

import (
	"encoding/binary"
	"fmt"
)

// Xattr is one extended attribute.
type Xattr struct {
	Name     string // full name, e.g. "user.comment"
	Value    []byte
	Index    uint8  // raw e_name_index (bit 7: long prefix)
	Suffix   string // e_name (without prefix)
	Shared   bool   // from the shared pool
	SharedID uint32 // shared id when Shared
	Off      int64  // entry offset in its source
}

type xattrPrefix struct {
	base  uint8
	infix string
	off   int64
}

var shortPrefixes = map[uint8]string{
	1: "user.",
	2: "system.posix_acl_access",
	3: "system.posix_acl_default",
	4: "trusted.",
	5: "lustre.",
	6: "security.",
}

func (img *Image) loadPrefixes() error {
	sb := img.SB
	n := int(sb.XattrPrefixCnt)
	if n == 0 {
		return nil
	}
	var src *source
	switch {
	case sb.HasCompat(CompatPlainXattrPfx):
		src = &img.prim
	case sb.HasIncompat(IncompatMetabox):
		src = img.metabox
	case img.packed != nil:
		f, err := img.OpenFile(img.packed)
		if err != nil {
			return fmt.Errorf("xattr prefixes in packed inode: %w", err)
		}
		src = &source{r: f, size: img.packed.Size}
	default:
		src = &img.prim
	}
	pos := int64(sb.XattrPrefixOff) * 4
	for i := 0; i < n; i++ {
		h, err := src.read(pos, 3, "xattr prefix")
		if err != nil {
			return err
		}
		l := int(binary.LittleEndian.Uint16(h))
		if l == 0 {
			l = 65536
		}
		if l < 1 || l > 256 {
			return &FormatError{Off: pos, Rule: "xattr long prefix length out of range", Val: l, InMetabox: src.metabox}
		}
		b, err := src.read(pos+2, l, "xattr prefix")
		if err != nil {
			return err
		}
		img.prefixes = append(img.prefixes, xattrPrefix{base: b[0], infix: string(b[1:]), off: pos})
		pos = (pos + 2 + int64(l) + 3) &^ 3
	}
	return nil
}

// XattrPrefixes returns the long prefixes (full form, short prefix included).
func (img *Image) XattrPrefixes() []string {
	var out []string
	for _, p := range img.prefixes {
		out = append(out, shortPrefixes[p.base]+p.infix)
	}
	return out
}

// parseXattr decodes one entry at pos of src; limit is the end of the
// region it must fit in. It returns the entry and its padded size.
func (img *Image) parseXattr(src *source, pos, limit int64) (*Xattr, int64, error) {
	if limit-pos < 4 {
		return nil, 0, &FormatError{Off: pos, Rule: "xattr entry header beyond ibody", Val: limit - pos, InMetabox: src.metabox}
	}
	h, err := src.read(pos, 4, "xattr entry")
	if err != nil {
		return nil, 0, err
	}
	nl, idx, vs := int64(h[0]), h[1], int64(binary.LittleEndian.Uint16(h[2:]))
	size := (4 + nl + vs + 3) &^ 3
	if 4+nl+vs > limit-pos {
		return nil, 0, &FormatError{Off: pos, Rule: "xattr entry beyond ibody", Val: 4 + nl + vs, InMetabox: src.metabox}
	}
	b, err := src.read(pos+4, int(nl+vs), "xattr entry")
	if err != nil {
		return nil, 0, err
	}
	x := &Xattr{Index: idx, Suffix: string(b[:nl]), Value: b[nl:], Off: pos}
	if idx&0x80 != 0 {
		pi := int(idx & 0x7F)
		if pi >= len(img.prefixes) {
			return nil, 0, &FormatError{Off: pos + 1, Rule: "xattr long prefix index beyond prefix count", Val: pi, InMetabox: src.metabox}
		}
		// A long prefix whose base index names no namespace (e.g. the
		// "erofs.fingerprint.v1" digest of --xattr-inode-digest) is
		// skipped by the kernel's listxattr: it has no Name either.
		p := img.prefixes[pi]
		if sp, ok := shortPrefixes[p.base]; ok {
			x.Name = sp + p.infix + x.Suffix
		}
	} else if sp, ok := shortPrefixes[idx]; ok {
		x.Name = sp + x.Suffix
	}
	return x, size, nil
}

// Xattrs returns ino's extended attributes: inline ones first, then shared
// ones, in on-disk order. Entries with index 0, an unknown short index or
// a long prefix over an unknown base index (which the kernel skips) are
// returned with an empty Name.
func (img *Image) Xattrs(ino *Inode) ([]Xattr, error) {
	xs, err := img.xattrs(ino)
	if err != nil {
		return nil, withNid(err, ino.Nid)
	}
	return xs, nil
}

func (img *Image) xattrs(ino *Inode) ([]Xattr, error) {
	if ino.XattrSize == 0 {
		return nil, nil
	}
	src, err := img.metaSource(ino.Nid)
	if err != nil {
		return nil, err
	}
	hoff := ino.Off + int64(ino.ISize)
	end := hoff + int64(ino.XattrSize)
	hdr, err := src.read(hoff, 12, "xattr ibody header")
	if err != nil {
		return nil, err
	}
	shared := int(hdr[4])
	if 12+4*shared > ino.XattrSize {
		return nil, &FormatError{Off: hoff + 4, Rule: "xattr shared_count beyond ibody", Val: shared, InMetabox: src.metabox}
	}
	ids, err := src.read(hoff+12, 4*shared, "xattr shared ids")
	if err != nil {
		return nil, err
	}
	var out []Xattr
	for pos := hoff + 12 + 4*int64(shared); pos < end; {
		x, sz, err := img.parseXattr(src, pos, end)
		if err != nil {
			return nil, err
		}
		out = append(out, *x)
		pos += sz
	}
	ssrc := &img.prim
	if img.SB.HasCompat(CompatSharedEaInMetabx) {
		if img.metabox == nil {
			return nil, ferr(SuperblockOffset+8, "shared xattrs in metabox without metabox", nil)
		}
		ssrc = img.metabox
	}
	// xattr_blkaddr is a block address in the primary device or, with
	// SHARED_EA_IN_METABOX, in the metabox data (kernel erofs_pos()).
	base := int64(img.SB.XattrBlkAddr) << img.bits
	for i := 0; i < shared; i++ {
		id := binary.LittleEndian.Uint32(ids[4*i:])
		pos := base + int64(id)*4
		x, _, err := img.parseXattr(ssrc, pos, ssrc.size)
		if err != nil {
			return nil, err
		}
		x.Shared, x.SharedID = true, id
		out = append(out, *x)
	}
	return out, nil
}

// Fingerprint returns the ishare fingerprint xattr value of ino (the raw
// bytes, typically "sha256:" + 32 binary bytes), or ok=false when the image
// has no ISHARE_XATTRS feature or the inode has no fingerprint.
func (img *Image) Fingerprint(ino *Inode) (val []byte, ok bool, err error) {
	if !img.SB.HasCompat(CompatIshareXattrs) {
		return nil, false, nil
	}
	xs, err := img.Xattrs(ino)
	if err != nil {
		return nil, false, err
	}
	want := 0x80 | img.SB.IshareXattrPfx
	for _, x := range xs {
		if x.Index == want && x.Suffix == "" {
			return x.Value, true, nil
		}
	}
	return nil, false, nil
}
