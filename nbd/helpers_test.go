package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
)

// memDev is a memory-backed device.
type memDev struct{ data []byte }

func (d *memDev) Size() int64 { return int64(len(d.data)) }
func (d *memDev) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= int64(len(d.data)) {
		return 0, io.EOF
	}
	n := copy(p, d.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func newMemDev(size int, seed int64) *memDev {
	b := make([]byte, size)
	rand.New(rand.NewSource(seed)).Read(b)
	return &memDev{data: b}
}

// holeDev is a memDev with zero-filled holes it reports through Mapper.
type holeDev struct {
	memDev
	exts []blockdev.Extent // full, consecutive cover of the device
}

// newHoleDev makes a device alternating data and hole runs of the given lengths.
func newHoleDev(runs []int64, seed int64) *holeDev {
	var size int64
	for _, r := range runs {
		size += r
	}
	d := &holeDev{memDev: *newMemDev(int(size), seed)}
	var off int64
	for i, r := range runs {
		hole := i%2 == 1
		if hole {
			clear(d.data[off : off+r])
		}
		d.exts = append(d.exts, blockdev.Extent{Offset: off, Length: r, Hole: hole})
		off += r
	}
	return d
}

func (d *holeDev) Extents(off, length int64) ([]blockdev.Extent, error) {
	end := min(off+length, d.Size())
	var out []blockdev.Extent
	for _, e := range d.exts {
		if e.Offset+e.Length <= off || e.Offset >= end {
			continue
		}
		s := max(e.Offset, off)
		out = append(out, blockdev.Extent{Offset: s, Length: min(e.Offset+e.Length, end) - s, Hole: e.Hole})
	}
	return out, nil
}

// failDev fails reads that touch [bad, bad+badLen).
type failDev struct {
	memDev
	bad, badLen int64
}

func (d *failDev) ReadAt(p []byte, off int64) (int, error) {
	if off < d.bad+d.badLen && off+int64(len(p)) > d.bad {
		return 0, errors.New("injected media error")
	}
	return d.memDev.ReadAt(p, off)
}

// gateDev blocks reads at offset gateOff until gate is closed.
type gateDev struct {
	memDev
	gateOff int64
	gate    chan struct{}
	entered chan struct{}
}

func (d *gateDev) ReadAt(p []byte, off int64) (int, error) {
	if off == d.gateOff {
		d.entered <- struct{}{}
		<-d.gate
	}
	return d.memDev.ReadAt(p, off)
}

// prefetchDev records Prefetch calls.
type prefetchDev struct {
	memDev
	mu    sync.Mutex
	calls [][2]int64
	fail  bool
}

func (d *prefetchDev) Prefetch(off, length int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, [2]int64{off, length})
	if d.fail {
		return errors.New("prefetch failed")
	}
	return nil
}

func socketpair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conv(fds[0]), conv(fds[1])
}

// tclient is a raw-socket NBD client for tests.
type tclient struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

// startConn serves one socketpair end with ServeConn and returns a client
// on the other and the channel ServeConn's result arrives on.
func startConn(t testing.TB, s *Server) (*tclient, <-chan error) {
	t.Helper()
	a, b := socketpair(t)
	errc := make(chan error, 1)
	go func() { errc <- s.ServeConn(context.Background(), a) }()
	b.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { b.Close() })
	return &tclient{t: t, c: b, br: bufio.NewReader(b)}, errc
}

func (c *tclient) write(b []byte) {
	c.t.Helper()
	if _, err := c.c.Write(b); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

func (c *tclient) read(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("client read %d bytes: %v", n, err)
	}
	return b
}

// expectClosed asserts the server closes the connection.
func (c *tclient) expectClosed() {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c.br)
	if err != nil {
		c.t.Fatalf("expected EOF, got %v after %d bytes", err, len(b))
	}
	if len(b) != 0 {
		c.t.Fatalf("expected EOF, got %d more bytes %x", len(b), b[:min(len(b), 64)])
	}
}

