package vhostuser

import (
	"encoding/binary"
	"testing"
)

// FuzzParseMessage: any header and payload either parses into a checked
// message or is refused; never a panic.
func FuzzParseMessage(f *testing.F) {
	mt := make([]byte, 8+memRegionSize)
	binary.LittleEndian.PutUint32(mt, 1)
	binary.LittleEndian.PutUint64(mt[16:], 4096)
	f.Add(uint32(reqSetMemTable), uint32(1), mt, 1)
	f.Add(uint32(reqSetVringAddr), uint32(1), make([]byte, vringAddrSize), 0)
	f.Add(uint32(reqGetConfig), uint32(1), make([]byte, configHeaderSize), 0)
	f.Add(uint32(reqSetVringKick), uint32(1), make([]byte, 8), 1)
	f.Fuzz(func(t *testing.T, req, flags uint32, p []byte, nfds int) {
		hb := make([]byte, headerSize)
		binary.LittleEndian.PutUint32(hb, req)
		binary.LittleEndian.PutUint32(hb[4:], flags)
		binary.LittleEndian.PutUint32(hb[8:], uint32(len(p)))
		h, err := parseHeader(hb)
		if err != nil {
			return
		}
		m, err := parseMessage(h, p, nfds&15)
		if err != nil {
			return
		}
		if len(m.Regions) > maxRegions {
			t.Fatalf("%d regions", len(m.Regions))
		}
		for i, r := range m.Regions {
			for _, o := range m.Regions[:i] {
				if overlaps(r.GuestAddr, r.Size, o.GuestAddr, o.Size) {
					t.Fatal("overlapping regions accepted")
				}
			}
		}
		if m.Request == reqGetConfig && int(m.CfgOff+m.CfgSize) > maxConfigSize {
			t.Fatal("config range accepted")
		}
	})
}

// FuzzWalk: descriptor tables of any content over a fake two-region
// memory table; every piece of a walked chain lies inside guest memory
// and no chain is longer than the table allows.
func FuzzWalk(f *testing.F) {
	seed := make([]byte, 8*descSize)
	put := func(b []byte, i int, addr uint64, n uint32, flags, next uint16) {
		d := b[i*descSize:]
		binary.LittleEndian.PutUint64(d, addr)
		binary.LittleEndian.PutUint32(d[8:], n)
		binary.LittleEndian.PutUint16(d[12:], flags)
		binary.LittleEndian.PutUint16(d[14:], next)
	}
	put(seed, 0, 0x1000, 16, descNext, 1)
	put(seed, 1, 0x1100, 512, descNext|descWrite, 2)
	put(seed, 2, 0x20000, 1, descWrite, 0)
	f.Add(seed, uint16(0))
	loop := make([]byte, 8*descSize)
	put(loop, 0, 0x1000, 16, descNext, 1)
	put(loop, 1, 0x1000, 16, descNext, 0)
	f.Add(loop, uint16(0))
	ind := make([]byte, 8*descSize)
	put(ind, 3, 0x1000, 48, descIndirect, 0)
	f.Add(ind, uint16(3))
	f.Fuzz(func(t *testing.T, table []byte, head uint16) {
		const num = 8
		desc := make([]byte, num*descSize)
		copy(desc, table)
		r1 := make([]byte, 0x10000) // gpa 0x0000-0xffff
		r2 := make([]byte, 0x8000)  // gpa 0x20000-0x27fff
		copy(r1[0x1000:], table)    // indirect tables may point here
		mem := &memTable{regions: []region{{gpa: 0, uva: 0x100000, data: r1}, {gpa: 0x20000, uva: 0x200000, data: r2}}}
		var c chain
		if err := walk(mem, desc, num, head, &c); err != nil {
			return
		}
		inside := func(s []byte) bool {
			for _, r := range mem.regions {
				if len(s) == 0 {
					return true
				}
				base := &r.data[0]
				for i := range r.data {
					if &r.data[i] == &s[0] {
						return i+len(s) <= len(r.data)
					}
				}
				_ = base
			}
			return false
		}
		n := 0
		for _, s := range append(append([][]byte{}, c.readable...), c.writable...) {
			if !inside(s) {
				t.Fatal("piece outside guest memory")
			}
			n++
		}
		if n > 2*maxIndirect {
			t.Fatalf("%d pieces", n)
		}
	})
}
