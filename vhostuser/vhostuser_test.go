package vhostuser

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"math/rand"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
)

type memDev []byte

func (d memDev) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(d)) {
		return 0, errors.New("eof")
	}
	return copy(p, d[off:]), nil
}
func (d memDev) Size() int64 { return int64(len(d)) }

// frontend is a minimal vhost-user front-end over a socketpair and a memfd
// playing the guest's memory.
type frontend struct {
	t    *testing.T
	c    *net.UnixConn
	mem  []byte
	gpa  uint64
	uva  uint64
	num  uint16
	kick int
	call int
	// ring offsets in mem
	desc, avail, used uint64
	availIdx          uint16
	usedSeen          uint16
	base              uint16
	memfd             int
	done              chan error
}

const (
	testMem = 1 << 20
	testGPA = 0x100000
	testUVA = 0x7f0000000000
)

func newFrontend(t *testing.T, dev memDev, queues int) *frontend {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sock")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	srv, cli := mk(fds[0]), mk(fds[1])
	s, err := New(Config{Device: dev, Queues: queues, Serial: "serial-1234", Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	f := &frontend{t: t, c: cli, gpa: testGPA, uva: testUVA, num: 8, done: make(chan error, 1)}
	go func() { f.done <- s.ServeConn(srv) }()
	t.Cleanup(func() { cli.Close(); <-f.done })
	return f
}

func (f *frontend) send(req, flags uint32, p []byte, fds ...int) {
	f.t.Helper()
	b := make([]byte, headerSize+len(p))
	binary.LittleEndian.PutUint32(b, req)
	binary.LittleEndian.PutUint32(b[4:], flagVersion|flags)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(p)))
	copy(b[headerSize:], p)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := f.c.WriteMsgUnix(b, oob, nil); err != nil {
		f.t.Fatalf("%s: %v", reqName(req), err)
	}
}

