package decompress

// MicroLZMA, the LZMA framing EROFS uses (xz-embedded's xz_dec_microlzma,
// kernel fs/erofs/decompressor_lzma.c): a raw LZMA1 stream without header or
// end marker whose first range-coder byte (always 0x00 in LZMA) is replaced
// by the bitwise NOT of the properties byte (lc/lp/pb). The stream decodes
// to the extent's length; the compressed size is the pcluster's after the
// leading zero padding. Every pcluster starts with a fresh dictionary, so
// the whole decoded extent is the window.
//
// Decoding follows the LZMA specification (LzmaSpec.cpp); the end checks
// follow xz-embedded: when the caller wants the exact length (not Partial),
// no match may run past the end and the range coder must be finished
// (code == 0), as xz_dec_microlzma_run checks with uncomp_size_is_exact.

const (
	lzmaNumStates      = 12
	lzmaPosStatesMax   = 1 << 4
	lzmaLenLowBits     = 3
	lzmaLenMidBits     = 3
	lzmaLenHighBits    = 8
	lzmaEndPosModel    = 14
	lzmaFullDistances  = 1 << (lzmaEndPosModel >> 1)
	lzmaAlignBits      = 4
	lzmaMatchMinLen    = 2
	lzmaLenToPosStates = 4
	lzmaProbInit       = 1 << 10
)

type lzmaRC struct {
	in     []byte
	pos    int
	rng    uint32
	code   uint32
	overrd bool // read past the input
}

func (rc *lzmaRC) next() byte {
	if rc.pos >= len(rc.in) {
		rc.overrd = true
		return 0
	}
	b := rc.in[rc.pos]
	rc.pos++
	return b
}

func (rc *lzmaRC) normalize() {
	if rc.rng < 1<<24 {
		rc.rng <<= 8
		rc.code = rc.code<<8 | uint32(rc.next())
	}
}

func (rc *lzmaRC) bit(p *uint16) uint32 {
	bound := (rc.rng >> 11) * uint32(*p)
	var b uint32
	if rc.code < bound {
		rc.rng = bound
		*p += (1<<11 - *p) >> 5
	} else {
		rc.rng -= bound
		rc.code -= bound
		*p -= *p >> 5
		b = 1
	}
	rc.normalize()
	return b
}

func (rc *lzmaRC) direct(n int) uint32 {
	var res uint32
	for ; n > 0; n-- {
		rc.rng >>= 1
		rc.code -= rc.rng
		t := 0 - (rc.code >> 31)
		rc.code += rc.rng & t
		res = res<<1 + t + 1
		rc.normalize()
	}
	return res
}

func (rc *lzmaRC) tree(probs []uint16, bits int) uint32 {
	m := uint32(1)
	for i := 0; i < bits; i++ {
		m = m<<1 + rc.bit(&probs[m])
	}
	return m - 1<<bits
}

func (rc *lzmaRC) reverse(probs []uint16, bits int) uint32 {
	m, sym := uint32(1), uint32(0)
	for i := 0; i < bits; i++ {
		b := rc.bit(&probs[m])
		m = m<<1 + b
		sym |= b << i
	}
	return sym
}

type lzmaLen struct {
	choice, choice2 uint16
	low             [lzmaPosStatesMax][1 << lzmaLenLowBits]uint16
	mid             [lzmaPosStatesMax][1 << lzmaLenMidBits]uint16
	high            [1 << lzmaLenHighBits]uint16
}

func (l *lzmaLen) init() {
	l.choice, l.choice2 = lzmaProbInit, lzmaProbInit
	for i := range l.low {
		fill(l.low[i][:])
		fill(l.mid[i][:])
	}
	fill(l.high[:])
}

func (l *lzmaLen) decode(rc *lzmaRC, posState uint32) uint32 {
	if rc.bit(&l.choice) == 0 {
		return rc.tree(l.low[posState][:], lzmaLenLowBits)
	}
	if rc.bit(&l.choice2) == 0 {
		return 1<<lzmaLenLowBits + rc.tree(l.mid[posState][:], lzmaLenMidBits)
	}
	return 1<<lzmaLenLowBits + 1<<lzmaLenMidBits + rc.tree(l.high[:], lzmaLenHighBits)
}

func fill(p []uint16) {
	for i := range p {
		p[i] = lzmaProbInit
	}
}

