package zmap

import (
	"encoding/binary"

	"github.com/erofs-blockd/erofs-blockd/erofs/decompress"
)

// h_advise bits (erofs_fs.h).
const (
	adviseCompacted2B = 0x0001 // COMPACT layout
	adviseExtents     = 0x0001 // FULL layout
	adviseBig1        = 0x0002
	adviseBig2        = 0x0004
	adviseInline      = 0x0008
	adviseInterlaced  = 0x0010
	adviseFragment    = 0x0020
)

// Lcluster types.
const (
	typePlain   = 0
	typeHead1   = 1
	typeNonhead = 2
	typeHead2   = 3
)

const (
	liPartialRef = 1 << 15 // FULL index di_advise (HEAD)
	d0Cblkcnt    = 1 << 11 // first NONHEAD delta[0]

	extPlenPartial = 1 << 27
	extPlenFmtBit  = 28
	extPlenMask    = decompress.MaxPclusterSize<<1 - 1
)

type mapper struct {
	p      *Params
	m      *metaReader
	h      int64 // map header offset
	advise uint16
	algs   [2]uint8
	lcb    uint // logical cluster bits
	bsb    uint // block size bits

	ztail     bool
	idataSize int64
	idataOff  int64
	frag      bool
	fragOff   uint64
	tailHead  int64
}

// lrec is one decoded lcluster index (the kernel's z_erofs_maprecorder).
type lrec struct {
	lcn        int64
	typ        uint8
	clusterofs int64
	pblk       uint64
	d0, d1     uint32
	cblk       uint32
	partial    bool
	next       int64 // offset just past this index (FULL) or its pack (COMPACT)
	pos        int64
}