func (f *frontend) recv(req uint32) []byte {
	f.t.Helper()
	h := make([]byte, headerSize)
	if _, err := readFull(f.c, h); err != nil {
		f.t.Fatalf("%s reply: %v", reqName(req), err)
	}
	if r := binary.LittleEndian.Uint32(h); r != req {
		f.t.Fatalf("reply to %d, want %d", r, req)
	}
	if fl := binary.LittleEndian.Uint32(h[4:]); fl != flagVersion|flagReply {
		f.t.Fatalf("reply flags %#x", fl)
	}
	p := make([]byte, binary.LittleEndian.Uint32(h[8:]))
	if _, err := readFull(f.c, p); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func readFull(c *net.UnixConn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (f *frontend) u64(req uint32) uint64 {
	f.send(req, 0, nil)
	return binary.LittleEndian.Uint64(f.recv(req))
}

func (f *frontend) ackd(req uint32, p []byte, fds ...int) {
	f.t.Helper()
	f.send(req, flagNeedReply, p, fds...)
	if v := binary.LittleEndian.Uint64(f.recv(req)); v != 0 {
		f.t.Fatalf("%s: ack %d", reqName(req), v)
	}
}

func state(i, n uint32) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint32(b, i)
	binary.LittleEndian.PutUint32(b[4:], n)
	return b
}

// setup negotiates, shares memory and starts queue 0.
func (f *frontend) setup(eventIdx bool) {
	t := f.t
	feats := f.u64(reqGetFeatures)
	if feats&featBlkRO == 0 || feats&featProtocolFeatures == 0 || feats&featBlkFlush != 0 {
		t.Fatalf("features %#x", feats)
	}
	want := uint64(featVersion1 | featProtocolFeatures | featBlkRO | featRingIndirect)
	if eventIdx {
		want |= featRingEventIdx
	}
	f.send(reqSetFeatures, 0, u64Bytes(want))
	if pf := f.u64(reqGetProtocolFeatures); pf&(protoConfig|protoReplyAck|protoMQ) != protoConfig|protoReplyAck|protoMQ {
		t.Fatalf("protocol features %#x", pf)
	}
	f.send(reqSetProtocolFeatures, 0, u64Bytes(protoConfig|protoReplyAck|protoMQ))
	f.ackd(reqSetOwner, nil)

	mfd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Skip("memfd:", err)
	}
	if err := unix.Ftruncate(mfd, testMem); err != nil {
		t.Fatal(err)
	}
	f.mem, err = unix.Mmap(mfd, 0, testMem, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(f.mem) })
	mt := make([]byte, 8+memRegionSize)
	binary.LittleEndian.PutUint32(mt, 1)
	binary.LittleEndian.PutUint64(mt[8:], f.gpa)
	binary.LittleEndian.PutUint64(mt[16:], testMem)
	binary.LittleEndian.PutUint64(mt[24:], f.uva)
	f.ackd(reqSetMemTable, mt, mfd)
	f.memfd = mfd
	t.Cleanup(func() { unix.Close(mfd) })

	f.desc, f.avail, f.used = 0, 16*uint64(f.num), 4096
	f.ackd(reqSetVringNum, state(0, uint32(f.num)))
	a := make([]byte, vringAddrSize)
	binary.LittleEndian.PutUint64(a[8:], f.uva+f.desc)
	binary.LittleEndian.PutUint64(a[16:], f.uva+f.used)
	binary.LittleEndian.PutUint64(a[24:], f.uva+f.avail)
	f.ackd(reqSetVringAddr, a)
	// A resumed ring (reconnection): used and avail indexes at f.base.
	binary.LittleEndian.PutUint16(f.mem[f.used+2:], f.base)
	binary.LittleEndian.PutUint16(f.mem[f.avail+2:], f.base)
	f.availIdx, f.usedSeen = f.base, f.base
	f.ackd(reqSetVringBase, state(0, uint32(f.base)))
	f.kick, _ = unix.Eventfd(0, unix.EFD_CLOEXEC)
	f.call, _ = unix.Eventfd(0, unix.EFD_CLOEXEC)
	t.Cleanup(func() { unix.Close(f.kick); unix.Close(f.call) })
	f.ackd(reqSetVringCall, u64Bytes(0), f.call)
	f.ackd(reqSetVringKick, u64Bytes(0), f.kick)
	f.ackd(reqSetVringEnable, state(0, 1))
}

// putDesc writes descriptor i of the table at mem offset tab.
func (f *frontend) putDesc(tab uint64, i int, addr uint64, n uint32, flags, next uint16) {
	d := f.mem[tab+uint64(i)*16:]
	binary.LittleEndian.PutUint64(d, addr)
	binary.LittleEndian.PutUint32(d[8:], n)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// submit makes head available, kicks and waits for its used entry.
func (f *frontend) submit(head uint16) (id, n uint32) {
	binary.LittleEndian.PutUint16(f.mem[f.avail+4+2*uint64(f.availIdx%f.num):], head)
	f.availIdx++
	// used_event (EVENT_IDX): interrupt once entry usedSeen is used.
	binary.LittleEndian.PutUint16(f.mem[f.avail+4+2*uint64(f.num):], f.usedSeen)
	binary.LittleEndian.PutUint16(f.mem[f.avail+2:], f.availIdx)
	unix.Write(f.kick, u64Bytes(1))
	for binary.LittleEndian.Uint16(f.mem[f.used+2:]) == f.usedSeen {
		var b [8]byte
		unix.Read(f.call, b[:]) // blocks until the back-end interrupts
	}
	e := f.mem[f.used+4+8*uint64(f.usedSeen%f.num):]
	f.usedSeen++
	return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])
}

const (
	hdrOff  = 0x2000
	dataOff = 0x10000
	statOff = 0x3000
	indOff  = 0x4000
)

