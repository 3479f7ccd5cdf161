package vhostuser

import (
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"
)

// region is one mapped memory region: guest-physical [gpa, gpa+len) and
// front-end virtual [uva, uva+len) both address data.
type region struct {
	gpa, uva uint64
	data     []byte // the region (after mmap_offset)
	mapping  []byte // what to munmap (nil: not ours, tests)
}

// memTable translates guest addresses into the mapped regions. Every
// access goes through it, with bounds checks.
type memTable struct {
	regions []region // sorted by gpa
}

var errAddr = errors.New("address outside guest memory")

// mapMemTable mmaps each region's fd (read-write, shared: the used ring
// and the device-writable buffers are written). The fds are closed.
func mapMemTable(rs []memRegion, fds []int) (*memTable, error) {
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if len(rs) != len(fds) {
		return nil, fmt.Errorf("%d regions, %d fds", len(rs), len(fds))
	}
	t := &memTable{}
	for i, r := range rs {
		var st unix.Stat_t
		if err := unix.Fstat(fds[i], &st); err != nil {
			t.unmap()
			return nil, fmt.Errorf("region %d: fstat: %v", i, err)
		}
		end := r.MmapOffset + r.Size
		if st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) < end {
			t.unmap()
			return nil, fmt.Errorf("region %d: file of %d bytes, region ends at %d", i, st.Size, end)
		}
		if end > 1<<47 || int64(end) < 0 {
			t.unmap()
			return nil, fmt.Errorf("region %d: %d bytes", i, end)
		}
		// mmap from 0 (the offset need not be page-aligned), as libvhost-user.
		m, err := unix.Mmap(fds[i], 0, int(end), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
		if err != nil {
			t.unmap()
			return nil, fmt.Errorf("region %d: mmap %d bytes: %v", i, end, err)
		}
		t.regions = append(t.regions, region{gpa: r.GuestAddr, uva: r.UserAddr, data: m[r.MmapOffset:end:end], mapping: m})
	}
	t.sort()
	return t, nil
}

func (t *memTable) sort() {
	sort.Slice(t.regions, func(i, j int) bool { return t.regions[i].gpa < t.regions[j].gpa })
}

func (t *memTable) unmap() {
	if t == nil {
		return
	}
	for _, r := range t.regions {
		if r.mapping != nil {
			unix.Munmap(r.mapping)
		}
	}
	t.regions = nil
}

// find returns the region holding guest-physical addr.
func (t *memTable) find(addr uint64) *region {
	i := sort.Search(len(t.regions), func(i int) bool { return t.regions[i].gpa+uint64(len(t.regions[i].data)) > addr })
	if i < len(t.regions) && t.regions[i].gpa <= addr {
		return &t.regions[i]
	}
	return nil
}

// slice returns guest-physical [addr, addr+n) when it lies inside one region.
func (t *memTable) slice(addr, n uint64) ([]byte, error) {
	r := t.find(addr)
	if r == nil {
		return nil, fmt.Errorf("%w: %#x", errAddr, addr)
	}
	off := addr - r.gpa
	if n > uint64(len(r.data))-off {
		return nil, fmt.Errorf("%w: %#x+%d crosses the end of its region", errAddr, addr, n)
	}
	return r.data[off : off+n : off+n], nil
}

// segments appends the pieces of guest-physical [addr, addr+n), which may
// span adjacent regions.
func (t *memTable) segments(dst [][]byte, addr, n uint64) ([][]byte, error) {
	if addr+n < addr {
		return dst, fmt.Errorf("%w: %#x+%d wraps", errAddr, addr, n)
	}
	for n > 0 {
		r := t.find(addr)
		if r == nil {
			return dst, fmt.Errorf("%w: %#x", errAddr, addr)
		}
		off := addr - r.gpa
		k := min(n, uint64(len(r.data))-off)
		dst = append(dst, r.data[off:off+k:off+k])
		addr += k
		n -= k
	}
	return dst, nil
}

// userSlice translates a front-end virtual range (the ring addresses of
// SET_VRING_ADDR) that must lie inside one region.
func (t *memTable) userSlice(uva, n uint64) ([]byte, error) {
	for i := range t.regions {
		r := &t.regions[i]
		if uva >= r.uva && uva-r.uva < uint64(len(r.data)) {
			off := uva - r.uva
			if n > uint64(len(r.data))-off {
				return nil, fmt.Errorf("%w: front-end address %#x+%d crosses the end of its region", errAddr, uva, n)
			}
			return r.data[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("%w: front-end address %#x", errAddr, uva)
}