// Map decodes the whole block map of a compressed inode.
func Map(p Params) ([]Extent, error) {
	if p.BlkSzBits < 9 || p.BlkSzBits > 16 {
		return nil, unsupf(-1, "block size bits %d", p.BlkSzBits)
	}
	if p.Meta == nil || p.MetaSize < 0 {
		return nil, errf(-1, "no metadata reader")
	}
	if p.Size < 0 {
		return nil, errf(-1, "negative i_size %d", p.Size)
	}
	if p.Size == 0 {
		return nil, nil
	}
	if p.HeaderOff < 0 || p.HeaderOff%8 != 0 {
		return nil, errf(p.HeaderOff, "map header offset not 8-byte aligned")
	}
	z := &mapper{p: &p, m: newMetaReader(&p), h: p.HeaderOff, bsb: uint(p.BlkSzBits)}
	hb, err := z.m.bytes(z.h, 8)
	if err != nil {
		return nil, err
	}
	var hdr [8]byte
	copy(hdr[:], hb)
	h64 := binary.LittleEndian.Uint64(hdr[:])
	if hdr[7]&0x80 != 0 {
		// The whole file is a fragment of the packed inode.
		if !p.Fragments {
			return nil, errf(z.h+7, "whole-file fragment without the FRAGMENTS feature")
		}
		off := h64 ^ 1<<63
		if off > 1<<62 || int64(off) > (1<<63-1)-p.Size {
			return nil, errf(z.h, "fragment offset %d overflows", off)
		}
		return []Extent{{LStart: 0, LLen: p.Size, Kind: Fragment, PStart: int64(off), PLen: p.Size}}, nil
	}
	z.advise = binary.LittleEndian.Uint16(hdr[4:])
	z.lcb = z.bsb + uint(hdr[7]&15)
	if z.lcb > 30 {
		return nil, unsupf(z.h+7, "logical cluster bits %d", z.lcb)
	}
	if !p.Compact && z.advise&adviseExtents != 0 {
		return z.mapExtents(uint64(binary.LittleEndian.Uint32(hdr[0:])) | uint64(binary.LittleEndian.Uint16(hdr[6:]))<<32)
	}
	z.algs[0] = hdr[6] & 15
	z.algs[1] = hdr[6] >> 4
	if z.advise&adviseFragment != 0 {
		z.frag = true
		z.fragOff = uint64(binary.LittleEndian.Uint32(hdr[0:]))
		if !p.Fragments {
			return nil, errf(z.h+4, "FRAGMENT_PCLUSTER without the FRAGMENTS feature")
		}
	} else if z.advise&adviseInline != 0 {
		z.idataSize = int64(binary.LittleEndian.Uint16(hdr[2:]))
		z.ztail = z.idataSize != 0
	}
	if !p.BigPcluster && z.advise&(adviseBig1|adviseBig2) != 0 {
		return nil, errf(z.h+4, "big pcluster advise 0x%x without the BIG_PCLUSTER feature", z.advise)
	}
	if p.Compact && (z.advise&adviseBig1 == 0) != (z.advise&adviseBig2 == 0) {
		return nil, errf(z.h+4, "compact indexes with inconsistent BIG_PCLUSTER_1/2 (advise 0x%x)", z.advise)
	}
	if p.Compact && z.lcb > 14 {
		return nil, unsupf(z.h+7, "compact indexes with logical cluster bits %d > 14", z.lcb)
	}

	if z.ztail || z.frag {
		// EROFS_GET_BLOCKS_FINDTAIL
		head, _, err := z.mapAt(p.Size-1, true)
		if err != nil {
			return nil, err
		}
		z.tailHead = head.lcn
		if z.frag && !p.Compact {
			z.fragOff |= head.pblk << 32
		}
		if z.ztail {
			bs := int64(1) << z.bsb
			if z.idataOff&(bs-1)+z.idataSize > bs {
				return nil, errf(z.idataOff, "inline tail pcluster of %d bytes crosses a block", z.idataSize)
			}
			if z.idataOff > p.MetaSize-z.idataSize {
				return nil, errf(z.idataOff, "inline tail pcluster of %d bytes past the end of metadata", z.idataSize)
			}
		}
		if z.frag && z.tailHead == 0 {
			if z.fragOff > 1<<62 || int64(z.fragOff) > (1<<63-1)-p.Size {
				return nil, errf(z.h, "fragment offset %d overflows", z.fragOff)
			}
			return []Extent{{LStart: 0, LLen: p.Size, Kind: Fragment, PStart: int64(z.fragOff), PLen: p.Size}}, nil
		}
	}

	var out []Extent
	for ofs := int64(0); ofs < p.Size; {
		e, head, err := z.extentAt(ofs)
		if err != nil {
			return nil, err
		}
		if e.LStart != ofs {
			return nil, errf(head.pos, "extent for offset %d starts at %d: extents overlap", ofs, e.LStart)
		}
		llen, err := z.decompressedLen(head.lcn, e.LStart)
		if err != nil {
			return nil, err
		}
		if llen <= 0 || llen > p.Size-ofs {
			return nil, errf(head.pos, "extent at %d has length %d, file size %d", ofs, llen, p.Size)
		}
		e.LLen = llen
		if e.Kind == Fragment {
			if z.fragOff > 1<<62 || int64(z.fragOff) > (1<<63-1)-llen {
				return nil, errf(z.h, "fragment offset %d overflows", z.fragOff)
			}
			e.PLen = llen
		}
		if err := z.sanity(&e, ofs+llen == p.Size, head.pos); err != nil {
			return nil, err
		}
		out = append(out, e)
		ofs += llen
	}
	return out, nil
}

// sanity applies z_erofs_map_sanity_check and the plain-length rules.
func (z *mapper) sanity(e *Extent, last bool, pos int64) error {
	if e.Kind != Blocks && e.Kind != Inline {
		return nil
	}
	if e.Alg > decompress.Interlaced {
		return unsupf(pos, "unknown algorithm %d at logical %d", e.Alg, e.LStart)
	}
	if e.Alg < decompress.Shifted && z.p.Algs&(1<<e.Alg) == 0 {
		return errf(pos, "inconsistent algorithmtype %v (available 0x%x) at logical %d", e.Alg, z.p.Algs, e.LStart)
	}
	if e.PLen > decompress.MaxPclusterSize {
		return unsupf(pos, "pcluster of %d bytes > %d at logical %d", e.PLen, decompress.MaxPclusterSize, e.LStart)
	}
	if e.LLen > decompress.MaxDecodedSize {
		return unsupf(pos, "extent of %d bytes > %d at logical %d", e.LLen, decompress.MaxDecodedSize, e.LStart)
	}
	if e.PLen <= 0 {
		return errf(pos, "empty pcluster at logical %d", e.LStart)
	}
	if e.PStart < 0 || e.PStart > 1<<62 || uint64(e.PStart+e.PLen)>>z.bsb >= 1<<48 {
		return errf(pos, "pcluster [%d,+%d) beyond 48-bit block addresses", e.PStart, e.PLen)
	}
	if !e.Compressed() && e.LLen > e.PLen {
		return errf(pos, "plain extent of %d bytes in a %d-byte pcluster at logical %d", e.LLen, e.PLen, e.LStart)
	}
	if e.Compressed() && !last && !e.Partial && e.PLen > e.LLen {
		return errf(pos, "compressed pcluster of %d bytes for %d logical bytes at logical %d", e.PLen, e.LLen, e.LStart)
	}
	return nil
}