func (f *frontend) header(typ uint32, sector uint64) {
	binary.LittleEndian.PutUint32(f.mem[hdrOff:], typ)
	binary.LittleEndian.PutUint64(f.mem[hdrOff+8:], sector)
	f.mem[statOff] = 0xff
}

func testDevice() memDev {
	d := make(memDev, 1<<20)
	rand.New(rand.NewSource(1)).Read(d)
	return d
}

func TestReadRequests(t *testing.T) {
	for _, ev := range []bool{false, true} {
		dev := testDevice()
		f := newFrontend(t, dev, 2)
		f.setup(ev)
		if q := f.u64(reqGetQueueNum); q != 2 {
			t.Fatalf("queues %d", q)
		}
		// config: capacity, blk_size, num_queues
		cr := make([]byte, configHeaderSize+60)
		binary.LittleEndian.PutUint32(cr[4:], 60)
		f.send(reqGetConfig, 0, cr)
		cfg := f.recv(reqGetConfig)[configHeaderSize:]
		if len(cfg) != 60 || binary.LittleEndian.Uint64(cfg) != uint64(len(dev))/512 ||
			binary.LittleEndian.Uint32(cfg[20:]) != 4096 || binary.LittleEndian.Uint16(cfg[34:]) != 2 {
			t.Fatalf("config %x", cfg)
		}

		for round := 0; round < 20; round++ {
			// direct chain: header, two data pieces, status
			sector := uint64(round * 7)
			f.header(blkTIn, sector)
			g := f.gpa
			f.putDesc(f.desc, 0, g+hdrOff, 16, descNext, 1)
			f.putDesc(f.desc, 1, g+dataOff, 1024, descNext|descWrite, 2)
			f.putDesc(f.desc, 2, g+dataOff+1024, 3072, descNext|descWrite, 3)
			f.putDesc(f.desc, 3, g+statOff, 1, descWrite, 0)
			id, n := f.submit(0)
			if id != 0 || n != 4097 || f.mem[statOff] != blkSOK {
				t.Fatalf("used id %d len %d status %d", id, n, f.mem[statOff])
			}
			if !bytes.Equal(f.mem[dataOff:dataOff+4096], dev[sector*512:sector*512+4096]) {
				t.Fatalf("round %d: data differs", round)
			}
		}
		// indirect chain
		f.header(blkTIn, 100)
		g := f.gpa
		f.putDesc(indOff, 0, g+hdrOff, 16, descNext, 1)
		f.putDesc(indOff, 1, g+dataOff, 8192, descNext|descWrite, 2)
		f.putDesc(indOff, 2, g+statOff, 1, descWrite, 0)
		f.putDesc(f.desc, 5, g+indOff, 48, descIndirect, 0)
		if _, n := f.submit(5); n != 8193 || f.mem[statOff] != blkSOK || !bytes.Equal(f.mem[dataOff:dataOff+8192], dev[51200:51200+8192]) {
			t.Fatalf("indirect: len %d status %d", n, f.mem[statOff])
		}
		// beyond the end, write, flush, get id
		for _, c := range []struct {
			typ    uint32
			sector uint64
			status byte
		}{{blkTIn, uint64(len(dev))/512 - 1, blkSIOErr}, {blkTOut, 0, blkSIOErr}, {blkTFlush, 0, blkSUnsupp}, {blkTDiscard, 0, blkSUnsupp}, {blkTGetID, 0, blkSOK}} {
			f.header(c.typ, c.sector)
			f.putDesc(f.desc, 0, g+hdrOff, 16, descNext, 1)
			f.putDesc(f.desc, 1, g+dataOff, 4096, descNext|descWrite, 2)
			f.putDesc(f.desc, 2, g+statOff, 1, descWrite, 0)
			f.submit(0)
			if f.mem[statOff] != c.status {
				t.Fatalf("type %d: status %d want %d", c.typ, f.mem[statOff], c.status)
			}
		}
		if !bytes.HasPrefix(f.mem[dataOff:], []byte("serial-1234\x00")) {
			t.Fatalf("id %q", f.mem[dataOff:dataOff+20])
		}
		// stop: the base is the next avail index
		f.send(reqGetVringBase, 0, state(0, 0))
		if b := f.recv(reqGetVringBase); binary.LittleEndian.Uint32(b[4:]) != uint32(f.availIdx) {
			t.Fatalf("base %d want %d", binary.LittleEndian.Uint32(b[4:]), f.availIdx)
		}
		// an unknown request asking for an ack is refused, the connection lives
		f.send(99, flagNeedReply, nil)
		if v := binary.LittleEndian.Uint64(f.recv(99)); v == 0 {
			t.Fatal("unknown request acked")
		}
		f.c.Close()
		if err := <-f.done; err != nil {
			t.Fatalf("clean close: %v", err)
		}
		f.done <- nil
	}
}

