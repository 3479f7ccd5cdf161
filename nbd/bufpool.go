package nbd

import (
	"math/bits"
	"sync"
)

const (
	minClassShift = 12 // 4 KiB
	maxClassShift = 25 // 32 MiB
)

// bufPool hands out read buffers with readHeadroom spare bytes in front, in
// power-of-two size classes, so that the read path allocates nothing in the
// steady state. Buffers are passed around as *[]byte so Put does not allocate.
type bufPool struct {
	classes [maxClassShift - minClassShift + 1]sync.Pool
}

func sizeClass(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// get returns a buffer whose length is at least readHeadroom+n.
func (p *bufPool) get(n int) *[]byte {
	c := sizeClass(n)
	if c >= len(p.classes) {
		b := make([]byte, readHeadroom+n)
		return &b
	}
	if v := p.classes[c].Get(); v != nil {
		return v.(*[]byte)
	}
	b := make([]byte, readHeadroom+(1<<(c+minClassShift)))
	return &b
}

func (p *bufPool) put(b *[]byte) {
	n := len(*b) - readHeadroom
	if n < 1<<minClassShift || n > 1<<maxClassShift || n&(n-1) != 0 {
		return // odd size: not from a class, let the GC have it
	}
	p.classes[sizeClass(n)].Put(b)
}