// extentAt maps the extent containing ofs (z_erofs_do_map_blocks); LLen is
// left for decompressedLen.
func (z *mapper) extentAt(ofs int64) (Extent, lrec, error) {
	head, _, err := z.mapAt(ofs, false)
	if err != nil {
		return Extent{}, head, err
	}
	e := Extent{LStart: head.lcn<<z.lcb | head.clusterofs, Partial: head.partial, Lcn: head.lcn}
	switch {
	case z.ztail && head.lcn == z.tailHead:
		e.Kind, e.PStart, e.PLen = Inline, z.idataOff, z.idataSize
	case z.frag && head.lcn == z.tailHead:
		e.Kind, e.PStart = Fragment, int64(z.fragOff)
		return e, head, nil
	default:
		e.Kind = Blocks
		if head.pblk >= 1<<48 || head.pblk >= 1<<(62-z.bsb) {
			return e, head, errf(head.pos, "block address %d beyond 48 bits", head.pblk)
		}
		e.PStart = int64(head.pblk << z.bsb)
		n, err := z.compressedBlocks(head)
		if err != nil {
			return e, head, err
		}
		e.PLen = int64(n) << z.bsb
	}
	switch head.typ {
	case typePlain:
		e.Alg = decompress.Shifted
		if z.advise&adviseInterlaced != 0 {
			e.Alg = decompress.Interlaced
		}
	case typeHead2:
		e.Alg = decompress.Alg(z.algs[1])
		if z.algs[1] >= 4 {
			return e, head, unsupf(z.h+6, "unknown HEAD2 algorithm %d", z.algs[1])
		}
	default:
		e.Alg = decompress.Alg(z.algs[0])
		if z.algs[0] >= 4 {
			return e, head, unsupf(z.h+6, "unknown HEAD1 algorithm %d", z.algs[0])
		}
	}
	return e, head, nil
}

// mapAt finds the head lcluster of the extent containing ofs. It also
// returns the first lcluster loaded (the one containing ofs).
func (z *mapper) mapAt(ofs int64, findTail bool) (lrec, lrec, error) {
	lcn := ofs >> z.lcb
	endoff := ofs & (1<<z.lcb - 1)
	first, err := z.load(lcn, false)
	if err != nil {
		return first, first, err
	}
	if findTail && z.ztail {
		z.idataOff = first.next
	}
	dist := uint32(0)
	switch first.typ {
	case typePlain, typeHead1, typeHead2:
		if endoff >= first.clusterofs {
			return first, first, nil
		}
		if lcn == 0 {
			return first, first, errf(first.pos, "invalid logical cluster 0: clusterofs %d > 0", first.clusterofs)
		}
		dist = 1
	default:
		dist = first.d0
	}
	// z_erofs_extent_lookback
	cur := first
	for int64(dist) <= cur.lcn {
		if dist == 0 {
			return cur, first, errf(cur.pos, "invalid lookback distance 0 at lcluster %d", cur.lcn)
		}
		r, err := z.load(cur.lcn-int64(dist), false)
		if err != nil {
			return r, first, err
		}
		if r.typ != typeNonhead {
			return r, first, nil
		}
		cur, dist = r, r.d0
	}
	return cur, first, errf(cur.pos, "bogus lookback distance %d at lcluster %d", dist, cur.lcn)
}

// compressedBlocks is z_erofs_get_extent_compressedlen, in blocks.
func (z *mapper) compressedBlocks(head lrec) (uint32, error) {
	big1 := z.advise&adviseBig1 != 0
	big2 := z.advise&adviseBig2 != 0
	if (head.typ == typeHead1 && !big1) || ((head.typ == typePlain || head.typ == typeHead2) && !big2) ||
		(head.lcn+1)<<z.lcb >= z.p.Size {
		return 1, nil
	}
	r, err := z.load(head.lcn+1, false)
	if err != nil {
		return 0, err
	}
	if r.typ != typeNonhead {
		return 1, nil
	}
	if r.d0 != 1 {
		return 0, errf(r.pos, "bogus CBLKCNT at lcluster %d (delta0 %d)", r.lcn, r.d0)
	}
	if r.cblk == 0 {
		return 0, errf(r.pos, "cannot find CBLKCNT at lcluster %d", r.lcn)
	}
	return r.cblk, nil
}

