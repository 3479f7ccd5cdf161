package zstdseek

import (
	"encoding/binary"
	"math/bits"
)

// XXH64 with seed 0, as zstd uses it for content checksums and the seekable
// format for its per-frame checksums (both keep the low 32 bits).

const (
	xxP1 uint64 = 11400714785074694791
	xxP2 uint64 = 14029467366897019727
	xxP3 uint64 = 1609587929392839161
	xxP4 uint64 = 9650029242287828579
	xxP5 uint64 = 2870177450012600261
)

func xxRound(acc, in uint64) uint64 {
	acc += in * xxP2
	acc = bits.RotateLeft64(acc, 31)
	return acc * xxP1
}

func xxMerge(acc, v uint64) uint64 {
	acc ^= xxRound(0, v)
	return acc*xxP1 + xxP4
}

// xxh64 is a streaming XXH64 digest (seed 0).
type xxh64 struct {
	v     [4]uint64
	total uint64
	buf   [32]byte
	n     int
}

func newXXH64() *xxh64 {
	d := &xxh64{}
	d.reset()
	return d
}

func (d *xxh64) reset() {
	p1 := xxP1 // variable: the sums wrap
	d.v = [4]uint64{p1 + xxP2, xxP2, 0, -p1}
	d.total = 0
	d.n = 0
}

func (d *xxh64) stripes(b []byte) []byte {
	v0, v1, v2, v3 := d.v[0], d.v[1], d.v[2], d.v[3]
	for len(b) >= 32 {
		v0 = xxRound(v0, binary.LittleEndian.Uint64(b[0:]))
		v1 = xxRound(v1, binary.LittleEndian.Uint64(b[8:]))
		v2 = xxRound(v2, binary.LittleEndian.Uint64(b[16:]))
		v3 = xxRound(v3, binary.LittleEndian.Uint64(b[24:]))
		b = b[32:]
	}
	d.v = [4]uint64{v0, v1, v2, v3}
	return b
}

func (d *xxh64) Write(b []byte) (int, error) {
	n := len(b)
	d.total += uint64(n)
	if d.n > 0 {
		c := copy(d.buf[d.n:], b)
		d.n += c
		b = b[c:]
		if d.n < 32 {
			return n, nil
		}
		d.stripes(d.buf[:])
		d.n = 0
	}
	b = d.stripes(b)
	d.n = copy(d.buf[:], b)
	return n, nil
}

func (d *xxh64) Sum64() uint64 {
	var h uint64
	if d.total >= 32 {
		v := d.v
		h = bits.RotateLeft64(v[0], 1) + bits.RotateLeft64(v[1], 7) +
			bits.RotateLeft64(v[2], 12) + bits.RotateLeft64(v[3], 18)
		for _, x := range v {
			h = xxMerge(h, x)
		}
	} else {
		h = xxP5
	}
	h += d.total
	b := d.buf[:d.n]
	for len(b) >= 8 {
		h ^= xxRound(0, binary.LittleEndian.Uint64(b))
		h = bits.RotateLeft64(h, 27)*xxP1 + xxP4
		b = b[8:]
	}
	if len(b) >= 4 {
		h ^= uint64(binary.LittleEndian.Uint32(b)) * xxP1
		h = bits.RotateLeft64(h, 23)*xxP2 + xxP3
		b = b[4:]
	}
	for _, c := range b {
		h ^= uint64(c) * xxP5
		h = bits.RotateLeft64(h, 11) * xxP1
	}
	h ^= h >> 33
	h *= xxP2
	h ^= h >> 29
	h *= xxP3
	h ^= h >> 32
	return h
}

// sum32 is the low 32 bits of XXH64(b).
func sum32(b []byte) uint32 {
	var d xxh64
	d.reset()
	d.Write(b)
	return uint32(d.Sum64())
}
