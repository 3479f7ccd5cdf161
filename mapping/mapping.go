// Package mapping plans and looks up the unified (flat) address space of a
// multi-device EROFS image: the primary image occupies blocks [0, P), and
// each extra device i occupies [uniaddr_i, uniaddr_i + blocks_i). Gaps read
// as zeros. The package knows nothing about the EROFS on-disk layout beyond
// the numbers it is given.
package mapping

import (
	"fmt"
	"sort"
)

// Slot is what a device-table slot says about one extra device.
type Slot struct {
	Blocks  uint64 // 0: unknown, take it from the blob size
	UniAddr uint64 // 0: unassigned, plan it
}

// Input describes what is known before planning.
type Input struct {
	BlockBits     uint8   // log2 of the block size
	PrimaryBlocks uint64  // blocks of the primary image
	Slots         []Slot  // one per extra device, in slot order
	BlobSizes     []int64 // actual byte size of each blob, same order as Slots
	Align         uint64  // alignment of assigned uniaddrs, in blocks (0 or 1: none)
	AddrBits      uint    // 32, or 48 with the 48-bit feature
	Names         []string
}

// Extent is one device's range in the unified space, in blocks.
type Extent struct {
	Dev    int    // 0 = primary, i = extra device i (slot i-1)
	Start  uint64 // first unified block
	Blocks uint64
}

// End is the first block after the extent.
func (e Extent) End() uint64 { return e.Start + e.Blocks }

// Map is a planned unified address space. It is immutable and safe for
// concurrent use.
type Map struct {
	bits    uint8
	byDev   []Extent // index = Dev
	sorted  []Extent // by Start
	starts  []int64  // byte start of sorted[i], for binary search
	ends    []int64
	size    int64
	changed []bool // slot i's blocks or uniaddr were computed (byDev index i+1)
}

// Plan builds the map: existing non-zero uniaddrs are kept, missing ones are
// assigned after the previous extent aligned to in.Align, and missing block
// counts come from the blob size. It rejects overlaps, ranges beyond the
// address width and blobs shorter than their slot.
func Plan(in Input) (*Map, error) {
	if in.BlockBits < 9 || in.BlockBits > 16 {
		return nil, fmt.Errorf("mapping: block size bits %d out of range 9..16", in.BlockBits)
	}
	if len(in.BlobSizes) != len(in.Slots) {
		return nil, fmt.Errorf("mapping: %d blob sizes for %d slots", len(in.BlobSizes), len(in.Slots))
	}
	bits := in.AddrBits
	if bits == 0 {
		bits = 32
	}
	limit := uint64(1) << bits
	bs := uint64(1) << in.BlockBits
	align := in.Align
	if align == 0 {
		align = 1
	}
	name := func(i int) string {
		if i < len(in.Names) && in.Names[i] != "" {
			return fmt.Sprintf("device %d (%s)", i+1, in.Names[i])
		}
		return fmt.Sprintf("device %d", i+1)
	}
	if in.PrimaryBlocks == 0 {
		return nil, fmt.Errorf("mapping: primary image has 0 blocks")
	}
	if in.PrimaryBlocks > limit {
		return nil, fmt.Errorf("mapping: primary image has %d blocks, beyond the %d-bit address space", in.PrimaryBlocks, bits)
	}
	m := &Map{bits: in.BlockBits, changed: make([]bool, len(in.Slots)+1)}
	m.byDev = append(m.byDev, Extent{Dev: 0, Start: 0, Blocks: in.PrimaryBlocks})
	prevEnd := in.PrimaryBlocks
	for i, s := range in.Slots {
		size := in.BlobSizes[i]
		if size < 0 {
			return nil, fmt.Errorf("mapping: %s: negative size", name(i))
		}
		have := (uint64(size) + bs - 1) / bs
		blocks := s.Blocks
		if blocks == 0 {
			blocks = have
			m.changed[i+1] = true
			if blocks == 0 {
				return nil, fmt.Errorf("mapping: %s: blob is empty and its slot gives no block count", name(i))
			}
		} else if have < blocks {
			return nil, fmt.Errorf("mapping: %s: blob has %d bytes (%d blocks), shorter than the %d blocks its device slot declares",
				name(i), size, have, blocks)
		}
		start := s.UniAddr
		if start == 0 {
			start = (prevEnd + align - 1) / align * align
			if start < prevEnd { // overflow
				return nil, fmt.Errorf("mapping: %s: unified address overflows", name(i))
			}
			m.changed[i+1] = true
		}
		end := start + blocks
		if end < start || end > limit {
			return nil, fmt.Errorf("mapping: %s: blocks [%d, %d) extend beyond the %d-bit unified address space", name(i), start, end, bits)
		}
		m.byDev = append(m.byDev, Extent{Dev: i + 1, Start: start, Blocks: blocks})
		prevEnd = end
	}
	m.sorted = append([]Extent(nil), m.byDev...)
	sort.SliceStable(m.sorted, func(a, b int) bool { return m.sorted[a].Start < m.sorted[b].Start })
	for k := 1; k < len(m.sorted); k++ {
		p, c := m.sorted[k-1], m.sorted[k]
		if c.Start < p.End() {
			return nil, fmt.Errorf("mapping: %s blocks [%d, %d) overlap %s blocks [%d, %d)",
				devName(c.Dev, name), c.Start, c.End(), devName(p.Dev, name), p.Start, p.End())
		}
	}
	for _, e := range m.sorted {
		m.starts = append(m.starts, int64(e.Start)<<in.BlockBits)
		m.ends = append(m.ends, int64(e.End())<<in.BlockBits)
	}
	m.size = m.ends[len(m.ends)-1]
	return m, nil
}