// decompressedLen is z_erofs_get_extent_decompressedlen.
func (z *mapper) decompressedLen(headLcn, la int64) (int64, error) {
	lcn := headLcn
	for {
		if lcn<<z.lcb >= z.p.Size {
			return z.p.Size - la, nil
		}
		r, err := z.load(lcn, true)
		if err != nil {
			return 0, err
		}
		d1 := r.d1
		if r.typ == typeNonhead {
			if d1 == 0 { // work around invalid d1 of pre-1.0 mkfs, as erofs-utils does
				d1 = 1
			}
		} else {
			if lcn != headLcn {
				return lcn<<z.lcb + r.clusterofs - la, nil
			}
			d1 = 1
		}
		lcn += int64(d1)
	}
}

// load reads lcluster lcn's index and checks its type and clusterofs.
func (z *mapper) load(lcn int64, lookahead bool) (lrec, error) {
	var r lrec
	var err error
	if z.p.Compact {
		r, err = z.loadCompact(lcn, lookahead)
	} else {
		r, err = z.loadFull(lcn)
	}
	if err != nil {
		return r, err
	}
	if r.typ != typeNonhead && r.clusterofs >= 1<<z.lcb {
		return r, errf(r.pos, "clusterofs %d >= lcluster size %d at lcluster %d", r.clusterofs, 1<<z.lcb, lcn)
	}
	return r, nil
}

func (z *mapper) loadFull(lcn int64) (lrec, error) {
	r := lrec{lcn: lcn}
	if lcn < 0 || lcn > z.p.MetaSize/8 {
		return r, errf(z.h, "lcluster %d out of range", lcn)
	}
	r.pos = z.h + 16 + lcn*8
	b, err := z.m.bytes(r.pos, 8)
	if err != nil {
		return r, err
	}
	r.next = r.pos + 8
	adv := binary.LittleEndian.Uint16(b[0:])
	r.typ = uint8(adv & 3)
	if r.typ == typeNonhead {
		r.clusterofs = 1 << z.lcb
		r.d0 = uint32(binary.LittleEndian.Uint16(b[4:]))
		if r.d0&d0Cblkcnt != 0 {
			if z.advise&(adviseBig1|adviseBig2) == 0 {
				return r, errf(r.pos, "CBLKCNT without big pcluster at lcluster %d", lcn)
			}
			r.cblk = r.d0 &^ d0Cblkcnt
			r.d0 = 1
		}
		r.d1 = uint32(binary.LittleEndian.Uint16(b[6:]))
		return r, nil
	}
	r.partial = adv&liPartialRef != 0
	r.clusterofs = int64(binary.LittleEndian.Uint16(b[2:]))
	r.pblk = uint64(binary.LittleEndian.Uint32(b[4:]))
	return r, nil
}

// decodeBits reads one packed entry: lo bits and the 2-bit type above them.
func decodeBits(lobits uint, in []byte, bitpos uint) (uint32, uint8) {
	i := bitpos / 8
	var v uint32
	for k := uint(0); k < 4 && int(i+k) < len(in); k++ {
		v |= uint32(in[i+k]) << (8 * k)
	}
	v >>= bitpos & 7
	return v & (1<<lobits - 1), uint8(v>>lobits) & 3
}