// A bad chain stops the ring (no crash, no access outside memory).
func TestBadChainStopsRing(t *testing.T) {
	f := newFrontend(t, testDevice(), 1)
	f.setup(true)
	f.header(blkTIn, 0)
	f.putDesc(f.desc, 0, f.gpa+hdrOff, 16, descNext, 1)
	f.putDesc(f.desc, 1, f.gpa+testMem-10, 4096, descNext|descWrite, 2) // past the region
	f.putDesc(f.desc, 2, f.gpa+statOff, 1, descWrite, 0)
	binary.LittleEndian.PutUint16(f.mem[f.avail+4:], 0)
	binary.LittleEndian.PutUint16(f.mem[f.avail+2:], 1)
	unix.Write(f.kick, u64Bytes(1))
	f.send(reqGetVringBase, 0, state(0, 0)) // returns once the worker stopped
	f.recv(reqGetVringBase)
	if f.mem[statOff] != 0xff {
		t.Fatal("bad chain was served")
	}
}

func TestMalformedMessagesClose(t *testing.T) {
	cases := map[string]func(f *frontend){
		"huge payload":  func(f *frontend) { f.send(reqSetFeatures, 0, make([]byte, maxPayload+1)) },
		"bad size":      func(f *frontend) { f.send(reqSetFeatures, 0, make([]byte, 4)) },
		"bad version":   func(f *frontend) { f.send(reqGetFeatures, 2, nil) },
		"unknown":       func(f *frontend) { f.send(99, 0, nil) },
		"log base":      func(f *frontend) { f.send(reqSetLogBase, 0, make([]byte, 16)) },
		"bad queue":     func(f *frontend) { f.send(reqSetVringNum, 0, state(7, 8)) },
		"odd ring size": func(f *frontend) { f.send(reqSetVringNum, 0, state(0, 7)) },
		"fd on get":     func(f *frontend) { fd, _ := unix.Eventfd(0, 0); f.send(reqGetFeatures, 0, nil, fd); unix.Close(fd) },
		"too many regions": func(f *frontend) {
			p := make([]byte, 8+maxRegions*memRegionSize)
			binary.LittleEndian.PutUint32(p, 9)
			f.send(reqSetMemTable, 0, p)
		},
		"overlap": func(f *frontend) {
			p := make([]byte, 8+2*memRegionSize)
			binary.LittleEndian.PutUint32(p, 2)
			for i := 0; i < 2; i++ {
				binary.LittleEndian.PutUint64(p[8+32*i:], 0x1000*uint64(i+1))
				binary.LittleEndian.PutUint64(p[16+32*i:], 0x10000)
				binary.LittleEndian.PutUint64(p[24+32*i:], 0x100000*uint64(i+1))
			}
			fds := []int{}
			for i := 0; i < 2; i++ {
				fd, _ := unix.MemfdCreate("x", 0)
				fds = append(fds, fd)
			}
			f.send(reqSetMemTable, 0, p, fds...)
			closeFDs(fds)
		},
		"unoffered feature": func(f *frontend) { f.send(reqSetFeatures, 0, u64Bytes(featBlkFlush)) },
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			f := newFrontend(t, testDevice(), 1)
			c(f)
			if err := <-f.done; err == nil {
				t.Fatal("connection served on")
			} else {
				t.Log(err)
			}
			f.done <- nil
		})
	}
}