func devName(dev int, name func(int) string) string {
	if dev == 0 {
		return "the primary image"
	}
	return name(dev - 1)
}

// Size is the byte size of the unified space (end of the last extent).
func (m *Map) Size() int64 { return m.size }

// BlockBits is log2 of the block size.
func (m *Map) BlockBits() uint8 { return m.bits }

// Device returns the extent of device dev (0 = primary).
func (m *Map) Device(dev int) Extent { return m.byDev[dev] }

// Devices is the number of extents including the primary.
func (m *Map) Devices() int { return len(m.byDev) }

// Computed reports whether slot dev's blocks or uniaddr were filled in by
// Plan rather than taken from the device table.
func (m *Map) Computed(dev int) bool { return m.changed[dev] }

// Lookup finds the extent containing byte off. It returns the extent, the
// byte offset inside that device, and the number of bytes from off to the
// end of that extent. ok is false for a hole; then n is the hole's length
// from off (0 at or past Size).
func (m *Map) Lookup(off int64) (e Extent, devOff int64, n int64, ok bool) {
	if off < 0 || off >= m.size {
		return Extent{}, 0, 0, false
	}
	// first extent whose end is > off
	i := sort.Search(len(m.ends), func(i int) bool { return m.ends[i] > off })
	if off < m.starts[i] {
		return Extent{}, 0, m.starts[i] - off, false
	}
	return m.sorted[i], off - m.starts[i], m.ends[i] - off, true
}

// Run is one contiguous piece of a byte range: a device extent or a hole.
type Run struct {
	Off    int64 // unified byte offset
	Len    int64
	Hole   bool
	Dev    int
	DevOff int64
}

// Runs splits [off, off+length) (clipped to Size) into runs.
func (m *Map) Runs(off, length int64, fn func(Run) error) error {
	end := off + length
	if end > m.size || end < off {
		end = m.size
	}
	for off < end {
		e, devOff, n, ok := m.Lookup(off)
		if n > end-off {
			n = end - off
		}
		r := Run{Off: off, Len: n, Hole: !ok}
		if ok {
			r.Dev, r.DevOff = e.Dev, devOff
		}
		if err := fn(r); err != nil {
			return err
		}
		off += n
	}
	return nil
}
