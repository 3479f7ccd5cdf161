package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Descriptor flags.
const (
	descNext     = 1
	descWrite    = 2
	descIndirect = 4
	descSize     = 16
	// maxIndirect bounds an indirect table (the spec bounds a chain by the
	// queue size; Linux sizes indirect tables by seg_max + 2).
	maxIndirect          = 1024
	availFlagNoInterrupt = 1
)

// vring is the view of one split virtqueue in guest memory.
type vring struct {
	num      uint16
	desc     []byte // 16 * num
	avail    []byte // 6 + 2*num: flags, idx, ring[num], used_event
	used     []byte // 6 + 8*num: flags, idx, ring[num], avail_event
	eventIdx bool

	lastAvail uint16 // next avail entry to take
	usedIdx   uint16 // next used entry to fill
}

var fenceWord uint64

// fence is a full memory barrier (a locked instruction on amd64, a
// sequentially consistent atomic elsewhere): the used index must be
// visible before the event index is read, and avail_event before idx is
// re-read.
func fence() { atomic.AddUint64(&fenceWord, 1) }

func le16(b []byte) uint16 { return binary.LittleEndian.Uint16(b) }

// loadAvailIdx reads the guest-written avail idx with acquire ordering
// (the ring entries and descriptors are read after it): a 32-bit atomic
// load of the aligned word holding it, flags|idx when avail is 4-aligned,
// idx|ring[0] when it is 2 mod 4 (the ring has at least one entry).
// Only a mapping at an odd address (an odd mmap_offset) falls back to a
// plain load followed by a full fence. The ring is little-endian whatever
// the host: the word's bytes are decoded as they lie in memory.
func loadAvailIdx(avail []byte) uint16 {
	p := unsafe.Pointer(&avail[0])
	switch uintptr(p) % 4 {
	case 0:
		return wordLE16(atomic.LoadUint32((*uint32)(p)), 2)
	case 2:
		return wordLE16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&avail[2]))), 0)
	}
	idx := le16(avail[2:])
	fence()
	return idx
}

// wordLE16 decodes the little-endian 16-bit field at byte i of a 32-bit
// word loaded from memory in host byte order.
func wordLE16(w uint32, i int) uint16 {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], w)
	return binary.LittleEndian.Uint16(b[i:])
}

// storeUsedIdx publishes the used index (release): one 32-bit atomic
// store of the used ring's flags (ours, kept as they are) and idx, in
// the ring's little-endian byte order.
func (v *vring) storeUsedIdx(idx uint16) {
	p := unsafe.Pointer(&v.used[0])
	if uintptr(p)%4 == 0 {
		var b [4]byte
		copy(b[:2], v.used[:2])
		binary.LittleEndian.PutUint16(b[2:], idx)
		atomic.StoreUint32((*uint32)(p), binary.NativeEndian.Uint32(b[:]))
		return
	}
	fence()
	binary.LittleEndian.PutUint16(v.used[2:], idx)
	fence()
}

// ringSizes are the byte sizes of the three parts of a ring of num entries.
func ringSizes(num uint16) (desc, avail, used uint64) {
	n := uint64(num)
	return 16 * n, 6 + 2*n, 6 + 8*n
}

// newVring maps a ring's three parts through the memory table (front-end
// addresses) after checking their alignment.
func newVring(mem *memTable, num uint16, a vringAddr, eventIdx bool) (*vring, error) {
	if num == 0 || num&(num-1) != 0 {
		return nil, fmt.Errorf("queue size %d", num)
	}
	if a.Desc%16 != 0 || a.Avail%2 != 0 || a.Used%4 != 0 {
		return nil, fmt.Errorf("misaligned ring (desc %#x avail %#x used %#x)", a.Desc, a.Avail, a.Used)
	}
	ds, as, us := ringSizes(num)
	v := &vring{num: num, eventIdx: eventIdx}
	var err error
	if v.desc, err = mem.userSlice(a.Desc, ds); err != nil {
		return nil, fmt.Errorf("descriptor table: %w", err)
	}
	if v.avail, err = mem.userSlice(a.Avail, as); err != nil {
		return nil, fmt.Errorf("available ring: %w", err)
	}
	if v.used, err = mem.userSlice(a.Used, us); err != nil {
		return nil, fmt.Errorf("used ring: %w", err)
	}
	return v, nil
}