// Serve accepts front-ends one after another: a second one resuming the
// ring at a non-zero base (as QEMU does after reconnecting) is served.
func TestServeReconnect(t *testing.T) {
	dev := testDevice()
	sock := t.TempDir() + "/vh.sock"
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Device: dev, Queues: 1, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, l) }()
	for i, base := range []uint16{0, 5, 65534} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		f := &frontend{t: t, c: c.(*net.UnixConn), gpa: testGPA, uva: testUVA, num: 8, base: base}
		f.setup(i%2 == 0)
		for r := 0; r < 4; r++ { // crosses the 16-bit wrap for base 65534
			f.header(blkTIn, uint64(r))
			f.putDesc(f.desc, 0, f.gpa+hdrOff, 16, descNext, 1)
			f.putDesc(f.desc, 1, f.gpa+dataOff, 512, descNext|descWrite, 2)
			f.putDesc(f.desc, 2, f.gpa+statOff, 1, descWrite, 0)
			if _, n := f.submit(0); n != 513 || f.mem[statOff] != blkSOK || !bytes.Equal(f.mem[dataOff:dataOff+512], dev[r*512:r*512+512]) {
				t.Fatalf("front-end %d request %d: len %d status %d", i, r, n, f.mem[statOff])
			}
		}
		f.send(reqGetVringBase, 0, state(0, 0))
		if b := f.recv(reqGetVringBase); binary.LittleEndian.Uint32(b[4:]) != uint32(base+4) {
			t.Fatalf("base %d want %d", binary.LittleEndian.Uint32(b[4:]), base+4)
		}
		c.Close()
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// A front-end shrinking the shared memory under a running ring: the
// worker's fault stops that ring, not the process.
func TestShrunkMemoryStopsRing(t *testing.T) {
	f := newFrontend(t, testDevice(), 1)
	f.setup(false)
	f.header(blkTIn, 0)
	f.putDesc(f.desc, 0, f.gpa+hdrOff, 16, descNext, 1)
	f.putDesc(f.desc, 1, f.gpa+dataOff, 4096, descNext|descWrite, 2)
	f.putDesc(f.desc, 2, f.gpa+statOff, 1, descWrite, 0)
	binary.LittleEndian.PutUint16(f.mem[f.avail+4:], 0)
	binary.LittleEndian.PutUint16(f.mem[f.avail+2:], 1)
	if err := unix.Ftruncate(f.memfd, 0); err != nil {
		t.Fatal(err)
	}
	unix.Write(f.kick, u64Bytes(1))
	f.send(reqGetVringBase, 0, state(0, 0)) // answered once the worker stopped
	if b := f.recv(reqGetVringBase); binary.LittleEndian.Uint32(b[4:]) != 0 {
		t.Fatalf("base %d after a fault", binary.LittleEndian.Uint32(b[4:]))
	}
}

// gateDev is a device whose first read waits: entered is closed when it
// starts, and it returns once release is closed.
type gateDev struct {
	memDev
	once             chan struct{} // buffered 1: the first read takes it
	entered, release chan struct{}
}

func newGateDev() *gateDev {
	g := &gateDev{memDev: testDevice(), once: make(chan struct{}, 1), entered: make(chan struct{}), release: make(chan struct{})}
	g.once <- struct{}{}
	return g
}

func (g *gateDev) ReadAt(p []byte, off int64) (int, error) {
	select {
	case <-g.once:
		close(g.entered)
		<-g.release
	default:
	}
	return g.memDev.ReadAt(p, off)
}

