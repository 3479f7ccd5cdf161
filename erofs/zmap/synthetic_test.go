package zmap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs/decompress"
)

const hoff = 64 // map header offset in synthetic metadata

// meta builds synthetic metadata: a map header at hoff, then records.
type meta struct{ b []byte }

func newMeta() *meta { return &meta{b: make([]byte, 8192)} }

func (m *meta) u16(off int, v uint16) { binary.LittleEndian.PutUint16(m.b[off:], v) }
func (m *meta) u32(off int, v uint32) { binary.LittleEndian.PutUint32(m.b[off:], v) }
func (m *meta) u64(off int, v uint64) { binary.LittleEndian.PutUint64(m.b[off:], v) }

// header writes h_fragmentoff/idata word, advise, algorithmtype, clusterbits.
func (m *meta) header(word0 uint32, advise uint16, algs, clusterbits byte) {
	m.u32(hoff, word0)
	m.u16(hoff+4, advise)
	m.b[hoff+6] = algs
	m.b[hoff+7] = clusterbits
}

// full writes a FULL lcluster index.
func (m *meta) head(lcn int, typ uint16, partial bool, clusterofs uint16, blk uint32) {
	off := hoff + 16 + lcn*8
	adv := typ
	if partial {
		adv |= liPartialRef
	}
	m.u16(off, adv)
	m.u16(off+2, clusterofs)
	m.u32(off+4, blk)
}

func (m *meta) nonhead(lcn int, d0, d1 uint16) {
	off := hoff + 16 + lcn*8
	m.u16(off, typeNonhead)
	m.u16(off+4, d0)
	m.u16(off+6, d1)
}

func (m *meta) params(size int64) Params {
	return Params{Meta: bytes.NewReader(m.b), MetaSize: int64(len(m.b)), HeaderOff: hoff,
		Size: size, BlkSzBits: 12, ZeroPadding: true, BigPcluster: true, Fragments: true,
		Algs: 1<<decompress.LZ4 | 1<<decompress.Zstd | 1<<decompress.Deflate}
}

func mustMap(t *testing.T, p Params) []Extent {
	t.Helper()
	e, err := Map(p)
	if err != nil {
		t.Fatalf("Map: %v", err)
	}
	return e
}