// chain is a walked descriptor chain: device-readable then device-writable
// pieces of guest memory.
type chain struct {
	head     uint16
	readable [][]byte
	writable [][]byte
	rlen     uint64
	wlen     uint64
}

func (c *chain) reset(head uint16) {
	c.head = head
	c.readable, c.writable = c.readable[:0], c.writable[:0]
	c.rlen, c.wlen = 0, 0
}

var errChain = errors.New("bad descriptor chain")

// maxChainBytes bounds the bytes of one chain (a request is never larger
// than this; Linux's largest is far smaller).
const maxChainBytes = 1 << 30

// walk follows the chain starting at head: direct descriptors (at most num
// of them, which also ends loops), one level of INDIRECT table (no NEXT
// alongside it, no nested INDIRECT), every buffer translated through mem,
// readable descriptors before writable ones.
func walk(mem *memTable, desc []byte, num uint16, head uint16, c *chain) error {
	c.reset(head)
	if head >= num {
		return fmt.Errorf("%w: head %d >= queue size %d", errChain, head, num)
	}
	table, tableLen := desc, uint32(num)
	idx := uint32(head)
	count, limit := 0, int(num)
	indirect := false
	for {
		if idx >= tableLen {
			return fmt.Errorf("%w: descriptor %d beyond table of %d", errChain, idx, tableLen)
		}
		if count++; count > limit {
			return fmt.Errorf("%w: more than %d descriptors (loop?)", errChain, limit)
		}
		d := table[idx*descSize : idx*descSize+descSize]
		addr := binary.LittleEndian.Uint64(d)
		n := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		if flags&descIndirect != 0 {
			if indirect {
				return fmt.Errorf("%w: nested indirect table", errChain)
			}
			if flags&descNext != 0 {
				return fmt.Errorf("%w: indirect descriptor with NEXT", errChain)
			}
			if n == 0 || n%descSize != 0 || n/descSize > maxIndirect {
				return fmt.Errorf("%w: indirect table of %d bytes", errChain, n)
			}
			t, err := mem.slice(addr, uint64(n))
			if err != nil {
				return fmt.Errorf("%w: indirect table: %v", errChain, err)
			}
			indirect = true
			table, tableLen, idx = t, n/descSize, 0
			count, limit = 0, int(tableLen)
			continue
		}
		if flags&descWrite != 0 {
			c.wlen += uint64(n)
			if c.wlen > maxChainBytes {
				return fmt.Errorf("%w: more than %d bytes", errChain, maxChainBytes)
			}
			var err error
			if c.writable, err = mem.segments(c.writable, addr, uint64(n)); err != nil {
				return fmt.Errorf("%w: %v", errChain, err)
			}
		} else {
			if len(c.writable) > 0 || c.wlen > 0 {
				return fmt.Errorf("%w: readable descriptor after a writable one", errChain)
			}
			c.rlen += uint64(n)
			if c.rlen > maxChainBytes {
				return fmt.Errorf("%w: more than %d bytes", errChain, maxChainBytes)
			}
			var err error
			if c.readable, err = mem.segments(c.readable, addr, uint64(n)); err != nil {
				return fmt.Errorf("%w: %v", errChain, err)
			}
		}
		if flags&descNext == 0 {
			return nil
		}
		idx = uint32(next)
	}
}

// availHead returns the head of avail entry i (mod num).
func (v *vring) availHead(i uint16) uint16 {
	o := 4 + 2*uint32(i%v.num)
	return le16(v.avail[o:])
}

// pushUsed writes one used element (not yet published).
func (v *vring) pushUsed(head uint16, n uint32) {
	o := 4 + 8*uint32(v.usedIdx%v.num)
	binary.LittleEndian.PutUint32(v.used[o:], uint32(head))
	binary.LittleEndian.PutUint32(v.used[o+4:], n)
	v.usedIdx++
}

// needNotify reports whether the driver wants an interrupt after the used
// index moved from old to v.usedIdx (EVENT_IDX: vring_need_event).
func (v *vring) needNotify(old uint16) bool {
	fence()
	if v.eventIdx {
		ev := le16(v.avail[4+2*uint32(v.num):])
		return v.usedIdx-ev-1 < v.usedIdx-old
	}
	return le16(v.avail)&availFlagNoInterrupt == 0
}

// setAvailEvent tells the driver (EVENT_IDX) which avail index to kick at.
func (v *vring) setAvailEvent(idx uint16) {
	binary.LittleEndian.PutUint16(v.used[4+8*uint32(v.num):], idx)
	fence()
}