func newFrontendDev(t *testing.T, dev blockdev.Device, queues int) *frontend {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sock")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	srv, cli := mk(fds[0]), mk(fds[1])
	s, err := New(Config{Device: dev, Queues: queues, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	f := &frontend{t: t, c: cli, gpa: testGPA, uva: testUVA, num: 8, done: make(chan error, 1)}
	go func() { f.done <- s.ServeConn(srv) }()
	t.Cleanup(func() { cli.Close(); <-f.done })
	return f
}

// readChain puts a read of one 512-byte sector at descriptors i..i+2:
// header at hdr, data at data, status at stat (set to 0xff).
func (f *frontend) readChain(i int, hdr, data, stat uint64, sector uint64) {
	binary.LittleEndian.PutUint32(f.mem[hdr:], blkTIn)
	binary.LittleEndian.PutUint64(f.mem[hdr+8:], sector)
	f.mem[stat] = 0xff
	f.putDesc(f.desc, i, f.gpa+hdr, 16, descNext, uint16(i+1))
	f.putDesc(f.desc, i+1, f.gpa+data, 512, descNext|descWrite, uint16(i+2))
	f.putDesc(f.desc, i+2, f.gpa+stat, 1, descWrite, 0)
}

// offer makes head available (without kicking).
func (f *frontend) offer(head uint16) {
	binary.LittleEndian.PutUint16(f.mem[f.avail+4+2*uint64(f.availIdx%f.num):], head)
	f.availIdx++
	binary.LittleEndian.PutUint16(f.mem[f.avail+2:], f.availIdx)
}

func (f *frontend) usedIdx() uint16 { return binary.LittleEndian.Uint16(f.mem[f.used+2:]) }

// A request served before a bad chain of the same batch is completed
// (its used entry published) before the ring stops; GET_VRING_BASE
// reports the first request not completed.
func TestBadChainPublishesEarlierCompletions(t *testing.T) {
	dev := newGateDev()
	f := newFrontendDev(t, dev, 1)
	f.setup(false)
	f.readChain(0, hdrOff, dataOff, statOff, 3)
	f.putDesc(f.desc, 3, f.gpa+testMem-10, 4096, descWrite, 0) // past the region
	f.offer(0)
	f.offer(3)
	unix.Write(f.kick, u64Bytes(1))
	<-dev.entered // the worker serves request 0 (and then walks request 3)
	close(dev.release)
	f.send(reqGetVringBase, 0, state(0, 0)) // answered once the worker stopped
	base := binary.LittleEndian.Uint32(f.recv(reqGetVringBase)[4:])
	if f.mem[statOff] != blkSOK || !bytes.Equal(f.mem[dataOff:dataOff+512], dev.memDev[3*512:4*512]) {
		t.Fatalf("request 0: status %d", f.mem[statOff])
	}
	e := f.mem[f.used+4:]
	if u := f.usedIdx(); u != 1 || binary.LittleEndian.Uint32(e) != 0 || binary.LittleEndian.Uint32(e[4:]) != 513 {
		t.Fatalf("used index %d (want 1), used[0] id %d len %d", u, binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:]))
	}
	if base != 1 {
		t.Fatalf("base %d want 1", base)
	}
}