// greet reads the server greeting and sends client flags.
func (c *tclient) greet(cflags uint32) {
	c.t.Helper()
	g := c.read(18)
	if binary.BigEndian.Uint64(g[0:]) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicIHaveOpt {
		c.t.Fatalf("bad greeting %x", g)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != flagFixedNewstyle|flagNoZeroes {
		c.t.Fatalf("handshake flags %#x", f)
	}
	c.write(binary.BigEndian.AppendUint32(nil, cflags))
}

func (c *tclient) sendOpt(opt uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *tclient) readOptReply() optReply {
	c.t.Helper()
	h := c.read(20)
	if m := binary.BigEndian.Uint64(h); m != magicOptReply {
		c.t.Fatalf("bad option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = c.read(int(binary.BigEndian.Uint32(h[16:])))
	return r
}

// expectReply reads one option reply and checks its option and type.
func (c *tclient) expectReply(opt, typ uint32) optReply {
	c.t.Helper()
	r := c.readOptReply()
	if r.opt != opt || r.typ != typ {
		c.t.Fatalf("option reply: got opt %d type %#x (%q), want opt %d type %#x", r.opt, r.typ, r.data, opt, typ)
	}
	return r
}

func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

type exportInfo struct {
	size                 uint64
	flags                uint16
	name, desc           string
	minBS, prefBS, maxBS uint32
}

// infoReplies reads NBD_REP_INFO replies up to the final reply, returning
// the decoded info and the final reply type.
func (c *tclient) infoReplies(opt uint32) (exportInfo, uint32) {
	c.t.Helper()
	var ei exportInfo
	for {
		r := c.readOptReply()
		if r.opt != opt {
			c.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		if r.typ != repInfo {
			return ei, r.typ
		}
		switch binary.BigEndian.Uint16(r.data) {
		case infoExport:
			if len(r.data) != 12 {
				c.t.Fatalf("NBD_INFO_EXPORT length %d", len(r.data))
			}
			ei.size = binary.BigEndian.Uint64(r.data[2:])
			ei.flags = binary.BigEndian.Uint16(r.data[10:])
		case infoName:
			ei.name = string(r.data[2:])
		case infoDescription:
			ei.desc = string(r.data[2:])
		case infoBlockSize:
			if len(r.data) != 14 {
				c.t.Fatalf("NBD_INFO_BLOCK_SIZE length %d", len(r.data))
			}
			ei.minBS = binary.BigEndian.Uint32(r.data[2:])
			ei.prefBS = binary.BigEndian.Uint32(r.data[6:])
			ei.maxBS = binary.BigEndian.Uint32(r.data[10:])
		}
	}
}

// goExport negotiates (optionally structured replies and base:allocation)
// and enters transmission on name.
func (c *tclient) goExport(name string, structured, meta bool) exportInfo {
	c.t.Helper()
	c.greet(flagFixedNewstyle | flagNoZeroes)
	if structured {
		c.sendOpt(optStructuredReply, nil)
		c.expectReply(optStructuredReply, repAck)
	}
	if meta {
		c.sendOpt(optSetMetaContext, metaData(name, metaAllocation))
		r := c.expectReply(optSetMetaContext, repMetaContext)
		if string(r.data[4:]) != metaAllocation || binary.BigEndian.Uint32(r.data) == 0 {
			c.t.Fatalf("meta context reply %q", r.data)
		}
		c.expectReply(optSetMetaContext, repAck)
	}
	c.sendOpt(optGo, infoData(name, infoBlockSize))
	ei, typ := c.infoReplies(optGo)
	if typ != repAck {
		c.t.Fatalf("NBD_OPT_GO: final reply %#x", typ)
	}
	return ei
}

func metaData(export string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

func reqBytes(flags uint16, typ Command, cookie, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, uint16(typ))
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

func (c *tclient) req(flags uint16, typ Command, cookie, off uint64, length uint32) {
	c.t.Helper()
	c.write(reqBytes(flags, typ, cookie, off, length))
}

// simple reads a simple reply header.
func (c *tclient) simple() (errno uint32, cookie uint64) {
	c.t.Helper()
	h := c.read(16)
	if m := binary.BigEndian.Uint32(h); m != magicSimple {
		c.t.Fatalf("simple reply magic %#x", m)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

type chunk struct {
	flags, typ uint16
	cookie     uint64
	payload    []byte
}

// reply reads either kind of reply header (and a structured payload).
func (c *tclient) anyReply() (simple bool, errno uint32, ch chunk) {
	c.t.Helper()
	h := c.read(4)
	switch binary.BigEndian.Uint32(h) {
	case magicSimple:
		r := c.read(12)
		return true, binary.BigEndian.Uint32(r), chunk{cookie: binary.BigEndian.Uint64(r[4:])}
	case magicStructRep:
		r := c.read(16)
		ch = chunk{flags: binary.BigEndian.Uint16(r), typ: binary.BigEndian.Uint16(r[2:]), cookie: binary.BigEndian.Uint64(r[4:])}
		ch.payload = c.read(int(binary.BigEndian.Uint32(r[12:])))
		if ch.typ == replyTypeError {
			errno = binary.BigEndian.Uint32(ch.payload)
		}
		return false, errno, ch
	}
	c.t.Fatalf("bad reply magic %x", h)
	return
}

func newBufReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

// goExport2 sends GO for name (greeting already done) and checks for ACK.
func (c *tclient) goExport2(name string) exportInfo {
	c.t.Helper()
	c.sendOpt(optGo, infoData(name))
	ei, typ := c.infoReplies(optGo)
	if typ != repAck {
		c.t.Fatalf("GO %q: %#x", name, typ)
	}
	return ei
}