func (z *mapper) loadCompact(lcn int64, lookahead bool) (lrec, error) {
	r := lrec{lcn: lcn}
	bs := int64(1) << z.bsb
	totalidx := (z.p.Size + bs - 1) >> z.bsb
	if lcn < 0 || lcn >= totalidx {
		return r, errf(z.h, "lcluster %d >= %d index entries", lcn, totalidx)
	}
	ebase := z.h + 8
	init4 := int64(((32 - ebase%32) / 4) & 7)
	var n2b int64
	if z.advise&adviseCompacted2B != 0 && init4 < totalidx {
		n2b = (totalidx - init4) / 16 * 16
	}
	pos := ebase
	shift := uint(2)
	l := lcn
	if l >= init4 {
		pos += init4 * 4
		l -= init4
		if l < n2b {
			shift = 1
		} else {
			pos += n2b * 2
			l -= n2b
		}
	}
	if l > z.p.MetaSize {
		return r, errf(ebase, "lcluster %d out of range", lcn)
	}
	pos += l << shift
	r.pos = pos
	var vcnt int
	switch {
	case shift == 2 && z.lcb <= 14:
		vcnt = 2
	case shift == 1 && z.lcb <= 12:
		vcnt = 16
	default:
		return r, unsupf(pos, "compact %dB pack with logical cluster bits %d", 1<<shift, z.lcb)
	}
	packsz := int64(vcnt) << shift
	packStart := pos &^ (packsz - 1)
	in, err := z.m.bytes(packStart, int(packsz))
	if err != nil {
		return r, err
	}
	r.next = packStart + packsz
	lobits := z.lcb
	if lobits < 12 {
		lobits = 12
	}
	encodebits := uint((packsz - 4) * 8 / int64(vcnt))
	i := int((pos - packStart) >> shift)

	lo, typ := decodeBits(lobits, in, encodebits*uint(i))
	r.typ = typ
	big := z.advise&adviseBig1 != 0
	if typ == typeNonhead {
		r.clusterofs = 1 << z.lcb
		if lookahead {
			r.d1 = laDistance(lobits, encodebits, vcnt, in, i)
		}
		if lo&d0Cblkcnt != 0 {
			if !big {
				return r, errf(pos, "CBLKCNT without big pcluster at lcluster %d", lcn)
			}
			r.cblk = lo &^ d0Cblkcnt
			r.d0 = 1
			return r, nil
		}
		if i+1 != vcnt {
			r.d0 = lo
			return r, nil
		}
		// The last entry of a pack stores delta[1]; derive delta[0] from
		// the previous entry.
		plo, ptyp := decodeBits(lobits, in, encodebits*uint(i-1))
		if ptyp != typeNonhead {
			plo = 0
		} else if plo&d0Cblkcnt != 0 {
			plo = 1
		}
		r.d0 = plo + 1
		return r, nil
	}
	r.clusterofs = int64(lo)
	var nblk uint64
	if !big {
		nblk = 1
		for i > 0 {
			i--
			lo, typ := decodeBits(lobits, in, encodebits*uint(i))
			if typ == typeNonhead {
				i -= int(lo)
			}
			if i >= 0 {
				nblk++
			}
		}
	} else {
		for i > 0 {
			i--
			lo, typ := decodeBits(lobits, in, encodebits*uint(i))
			if typ == typeNonhead {
				if lo&d0Cblkcnt != 0 {
					i--
					nblk += uint64(lo &^ d0Cblkcnt)
					continue
				}
				if lo <= 1 {
					return r, errf(pos, "big pcluster with plain delta0 %d in pack at lcluster %d", lo, lcn)
				}
				i -= int(lo) - 2
				continue
			}
			nblk++
		}
	}
	r.pblk = uint64(binary.LittleEndian.Uint32(in[packsz-4:])) + nblk
	return r, nil
}

// laDistance is get_compacted_la_distance: delta[1] of a NONHEAD entry.
func laDistance(lobits, encodebits uint, vcnt int, in []byte, i int) uint32 {
	var d1, lo uint32
	for ; i < vcnt; i++ {
		var typ uint8
		lo, typ = decodeBits(lobits, in, encodebits*uint(i))
		if typ != typeNonhead {
			return d1
		}
		d1++
	}
	if lo&d0Cblkcnt == 0 {
		d1 += lo - 1
	}
	return d1
}