// GET_VRING_BASE stops the ring after the request in progress, even when
// the driver keeps making requests available meanwhile; the request left
// is served once the ring is started again.
func TestGetVringBaseStopsAfterRequestInProgress(t *testing.T) {
	dev := newGateDev()
	f := newFrontendDev(t, dev, 1)
	f.setup(false)
	f.readChain(0, hdrOff, dataOff, statOff, 1)
	f.readChain(3, hdrOff+0x100, dataOff+0x1000, statOff+0x100, 2)
	f.offer(0)
	unix.Write(f.kick, u64Bytes(1))
	<-dev.entered // the worker serves request 0
	f.offer(3)    // the driver adds one more, without kicking
	signaled := make(chan struct{})
	hook := func() { close(signaled) }
	testHookStopSignaled.Store(&hook)
	t.Cleanup(func() { testHookStopSignaled.Store(nil) })
	f.send(reqGetVringBase, 0, state(0, 0))
	<-signaled // the worker has been told to stop while serving request 0
	testHookStopSignaled.Store(nil)
	close(dev.release)
	base := binary.LittleEndian.Uint32(f.recv(reqGetVringBase)[4:])
	if base != 1 || f.usedIdx() != 1 || f.mem[statOff] != blkSOK || f.mem[statOff+0x100] != 0xff {
		t.Fatalf("base %d used %d, status %d and %d (want base 1, used 1, request 3 not served)", base, f.usedIdx(), f.mem[statOff], f.mem[statOff+0x100])
	}
	// Started again (a new kick fd), the ring serves request 3.
	kick, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
	t.Cleanup(func() { unix.Close(kick) })
	f.ackd(reqSetVringKick, u64Bytes(0), kick)
	for f.usedIdx() != 2 {
		var b [8]byte
		unix.Read(f.call, b[:])
	}
	if f.mem[statOff+0x100] != blkSOK || !bytes.Equal(f.mem[dataOff+0x1000:dataOff+0x1000+512], dev.memDev[2*512:3*512]) {
		t.Fatalf("request 3 after the restart: status %d", f.mem[statOff+0x100])
	}
}

// The avail and used indexes are read and written at their little-endian
// places for every alignment of the ring (4-aligned, 2 mod 4, odd).
func TestRingIndexPlacement(t *testing.T) {
	buf := make([]byte, 64)
	base := int((4 - uintptr(unsafe.Pointer(&buf[0]))%4) % 4) // buf[base] is 4-aligned
	for _, off := range []int{0, 2, 1, 3} {
		a := buf[base+off : base+off+6+2*4]
		clear(buf)
		binary.LittleEndian.PutUint16(a, 0x0101)     // flags
		binary.LittleEndian.PutUint16(a[2:], 0xbeef) // idx
		binary.LittleEndian.PutUint16(a[4:], 0x7777) // ring[0]
		if got := loadAvailIdx(a); got != 0xbeef {
			t.Errorf("avail at %d mod 4: idx %#x want 0xbeef", off, got)
		}
		clear(buf)
		u := buf[base+off : base+off+6+8*4]
		binary.LittleEndian.PutUint16(u, 0x0001) // flags (NO_NOTIFY) stay
		(&vring{num: 4, used: u}).storeUsedIdx(0x1234)
		if f, i := binary.LittleEndian.Uint16(u), binary.LittleEndian.Uint16(u[2:]); f != 1 || i != 0x1234 {
			t.Errorf("used at %d mod 4: flags %#x idx %#x", off, f, i)
		}
	}
}

// probeDev reports, on its first read, whether the buffer it was given is the
// guest's memory: it writes a marker into it and looks for the marker
// through the front-end's own mapping (at the request's data address).
type probeDev struct {
	memDev
	guest   []byte // the front-end's view of the data buffer
	probed  bool
	aliased bool
}

func (d *probeDev) ReadAt(p []byte, off int64) (int, error) {
	if len(p) > 0 && len(d.guest) > 0 && !d.probed { // the first read only
		d.probed = true
		d.guest[0] = 0
		p[0] = 0xa5
		if d.guest[0] == 0xa5 {
			d.aliased = true
		}
	}
	return d.memDev.ReadAt(p, off)
}

