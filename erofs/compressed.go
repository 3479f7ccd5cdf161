package erofs

import (
	"errors"
	"sort"
	"sync"

	"github.com/erofs-blockd/erofs-blockd/erofs/decompress"
	"github.com/erofs-blockd/erofs-blockd/erofs/zmap"
)

const zmapReady = true

// zreader reads compressed inodes through packages zmap and decompress.
type zreader struct {
	img *Image
	ino *Inode
	src *source
	ext []zmap.Extent

	mu     sync.Mutex
	cache  []byte // decoded bytes of extent cacheI
	cacheI int
}

func (img *Image) zparams(ino *Inode) (zmap.Params, *source, error) {
	src, err := img.metaSource(ino.Nid)
	if err != nil {
		return zmap.Params{}, nil, err
	}
	sb := img.SB
	algs := uint16(1) // LZ4 only without COMPR_CFGS
	if sb.HasIncompat(IncompatComprCfgs) {
		algs = sb.ComprAlgs
	}
	return zmap.Params{
		Meta:         src.r,
		MetaSize:     src.size,
		HeaderOff:    (ino.DataOff + 7) &^ 7,
		Compact:      ino.Layout == LayoutCompressedCompact,
		Size:         ino.Size,
		BlkSzBits:    img.bits,
		BigPcluster:  sb.HasIncompat(IncompatComprCfgs),
		ZeroPadding:  sb.HasIncompat(IncompatZeroPadding),
		Ztailpacking: sb.HasIncompat(IncompatZTailpacking),
		Fragments:    sb.HasIncompat(IncompatFragments),
		Is48Bit:      sb.HasIncompat(Incompat48Bit),
		Algs:         algs,
	}, src, nil
}

// zmapErr converts a zmap error to a FormatError in the inode's source.
func zmapErr(err error, src *source) error {
	var ze *zmap.Error
	if errors.As(err, &ze) {
		fe := &FormatError{Off: ze.Off, Rule: "compressed index: " + ze.Rule, InMetabox: src.metabox}
		if ze.Unsupported {
			fe.Err = ErrUnsupported
		}
		return fe
	}
	return &FormatError{Off: -1, Rule: "compressed index", Err: err, InMetabox: src.metabox}
}

func (img *Image) zextents(ino *Inode) ([]zmap.Extent, *source, error) {
	p, src, err := img.zparams(ino)
	if err != nil {
		return nil, nil, err
	}
	ext, err := zmap.Map(p)
	if err != nil {
		return nil, nil, zmapErr(err, src)
	}
	return ext, src, nil
}

func (img *Image) newZReader(ino *Inode) (*zreader, error) {
	ext, src, err := img.zextents(ino)
	if err != nil {
		return nil, err
	}
	return &zreader{img: img, ino: ino, src: src, ext: ext, cacheI: -1}, nil
}

func (img *Image) compressedRanges(ino *Inode) ([]Range, error) {
	ext, src, err := img.zextents(ino)
	if err != nil {
		return nil, err
	}
	out := make([]Range, 0, len(ext))
	for _, e := range ext {
		r := Range{Logical: e.LStart, Length: e.LLen, Phys: e.PStart, PhysLen: e.PLen, Alg: int(e.Alg), Compressed: e.Compressed()}
		switch e.Kind {
		case zmap.Blocks:
			r.Kind = KindPcluster
		case zmap.Inline:
			r.Kind, r.InMetabox = KindInline, src.metabox
		case zmap.Fragment:
			r.Kind = KindFragment
		case zmap.Hole:
			r.Kind, r.Phys = KindHole, -1
		}
		if n := len(out); n > 0 && r.Kind == KindHole && out[n-1].Kind == KindHole && out[n-1].Logical+out[n-1].Length == r.Logical {
			out[n-1].Length += r.Length
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

func (img *Image) packedFile() (*File, error) {
	if img.packed == nil {
		return nil, ferr(SuperblockOffset+0x60, "fragment without packed inode", img.SB.PackedNid)
	}
	return img.OpenFile(img.packed)
}

// raw reads the raw bytes of extent e (Blocks/Inline).
func (z *zreader) raw(e zmap.Extent) ([]byte, error) {
	if e.PLen < 0 || e.PLen > decompress.MaxPclusterSize {
		return nil, unsup(e.PStart, "pcluster too large", e.PLen)
	}
	if e.Kind == zmap.Inline {
		return z.src.read(e.PStart, int(e.PLen), "inline pcluster")
	}
	b := make([]byte, e.PLen)
	if err := z.img.ReadPhys(0, e.PStart, b); err != nil {
		return nil, err
	}
	return b, nil
}

func (z *zreader) readAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		i := sort.Search(len(z.ext), func(i int) bool { return z.ext[i].LStart+z.ext[i].LLen > pos })
		if i == len(z.ext) || z.ext[i].LStart > pos {
			return done, ferr(z.ino.Off, "compressed extents do not cover offset", pos)
		}
		e := z.ext[i]
		in := pos - e.LStart
		n := int(min(int64(len(p)-done), e.LLen-in))
		q := p[done : done+n]
		switch e.Kind {
		case zmap.Hole:
			clear(q)
		case zmap.Fragment:
			// The packed and metabox inodes must not use fragments: that
			// would make reads recurse (possibly forever).
			sb := z.img.SB
			if (sb.HasIncompat(IncompatFragments) && z.ino.Nid == sb.PackedNid) ||
				(sb.HasIncompat(IncompatMetabox) && z.ino.Nid == sb.MetaboxNid) {
				return done, ferr(z.ino.Off, "fragment in packed or metabox inode", z.ino.Nid)
			}
			pf, err := z.img.packedFile()
			if err != nil {
				return done, err
			}
			fo, ok := addOK(e.PStart, in)
			if !ok || fo+int64(n) > pf.Size() {
				return done, ferr(z.ino.Off, "fragment beyond packed inode", e.PStart)
			}
			if _, err := pf.ReadAt(q, fo); err != nil {
				return done, err
			}
		default:
			if err := z.decodeCached(i, e, q, in); err != nil {
				return done, err
			}
		}
		done += n
	}
	return done, nil
}

func (z *zreader) decodeCached(i int, e zmap.Extent, dst []byte, in int64) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.cacheI != i {
		if e.LLen > decompress.MaxDecodedSize {
			return unsup(e.PStart, "extent too large", e.LLen)
		}
		raw, err := z.raw(e)
		if err != nil {
			return err
		}
		buf := make([]byte, e.LLen)
		if err := zmap.Decode(e, raw, buf, 0, z.img.SB.HasIncompat(IncompatZeroPadding), z.img.bits); err != nil {
			fe := &FormatError{Off: e.PStart, Rule: "decompress pcluster", Err: err}
			if errors.Is(err, decompress.ErrUnsupported) {
				fe.Err = errors.Join(ErrUnsupported, err)
			}
			return fe
		}
		z.cache, z.cacheI = buf, i
	}
	copy(dst, z.cache[in:])
	return nil
}