// mapExtents decodes EXTENTS-mode records (z_erofs_map_blocks_ext).
func (z *mapper) mapExtents(nExt uint64) ([]Extent, error) {
	p := z.p
	recsz := int64(4) << ((z.advise >> 1) & 3)
	pos := (z.h + 8 + recsz - 1) &^ (recsz - 1)
	interlaced := z.advise&adviseInterlaced != 0
	frag := z.advise&adviseFragment != 0
	if frag && !p.Fragments {
		return nil, errf(z.h+4, "FRAGMENT_PCLUSTER without the FRAGMENTS feature")
	}
	bmask := uint64(1)<<z.bsb - 1
	var out []Extent

	add := func(la, end int64, plen uint32, pa uint64, last bool, rpos int64, idx int64) error {
		e := Extent{LStart: la, LLen: end - la, Lcn: idx}
		if last && frag {
			off := uint64(plen)
			if recsz > 4 {
				off |= pa << 32
			}
			if off > 1<<62 || int64(off) > (1<<63-1)-e.LLen {
				return errf(rpos, "fragment offset %d overflows", off)
			}
			e.Kind, e.PStart, e.PLen = Fragment, int64(off), e.LLen
		} else if plen&extPlenMask != 0 {
			fmt := plen >> extPlenFmtBit
			e.Partial = plen&extPlenPartial != 0
			e.PLen = int64(plen & extPlenMask)
			if pa > 1<<62 {
				return errf(rpos, "pcluster address %d overflows", pa)
			}
			e.Kind, e.PStart = Blocks, int64(pa)
			switch {
			case fmt > 4:
				return unsupf(rpos, "unknown extent format %d", fmt)
			case fmt > 0:
				e.Alg = decompress.Alg(fmt - 1)
			case interlaced && (pa|uint64(e.PLen))&bmask == 0:
				e.Alg = decompress.Interlaced
			default:
				e.Alg = decompress.Shifted
			}
			if err := z.sanity(&e, end == p.Size, rpos); err != nil {
				return err
			}
		} else {
			e.Kind = Hole
		}
		// Merge adjacent holes.
		if e.Kind == Hole && len(out) > 0 && out[len(out)-1].Kind == Hole {
			out[len(out)-1].LLen += e.LLen
			return nil
		}
		out = append(out, e)
		return nil
	}

	if recsz <= 8 {
		lcs := int64(1) << z.lcb
		n := (p.Size + lcs - 1) >> z.lcb
		if n > p.MetaSize/recsz+1 {
			return nil, errf(pos, "%d extent records past the end of metadata", n)
		}
		var pa uint64
		if recsz == 4 {
			base, err := z.m.u64(pos)
			if err != nil {
				return nil, err
			}
			pa = base
			pos += 8
		}
		for k := int64(0); k < n; k++ {
			rpos := pos + k*recsz
			plen, err := z.m.u32(rpos)
			if err != nil {
				return nil, err
			}
			cur := pa
			if recsz == 4 {
				pa += uint64(plen & extPlenMask)
			} else {
				lo, err := z.m.u32(rpos + 4)
				if err != nil {
					return nil, err
				}
				cur = uint64(lo)
			}
			la := k << z.lcb
			end := min(la+lcs, p.Size)
			if err := add(la, end, plen, cur, k == n-1, rpos, k); err != nil {
				return nil, err
			}
		}
		return out, nil
	}

	if nExt == 0 {
		return []Extent{{LStart: 0, LLen: p.Size, Kind: Hole}}, nil
	}
	if nExt > uint64(p.MetaSize/recsz)+1 {
		return nil, errf(pos, "%d extent records past the end of metadata", nExt)
	}
	type rec struct {
		la    int64
		plen  uint32
		pa    uint64
		rpos  int64
		index int64
	}
	read := func(i int64) (rec, error) {
		rpos := pos + i*recsz
		b, err := z.m.bytes(rpos, int(recsz))
		if err != nil {
			return rec{}, err
		}
		la := uint64(binary.LittleEndian.Uint32(b[12:]))
		if recsz >= 32 {
			la |= uint64(binary.LittleEndian.Uint32(b[16:])) << 32
		}
		if la >= uint64(p.Size) {
			return rec{}, errf(rpos, "extent record %d lstart %d beyond i_size %d", i, la, p.Size)
		}
		return rec{
			la:    int64(la),
			plen:  binary.LittleEndian.Uint32(b[0:]),
			pa:    uint64(binary.LittleEndian.Uint32(b[4:])) | uint64(binary.LittleEndian.Uint32(b[8:]))<<32,
			rpos:  rpos,
			index: i,
		}, nil
	}
	cur, err := read(0)
	if err != nil {
		return nil, err
	}
	if cur.la > 0 {
		out = append(out, Extent{LStart: 0, LLen: cur.la, Kind: Hole})
	}
	n := int64(nExt)
	for i := int64(0); i < n; i++ {
		end := p.Size
		var next rec
		if i+1 < n {
			next, err = read(i + 1)
			if err != nil {
				return nil, err
			}
			if next.la <= cur.la {
				return nil, errf(next.rpos, "extent record %d lstart %d not after %d", i+1, next.la, cur.la)
			}
			end = next.la
		}
		if err := add(cur.la, end, cur.plen, cur.pa, i == n-1, cur.rpos, cur.index); err != nil {
			return nil, err
		}
		cur = next
	}
	return out, nil
}