// The device reads into the back-end's own buffer, never into guest
// memory: the guest may change its buffers while a read is in progress,
// and a device may read back what it wrote (the shared cache keeps the
// bytes a read fetched for other readers and exports; a decoder uses its
// output as its window). A read larger than the bounce buffer, over
// several descriptors, arrives whole.
func TestDeviceNeverReadsIntoGuestMemory(t *testing.T) {
	dev := &probeDev{memDev: testDevice()}
	f := newFrontendDev(t, dev, 1)
	f.setup(false)
	dev.guest = f.mem[dataOff : dataOff+1]
	const total = 3*bounceSize/2 + 4096
	f.header(blkTIn, 8)
	f.putDesc(f.desc, 0, f.gpa+hdrOff, 16, descNext, 1)
	f.putDesc(f.desc, 1, f.gpa+dataOff, 4096, descNext|descWrite, 2)
	f.putDesc(f.desc, 2, f.gpa+dataOff+4096, total-4096, descNext|descWrite, 3)
	f.putDesc(f.desc, 3, f.gpa+statOff, 1, descWrite, 0)
	_, n := f.submit(0)
	if dev.aliased {
		t.Fatal("the device was given guest memory to read into")
	}
	if n != total+1 || f.mem[statOff] != blkSOK || !bytes.Equal(f.mem[dataOff:dataOff+total], dev.memDev[8*512:8*512+total]) {
		t.Fatalf("len %d status %d, data equal %v", n, f.mem[statOff], bytes.Equal(f.mem[dataOff:dataOff+total], dev.memDev[8*512:8*512+total]))
	}
}

// A request in progress when the front-end disconnects is not completed:
// the front-end (QEMU restores each ring from the used index it sees when
// the back-end goes away) and the next back-end resume from the used index,
// and a completion written later could race with the next back-end serving
// the same request again.
func TestDisconnectLeavesRequestInProgressUncompleted(t *testing.T) {
	dev := newGateDev()
	f := newFrontendDev(t, dev, 1)
	f.setup(true)
	f.readChain(0, hdrOff, dataOff, statOff, 1)
	f.offer(0)
	unix.Write(f.kick, u64Bytes(1))
	<-dev.entered // the worker serves request 0
	signaled := make(chan struct{})
	hook := func() { close(signaled) }
	testHookStopSignaled.Store(&hook)
	t.Cleanup(func() { testHookStopSignaled.Store(nil) })
	f.c.Close()
	<-signaled // the connection is being closed
	testHookStopSignaled.Store(nil)
	close(dev.release)
	if err := <-f.done; err != nil {
		t.Fatal(err)
	}
	f.done <- nil
	if u := f.usedIdx(); u != 0 {
		t.Fatalf("used index %d after the disconnect, want 0 (request 0 completed after the front-end left)", u)
	}
}

// secondDev closes second when its second read starts.
type secondDev struct {
	memDev
	n      atomic.Int32
	second chan struct{}
}

func (d *secondDev) ReadAt(p []byte, off int64) (int, error) {
	if d.n.Add(1) == 2 {
		close(d.second)
	}
	return d.memDev.ReadAt(p, off)
}

// A fault in guest memory in the middle of a batch (the front-end shrank
// its memory below the second request's buffer) stops the ring; the base
// it reports is the used index the driver sees, not counting the first
// request whose used entry was written but never published.
func TestFaultMidBatchReportsPublishedBase(t *testing.T) {
	dev := &secondDev{memDev: testDevice(), second: make(chan struct{})}
	f := newFrontendDev(t, dev, 1)
	f.setup(false)
	f.readChain(0, hdrOff, dataOff, statOff, 1)
	f.readChain(3, hdrOff+0x100, 0x80000, statOff+0x100, 2) // beyond the shrunk size
	if err := unix.Ftruncate(f.memfd, 0x40000); err != nil {
		t.Fatal(err)
	}
	f.offer(0)
	f.offer(3)
	unix.Write(f.kick, u64Bytes(1))
	<-dev.second                            // request 0 is served, request 3 is being served
	f.send(reqGetVringBase, 0, state(0, 0)) // answered once the worker stopped
	base := binary.LittleEndian.Uint32(f.recv(reqGetVringBase)[4:])
	if u := f.usedIdx(); uint32(u) != base {
		t.Fatalf("base %d, used index %d", base, u)
	}
}