// unlzma decodes the MicroLZMA stream in into out (len(out) bytes).
func unlzma(out, in []byte, partial bool) error {
	if len(in) < 5 {
		return corrupt(LZMA, "stream of %d bytes is shorter than its header", len(in))
	}
	props := ^in[0]
	if props >= 9*5*5 {
		return corrupt(LZMA, "properties byte %#x out of range", props)
	}
	lc, lp, pb := uint32(props%9), uint32(props/9%5), uint32(props/45)
	if lc+lp > 4 { // xz-embedded's (LZMA2) limit
		return corrupt(LZMA, "lc %d + lp %d exceeds 4", lc, lp)
	}
	rc := &lzmaRC{in: in, pos: 1, rng: 0xFFFFFFFF}
	for i := 0; i < 4; i++ {
		rc.code = rc.code<<8 | uint32(rc.next())
	}
	if rc.code == 0xFFFFFFFF {
		return corrupt(LZMA, "range coder starts at 0xffffffff")
	}

	var (
		isMatch    [lzmaNumStates << 4]uint16
		isRep      [lzmaNumStates]uint16
		isRepG0    [lzmaNumStates]uint16
		isRepG1    [lzmaNumStates]uint16
		isRepG2    [lzmaNumStates]uint16
		isRep0Long [lzmaNumStates << 4]uint16
		posSlot    [lzmaLenToPosStates][1 << 6]uint16
		posDec     [1 + lzmaFullDistances - lzmaEndPosModel]uint16
		align      [1 << lzmaAlignBits]uint16
		lenDec     lzmaLen
		repLenDec  lzmaLen
	)
	fill(isMatch[:])
	fill(isRep[:])
	fill(isRepG0[:])
	fill(isRepG1[:])
	fill(isRepG2[:])
	fill(isRep0Long[:])
	for i := range posSlot {
		fill(posSlot[i][:])
	}
	fill(posDec[:])
	fill(align[:])
	lenDec.init()
	repLenDec.init()
	lit := make([]uint16, 0x300<<(lc+lp))
	fill(lit)

	pbMask, lpMask := uint32(1)<<pb-1, uint32(1)<<lp-1
	var state, rep0, rep1, rep2, rep3 uint32
	pos := 0
	pending := 0 // match bytes beyond len(out)
	for pos < len(out) {
		if rc.overrd {
			return corrupt(LZMA, "stream truncated at %d of %d decoded bytes", pos, len(out))
		}
		posState := uint32(pos) & pbMask
		if rc.bit(&isMatch[state<<4+posState]) == 0 {
			var prev uint32
			if pos > 0 {
				prev = uint32(out[pos-1])
			}
			probs := lit[0x300*(((uint32(pos)&lpMask)<<lc)+prev>>(8-lc)):]
			sym := uint32(1)
			if state >= 7 {
				match := uint32(out[pos-int(rep0)-1])
				for sym < 0x100 {
					mb := (match >> 7) & 1
					match <<= 1
					b := rc.bit(&probs[(1+mb)<<8+sym])
					sym = sym<<1 | b
					if mb != b {
						break
					}
				}
			}
			for sym < 0x100 {
				sym = sym<<1 | rc.bit(&probs[sym])
			}
			out[pos] = byte(sym)
			pos++
			switch {
			case state < 4:
				state = 0
			case state < 10:
				state -= 3
			default:
				state -= 6
			}
			continue
		}
		var n uint32
		if rc.bit(&isRep[state]) != 0 {
			if pos == 0 {
				return corrupt(LZMA, "repeated match at the start of the stream")
			}
			if rc.bit(&isRepG0[state]) == 0 {
				if rc.bit(&isRep0Long[state<<4+posState]) == 0 {
					if state < 7 {
						state = 9
					} else {
						state = 11
					}
					out[pos] = out[pos-int(rep0)-1]
					pos++
					continue
				}
			} else {
				var dist uint32
				if rc.bit(&isRepG1[state]) == 0 {
					dist = rep1
				} else {
					if rc.bit(&isRepG2[state]) == 0 {
						dist = rep2
					} else {
						dist = rep3
						rep3 = rep2
					}
					rep2 = rep1
				}
				rep1 = rep0
				rep0 = dist
			}
			n = repLenDec.decode(rc, posState)
			if state < 7 {
				state = 8
			} else {
				state = 11
			}
		} else {
			rep3, rep2, rep1 = rep2, rep1, rep0
			n = lenDec.decode(rc, posState)
			if state < 7 {
				state = 7
			} else {
				state = 10
			}
			lenState := n
			if lenState > lzmaLenToPosStates-1 {
				lenState = lzmaLenToPosStates - 1
			}
			slot := rc.tree(posSlot[lenState][:], 6)
			if slot < 4 {
				rep0 = slot
			} else {
				nb := int(slot>>1) - 1
				dist := (2 | slot&1) << nb
				if slot < lzmaEndPosModel {
					dist += rc.reverse(posDec[dist-slot:], nb)
				} else {
					dist += rc.direct(nb-lzmaAlignBits) << lzmaAlignBits
					dist += rc.reverse(align[:], lzmaAlignBits)
				}
				rep0 = dist
			}
			if rep0 == 0xFFFFFFFF {
				return corrupt(LZMA, "end marker at %d of %d decoded bytes", pos, len(out))
			}
		}
		if int64(rep0) >= int64(pos) {
			return corrupt(LZMA, "match distance %d beyond the %d bytes decoded", rep0+1, pos)
		}
		l := int(n) + lzmaMatchMinLen
		if l > len(out)-pos {
			pending = l - (len(out) - pos)
			l = len(out) - pos
		}
		src := pos - int(rep0) - 1
		for i := 0; i < l; i++ {
			out[pos+i] = out[src+i]
		}
		pos += l
	}
	if rc.overrd {
		return corrupt(LZMA, "stream truncated")
	}
	if !partial && (pending > 0 || rc.code != 0) {
		return corrupt(LZMA, "stream does not end with the %d decoded bytes", len(out))
	}
	return nil
}
