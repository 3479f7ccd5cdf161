package verify

import (
	"math"
	"sort"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

// region is one piece of the unified (device_id 0) address space, in bytes.
type region struct {
	start, end int64
	dev        int // 0 primary, N device N
}

// mulSat multiplies non-negative a and b, saturating at MaxInt64.
func mulSat(a uint64, b int64) int64 {
	if b <= 0 {
		return 0
	}
	if a > uint64(math.MaxInt64/b) {
		return math.MaxInt64
	}
	return int64(a) * b
}

func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

func roundUp(v, bs int64) int64 {
	if v > math.MaxInt64-bs {
		return math.MaxInt64
	}
	return (v + bs - 1) / bs * bs
}

// checkDevices checks the superblock block count and the device table and
// sets up the unified address regions.
func (c *checker) checkDevices() {
	sb, bs := c.sb, c.bs
	c.psize = c.img.Size()
	c.pblk = int64(sb.Blocks)
	if c.pblk == 0 {
		c.pblk = (c.psize + bs - 1) / bs
	}
	if !c.opt.Flat && mulSat(uint64(c.pblk), bs) > roundUp(c.psize, bs) {
		c.add(Problem{Off: erofs.SuperblockOffset + 0x24, Rule: RuleSbBlocks,
			Detail: sprintf("superblock declares %d blocks (%d bytes), the image has %d bytes", c.pblk, mulSat(uint64(c.pblk), bs), c.psize)})
	}
	c.regions = []region{{0, mulSat(uint64(c.pblk), bs), 0}}
	is48 := sb.HasIncompat(erofs.Incompat48Bit)
	n := sb.NumDevices()
	if n > 0 && c.opt.DeviceSizes == nil && !c.opt.Flat {
		c.note("the %d extra device(s) were not given: their data is not read and only checked against the device table", n)
	}
	for i, d := range sb.Devices {
		if i >= n {
			break
		}
		off := sb.DeviceTableOffset() + int64(i)*erofs.DeviceSlotSize
		slot := &pathNode{parent: &pathNode{}, name: sprintf("<device %d>", i+1)}
		info := devInfo{slot: d, realSize: -1}
		if c.opt.DeviceSizes != nil && i < len(c.opt.DeviceSizes) {
			info.realSize = c.opt.DeviceSizes[i]
		}
		c.devs = append(c.devs, info)
		if !is48 && (d.BlocksHi != 0 || d.UniAddrHi != 0) {
			c.addf(slot, 0, off+0x48, RuleSlotHi, "blocks_hi %#x / uniaddr_hi %#x set without the 48BIT feature", d.BlocksHi, d.UniAddrHi)
		}
		for j, v := range d.Reserved {
			if v != 0 {
				c.addf(slot, 0, off+0x4C+int64(j), RuleSlotReserved, "reserved byte %d is %#x", j, v)
				break
			}
		}
		blocksB := mulSat(d.Blocks, bs)
		uniB := mulSat(d.UniAddr, bs)
		switch {
		case c.opt.Flat:
			if d.Blocks == 0 || d.UniAddr == 0 {
				c.addf(slot, 0, off+0x40, RuleSlotUnmapped, "flat device: slot has blocks %d, uniaddr %d (not placed)", d.Blocks, d.UniAddr)
			} else if addSat(uniB, blocksB) > c.psize {
				c.addf(slot, 0, off+0x40, RuleSlotDevice, "slot ends at byte %d, the flat device has %d", addSat(uniB, blocksB), c.psize)
			}
		case info.realSize >= 0 && d.Blocks != 0 && blocksB > roundUp(info.realSize, bs):
			c.addf(slot, 0, off+0x40, RuleSlotDevice, "slot declares %d blocks (%d bytes), the device has %d bytes", d.Blocks, blocksB, info.realSize)
		}
		if d.Blocks == 0 && !c.opt.Flat {
			c.note("device %d: slot blocks = 0 (as mkfs.erofs 1.5 writes): its ranges are checked against the device's real size only", i+1)
		}
		if d.UniAddr != 0 && d.Blocks != 0 {
			c.regions = append(c.regions, region{uniB, addSat(uniB, blocksB), i + 1})
		}
	}
	sort.Slice(c.regions, func(i, j int) bool { return c.regions[i].start < c.regions[j].start })
	for i := 1; i < len(c.regions); i++ {
		a, b := c.regions[i-1], c.regions[i]
		if b.start < a.end {
			c.regOverlap = true
			name := func(d int) string {
				if d == 0 {
					return "the primary"
				}
				return sprintf("device %d", d)
			}
			dev := max(a.dev, b.dev)
			off := sb.DeviceTableOffset() + int64(dev-1)*erofs.DeviceSlotSize + 0x44
			c.add(Problem{Path: sprintf("/<device %d>", dev), Off: off, Rule: RuleSlotOverlap,
				Detail: sprintf("unified range of %s [%#x, %#x) overlaps %s [%#x, %#x)", name(b.dev), b.start, b.end, name(a.dev), a.start, a.end)})
		}
	}
}

// findRegions returns the regions intersecting [start, end).
func (c *checker) findRegions(start, end int64) (hit []region) {
	rs := c.regions
	i := 0
	if !c.regOverlap && len(rs) > 16 {
		i = sort.Search(len(rs), func(k int) bool { return rs[k].end > start })
		if i > 0 {
			i--
		}
	}
	for ; i < len(rs); i++ {
		r := rs[i]
		if !c.regOverlap && r.start >= end {
			break
		}
		if r.start < end && start < r.end {
			hit = append(hit, r)
			if len(hit) > 1 {
				return hit
			}
		}
	}
	return hit
}

// checkRanges checks every data range of ino; it returns false when a
// problem was reported.
func (c *checker) checkRanges(ino *erofs.Inode, path *pathNode, rs []erofs.Range) bool {
	ok := true
	bad := func(off int64, space, rule, format string, a ...any) {
		ok = false
		c.add(Problem{Path: path.String(), Nid: ino.Nid, Off: off, Space: space, Rule: rule, Detail: sprintf(format, a...)})
	}
	bs := c.bs
	next := int64(0)
	for _, r := range rs {
		if r.Logical != next || r.Length <= 0 {
			bad(ino.Off, "", RuleRangeCoverage, "range %v does not follow logical offset %d", r, next)
			return false
		}
		next = addSat(r.Logical, r.Length)
		switch r.Kind {
		case erofs.KindHole:
		case erofs.KindInline:
			n := r.PhysLen
			if r.Phys < 0 || n < 0 {
				bad(ino.Off, "", RuleRangeOverflow, "inline range %v", r)
				continue
			}
			if r.Phys%bs+n > bs {
				bad(r.Phys, spaceMeta(r.InMetabox), RuleInlineBlock, "inline data of %d bytes at block offset %d crosses a block", n, r.Phys%bs)
			}
			if !r.InMetabox {
				if lim := min(c.psize, mulSat(uint64(c.pblk), bs)); addSat(r.Phys, n) > lim {
					bad(r.Phys, "", RuleRangeDevice, "inline data [%#x, %#x) beyond the primary (%d bytes)", r.Phys, addSat(r.Phys, n), lim)
				}
			}
		case erofs.KindFragment:
			if c.packedSize < 0 {
				bad(ino.Off, "", RuleFragment, "fragment but no packed inode")
			} else if r.Phys < 0 || addSat(r.Phys, r.Length) > c.packedSize {
				bad(r.Phys, "logical", RuleFragment, "fragment [%d, +%d) beyond the packed inode (%d bytes)", r.Phys, r.Length, c.packedSize)
			}
		case erofs.KindFlat, erofs.KindChunk, erofs.KindPcluster:
			readLen, store := r.Length, roundUp(r.Length, bs)
			if r.Kind == erofs.KindPcluster {
				readLen, store = r.PhysLen, r.PhysLen
			}
			if r.Phys < 0 || readLen < 0 || addSat(r.Phys, store) == math.MaxInt64 {
				bad(ino.Off, "", RuleRangeOverflow, "range %v overflows", r)
				continue
			}
			if !c.checkPhys(ino, path, r, readLen, store) {
				ok = false
			}
		default:
			bad(ino.Off, "", RuleDataDecode, "unknown range kind %v", r)
		}
	}
	if next != ino.Size {
		bad(ino.Off, "", RuleRangeCoverage, "ranges cover %d bytes, i_size is %d", next, ino.Size)
	}
	return ok
}

func spaceMeta(m bool) string {
	if m {
		return "metabox"
	}
	return ""
}

// checkPhys checks one block range on device r.Device.
func (c *checker) checkPhys(ino *erofs.Inode, path *pathNode, r erofs.Range, readLen, store int64) bool {
	ok := true
	bad := func(off int64, space, rule, format string, a ...any) {
		ok = false
		c.add(Problem{Path: path.String(), Nid: ino.Nid, Off: off, Space: space, Rule: rule, Detail: sprintf(format, a...)})
	}
	start, end := r.Phys, r.Phys+store
	if r.Device == 0 {
		hit := c.findRegions(start, end)
		switch {
		case len(hit) == 0:
			bad(start, "", RuleRangeDevice, "%s range [%#x, %#x) is beyond the primary (%d blocks) and every device", r.Kind, start, end, c.pblk)
		case len(hit) > 1:
			bad(start, "", RuleRangeStraddle, "%s range [%#x, %#x) straddles device boundaries (%s)", r.Kind, start, end, describe(hit))
		case start < hit[0].start || end > hit[0].end:
			bad(start, "", RuleRangeDevice, "%s range [%#x, %#x) runs beyond %s", r.Kind, start, end, describe(hit))
		case hit[0].dev == 0:
			if addSat(start, readLen) > c.psize {
				bad(start, "", RuleRangeDevice, "%s range [%#x, %#x) beyond the end of the primary (%d bytes)", r.Kind, start, start+readLen, c.psize)
			}
		default:
			d := c.devs[hit[0].dev-1]
			in := start - hit[0].start
			if c.opt.Flat {
				if addSat(start, readLen) > c.psize {
					bad(start, "", RuleRangeDevice, "%s range [%#x, %#x) beyond the flat device (%d bytes)", r.Kind, start, start+readLen, c.psize)
				}
			} else if d.realSize >= 0 && addSat(in, readLen) > d.realSize {
				bad(start, "", RuleRangeDevice, "%s range at device %d bytes [%#x, %#x) beyond its real size %d", r.Kind, hit[0].dev, in, in+readLen, d.realSize)
			}
		}
		return ok
	}
	if r.Device < 0 || r.Device > len(c.devs) {
		bad(start, "", RuleChunkDevCount, "%s range on device %d, the image has %d", r.Kind, r.Device, len(c.devs))
		return false
	}
	d := c.devs[r.Device-1]
	space := sprintf("device %d", r.Device)
	if d.slot.Blocks != 0 && end > mulSat(d.slot.Blocks, c.bs) {
		bad(start, space, RuleRangeSlot, "%s range [%#x, %#x) beyond the slot's %d blocks", r.Kind, start, end, d.slot.Blocks)
	}
	switch {
	case c.opt.Flat:
		if d.slot.Blocks == 0 || d.slot.UniAddr == 0 {
			return ok // slot-unmapped already reported
		}
		u := mulSat(d.slot.UniAddr, c.bs)
		if addSat(addSat(u, start), readLen) > c.psize {
			bad(start, space, RuleRangeDevice, "%s range [%#x, %#x) beyond the flat device (%d bytes)", r.Kind, start, start+readLen, c.psize)
		}
	case d.realSize >= 0:
		if addSat(start, readLen) > d.realSize {
			bad(start, space, RuleRangeDevice, "%s range [%#x, %#x) beyond the device's real size %d", r.Kind, start, start+readLen, d.realSize)
		}
	}
	return ok
}

func describe(hit []region) string {
	s := ""
	for i, h := range hit {
		if i > 0 {
			s += ", "
		}
		if h.dev == 0 {
			s += sprintf("primary [%#x, %#x)", h.start, h.end)
		} else {
			s += sprintf("device %d [%#x, %#x)", h.dev, h.start, h.end)
		}
	}
	if s == "" {
		return "no device"
	}
	return s
}