func wantExtents(t *testing.T, got, want []Extent) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d extents %+v, want %d %+v", len(got), got, len(want), want)
	}
	for i := range got {
		g, w := got[i], want[i]
		g.Lcn, w.Lcn = 0, 0
		if g != w {
			t.Fatalf("extent %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestFullHead2PartialPlain(t *testing.T) {
	m := newMeta()
	m.header(0, 0, 0x30, 0) // HEAD1 lz4, HEAD2 zstd
	m.head(0, typeHead1, false, 0, 10)
	m.nonhead(1, 1, 1)
	m.head(2, typeHead2, true, 200, 11)
	m.head(3, typePlain, false, 50, 12)
	size := int64(3*4096 + 100)
	wantExtents(t, mustMap(t, m.params(size)), []Extent{
		{LStart: 0, LLen: 2*4096 + 200, Kind: Blocks, PStart: 10 << 12, PLen: 4096, Alg: decompress.LZ4},
		{LStart: 2*4096 + 200, LLen: 4096 - 200 + 50, Kind: Blocks, PStart: 11 << 12, PLen: 4096, Alg: decompress.Zstd, Partial: true},
		{LStart: 3*4096 + 50, LLen: 50, Kind: Blocks, PStart: 12 << 12, PLen: 4096, Alg: decompress.Shifted},
	})
	// Interlaced plain.
	m.header(0, adviseInterlaced, 0x30, 0)
	e := mustMap(t, m.params(size))
	if e[2].Alg != decompress.Interlaced {
		t.Fatalf("want interlaced, got %+v", e[2])
	}
	// zstd not available.
	p := m.params(size)
	p.Algs = 1
	if _, err := Map(p); !isRule(err, "inconsistent algorithmtype") {
		t.Fatalf("got %v", err)
	}
}

func TestFullBigPcluster(t *testing.T) {
	m := newMeta()
	m.header(0, adviseBig1, 0, 0)
	m.head(0, typeHead1, false, 0, 100)
	m.nonhead(1, d0Cblkcnt|3, 3)
	m.nonhead(2, 2, 2)
	m.nonhead(3, 3, 1)
	m.head(4, typeHead1, false, 0, 103)
	wantExtents(t, mustMap(t, m.params(5*4096)), []Extent{
		{LStart: 0, LLen: 4 * 4096, Kind: Blocks, PStart: 100 << 12, PLen: 3 * 4096, Alg: decompress.LZ4},
		{LStart: 4 * 4096, LLen: 4096, Kind: Blocks, PStart: 103 << 12, PLen: 4096, Alg: decompress.LZ4},
	})
	p := m.params(5 * 4096)
	p.BigPcluster = false
	if _, err := Map(p); !isRule(err, "without the BIG_PCLUSTER feature") {
		t.Fatalf("got %v", err)
	}
	// CBLKCNT missing: the first NONHEAD has a plain delta0 of 1.
	m.nonhead(1, 1, 3)
	if _, err := Map(m.params(5 * 4096)); !isRule(err, "cannot find CBLKCNT") {
		t.Fatalf("got %v", err)
	}
}

func TestFullFragments(t *testing.T) {
	m := newMeta()
	m.header(0x1234, adviseFragment, 0, 0)
	m.head(0, typeHead1, false, 0, 7)
	m.nonhead(1, 1, 1)
	m.head(2, typeHead1, false, 0, 5) // tail head: blkaddr holds fragmentoff bits 32..63
	size := int64(2*4096 + 10)
	wantExtents(t, mustMap(t, m.params(size)), []Extent{
		{LStart: 0, LLen: 8192, Kind: Blocks, PStart: 7 << 12, PLen: 4096, Alg: decompress.LZ4},
		{LStart: 8192, LLen: 10, Kind: Fragment, PStart: 5<<32 | 0x1234, PLen: 10},
	})
	p := m.params(size)
	p.Fragments = false
	if _, err := Map(p); !isRule(err, "without the FRAGMENTS feature") {
		t.Fatalf("got %v", err)
	}
	// Tail head at lcluster 0: the whole file is the fragment.
	m.nonhead(2, 2, 1)
	wantExtents(t, mustMap(t, m.params(size)), []Extent{
		{LStart: 0, LLen: size, Kind: Fragment, PStart: 7<<32 | 0x1234, PLen: size},
	})
	// Whole-file fragment bit.
	m.u64(hoff, 1<<63|777)
	wantExtents(t, mustMap(t, m.params(size)), []Extent{
		{LStart: 0, LLen: size, Kind: Fragment, PStart: 777, PLen: size},
	})
}

func TestFullZtailpacking(t *testing.T) {
	m := newMeta()
	m.header(40<<16, adviseInline, 0, 0) // h_idata_size = 40
	m.head(0, typeHead1, false, 0, 9)
	m.head(1, typeHead1, false, 0, 0)
	size := int64(4096 + 300)
	wantExtents(t, mustMap(t, m.params(size)), []Extent{
		{LStart: 0, LLen: 4096, Kind: Blocks, PStart: 9 << 12, PLen: 4096, Alg: decompress.LZ4},
		{LStart: 4096, LLen: 300, Kind: Inline, PStart: hoff + 16 + 2*8, PLen: 40, Alg: decompress.LZ4},
	})
	// Lookback distance 0 found while locating the tail.
	m.nonhead(1, 0, 0)
	if _, err := Map(m.params(size)); !isRule(err, "lookback distance 0") {
		t.Fatalf("got %v", err)
	}
	// Inline data crossing a block.
	m.head(1, typeHead1, false, 0, 0)
	m.header(4001<<16, adviseInline, 0, 0)
	if _, err := Map(m.params(size)); !isRule(err, "crosses a block") {
		t.Fatalf("got %v", err)
	}
}

func TestFullErrors(t *testing.T) {
	m := newMeta()
	m.header(0, 0, 0, 0)
	m.head(0, typeHead1, false, 100, 1)
	if _, err := Map(m.params(4096)); !isRule(err, "invalid logical cluster 0") {
		t.Fatalf("got %v", err)
	}
	m.head(0, typeHead1, false, 5000, 1)
	if _, err := Map(m.params(4096)); !isRule(err, "clusterofs") {
		t.Fatalf("got %v", err)
	}
	// Plain extent longer than its pcluster.
	m.head(0, typePlain, false, 0, 1)
	m.nonhead(1, 1, 1)
	if _, err := Map(m.params(8192)); !isRule(err, "plain extent") {
		t.Fatalf("got %v", err)
	}
	// Unknown HEAD1 algorithm.
	m.header(0, 0, 5, 0)
	m.head(0, typeHead1, false, 0, 1)
	_, err := Map(m.params(8192))
	if !isRule(err, "unknown HEAD1") || !errors.Is(err, decompress.ErrUnsupported) {
		t.Fatalf("got %v", err)
	}
	// Index past the end of metadata.
	m.header(0, 0, 0, 0)
	p := m.params(1 << 40)
	if _, err := Map(p); !isRule(err, "past the end of metadata") && !isRule(err, "out of range") {
		t.Fatalf("got %v", err)
	}
	// Compact: inconsistent big pcluster bits.
	p = m.params(8192)
	p.Compact = true
	m.header(0, adviseBig1, 0, 0)
	if _, err := Map(p); !isRule(err, "inconsistent BIG_PCLUSTER") {
		t.Fatalf("got %v", err)
	}
}

func TestExtentsMode(t *testing.T) {
	// recsz 4: a base pstart, then one plen per lcluster.
	m := newMeta()
	m.header(0, adviseExtents, 0, 0)
	m.u64(hoff+8, 0x10000)
	m.u32(hoff+16, 1<<extPlenFmtBit|4096) // lz4
	m.u32(hoff+20, 0)                     // hole
	m.u32(hoff+24, 100)                   // plain
	size := int64(2*4096 + 50)
	wantExtents(t, mustMap(t, m.params(size)), []Extent{
		{LStart: 0, LLen: 4096, Kind: Blocks, PStart: 0x10000, PLen: 4096, Alg: decompress.LZ4},
		{LStart: 4096, LLen: 4096, Kind: Hole},
		{LStart: 8192, LLen: 50, Kind: Blocks, PStart: 0x10000 + 4096, PLen: 100, Alg: decompress.Shifted},
	})

	// recsz 8: plen + pstart_lo per lcluster; interlaced aligned plain.
	m = newMeta()
	m.header(0, adviseExtents|1<<1|adviseInterlaced, 0, 0)
	m.u32(hoff+8, 4096)
	m.u32(hoff+12, 0x20000)
	m.u32(hoff+16, 3<<extPlenFmtBit|extPlenPartial|777) // deflate, partial
	m.u32(hoff+20, 0x30000)
	wantExtents(t, mustMap(t, m.params(4096+10)), []Extent{
		{LStart: 0, LLen: 4096, Kind: Blocks, PStart: 0x20000, PLen: 4096, Alg: decompress.Interlaced},
		{LStart: 4096, LLen: 10, Kind: Blocks, PStart: 0x30000, PLen: 777, Alg: decompress.Deflate, Partial: true},
	})

	// recsz 16: sorted records with 64-bit pstart; leading hole.
	m = newMeta()
	m.header(3, adviseExtents|2<<1, 0, 0)
	rec := func(i int, recsz int, plen uint32, pa uint64, la uint64) {
		off := (hoff+8+recsz-1)&^(recsz-1) + i*recsz
		m.u32(off, plen)
		m.u32(off+4, uint32(pa))
		m.u32(off+8, uint32(pa>>32))
		m.u32(off+12, uint32(la))
		if recsz == 32 {
			m.u32(off+16, uint32(la>>32))
		}
	}
	rec(0, 16, 1<<extPlenFmtBit|3000, 1<<33, 100)
	rec(1, 16, 4<<extPlenFmtBit|500, 99999, 10000)
	rec(2, 16, 0, 0, 15000)
	wantExtents(t, mustMap(t, m.params(20000)), []Extent{
		{LStart: 0, LLen: 100, Kind: Hole},
		{LStart: 100, LLen: 9900, Kind: Blocks, PStart: 1 << 33, PLen: 3000, Alg: decompress.LZ4},
		{LStart: 10000, LLen: 5000, Kind: Blocks, PStart: 99999, PLen: 500, Alg: decompress.Zstd},
		{LStart: 15000, LLen: 5000, Kind: Hole},
	})
	// Records out of order.
	rec(2, 16, 0, 0, 5000)
	if _, err := Map(m.params(20000)); !isRule(err, "not after") {
		t.Fatalf("got %v", err)
	}
	// Oversized pcluster.
	rec(2, 16, 1<<extPlenFmtBit|(1<<20+1), 0, 15000)
	if _, err := Map(m.params(20000)); !errors.Is(err, decompress.ErrUnsupported) {
		t.Fatalf("got %v", err)
	}
	// 48-bit overflow.
	rec(2, 16, 1<<extPlenFmtBit|4096, 1<<61, 15000)
	if _, err := Map(m.params(20000)); !isRule(err, "48-bit") {
		t.Fatalf("got %v", err)
	}

	// recsz 32 with a fragment tail: fragmentoff = plen | pstart << 32.
	m = newMeta()
	m.header(2, adviseExtents|3<<1|adviseFragment, 0, 0)
	rec(0, 32, 1<<extPlenFmtBit|4096, 0x40000, 0)
	rec(1, 32, 0xABC, 2, 1<<32)
	size = int64(1<<32 + 10)
	p := m.params(size)
	// lstart_hi must be honoured: [0, 4 GiB) is one (oversized) extent.
	if _, err := Map(p); !errors.Is(err, decompress.ErrUnsupported) {
		t.Fatalf("got %v", err)
	}
	rec(1, 32, 0xABC, 2, 8192)
	wantExtents(t, mustMap(t, m.params(9000)), []Extent{
		{LStart: 0, LLen: 8192, Kind: Blocks, PStart: 0x40000, PLen: 4096, Alg: decompress.LZ4},
		{LStart: 8192, LLen: 808, Kind: Fragment, PStart: 2<<32 | 0xABC, PLen: 808},
	})
}

func TestFind(t *testing.T) {
	exts := []Extent{{LStart: 0, LLen: 10}, {LStart: 10, LLen: 5}, {LStart: 15, LLen: 100}}
	for off, want := range map[int64]int{0: 0, 9: 0, 10: 1, 14: 1, 15: 2, 114: 2, 115: -1, -1: -1} {
		if got := Find(exts, off); got != want {
			t.Errorf("Find(%d) = %d, want %d", off, got, want)
		}
	}
}

func TestDecodeHelper(t *testing.T) {
	src := []byte("hello, erofs fragment data")
	e := Extent{LStart: 100, LLen: int64(len(src)), Kind: Fragment}
	dst := make([]byte, 5)
	if err := Decode(e, src, dst, 7, true, 12); err != nil || string(dst) != "erofs" {
		t.Fatalf("%q %v", dst, err)
	}
	h := Extent{LLen: 10, Kind: Hole}
	dst = []byte{1, 2, 3}
	if err := Decode(h, nil, dst, 2, true, 12); err != nil || !bytes.Equal(dst, []byte{0, 0, 0}) {
		t.Fatalf("%v %v", dst, err)
	}
	if err := Decode(h, nil, make([]byte, 5), 6, true, 12); err == nil {
		t.Fatal("read past extent accepted")
	}
}

func isRule(err error, sub string) bool {
	var ze *Error
	return errors.As(err, &ze) && strings.Contains(ze.Rule, sub)
}
