package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

const maxReqTest = 64 << 10

// expectStatus reads a payload-free reply and checks errno and cookie.
func (c *tclient) expectStatus(structured bool, cookie uint64, errno uint32) {
	c.t.Helper()
	simple, got, ch := c.anyReply()
	if ch.cookie != cookie || got != errno {
		c.t.Fatalf("reply cookie %d errno %d, want cookie %d errno %d", ch.cookie, got, cookie, errno)
	}
	if structured && errno != 0 {
		if simple || ch.typ != replyTypeError || ch.flags&replyFlagDone == 0 {
			c.t.Fatalf("structured error reply as %+v (simple=%v)", ch, simple)
		}
		if ml := binary.BigEndian.Uint16(ch.payload[4:]); int(ml) != len(ch.payload)-6 {
			c.t.Fatalf("error message length %d in payload %d", ml, len(ch.payload))
		}
	}
	if !structured && !simple {
		c.t.Fatalf("structured reply without negotiation")
	}
}

// expectRead reads a successful READ reply and returns its data.
func (c *tclient) expectRead(structured bool, cookie, off uint64, n int) []byte {
	c.t.Helper()
	if !structured {
		errno, got := c.simple()
		if errno != 0 || got != cookie {
			c.t.Fatalf("read reply errno %d cookie %d, want cookie %d", errno, got, cookie)
		}
		return c.read(n)
	}
	simple, errno, ch := c.anyReply()
	if simple || errno != 0 || ch.cookie != cookie || ch.typ != replyTypeData || ch.flags&replyFlagDone == 0 {
		c.t.Fatalf("read chunk %+v errno %d simple %v", ch, errno, simple)
	}
	if binary.BigEndian.Uint64(ch.payload) != off || len(ch.payload) != 8+n {
		c.t.Fatalf("read chunk offset %d len %d", binary.BigEndian.Uint64(ch.payload), len(ch.payload)-8)
	}
	return ch.payload[8:]
}

func TestCommands(t *testing.T) {
	for _, structured := range []bool{false, true} {
		name := "simple"
		if structured {
			name = "structured"
		}
		t.Run(name, func(t *testing.T) {
			dev := &prefetchDev{memDev: *newMemDev(1<<20, 3)}
			s := newTestServer(t, Config{MaxRequest: maxReqTest}, Export{Name: "d", Device: dev})
			c, errc := startConn(t, s)
			ei := c.goExport("d", structured, false)
			if ei.maxBS != maxReqTest {
				t.Fatalf("max block size %d", ei.maxBS)
			}
			size := uint64(1 << 20)
			c.req(0, CmdRead, 1, 1000, 3000)
			if got := c.expectRead(structured, 1, 1000, 3000); !bytes.Equal(got, dev.data[1000:4000]) {
				t.Fatal("data mismatch")
			}
			c.req(cmdFlagDF, CmdRead, 2, size-maxReqTest, maxReqTest) // last bytes, max size, DF
			if got := c.expectRead(structured, 2, size-maxReqTest, maxReqTest); !bytes.Equal(got, dev.data[size-maxReqTest:]) {
				t.Fatal("tail mismatch")
			}
			bad := []struct {
				off    uint64
				length uint32
			}{
				{0, 0},                  // zero length
				{^uint64(0) - 10, 4096}, // offset+length overflows
				{size - 100, 4096},      // past the end
				{size, 1},               // at the end
				{size + 4096, 1},        // beyond
				{0, maxReqTest + 1},     // above max request
			}
			for i, b := range bad {
				c.req(0, CmdRead, uint64(100+i), b.off, b.length)
				c.expectStatus(structured, uint64(100+i), EINVAL)
			}
			c.req(1<<9, CmdRead, 110, 0, 512) // unknown command flag
			c.expectStatus(structured, 110, EINVAL)

			// WRITE: payload consumed, EPERM, connection stays in sync.
			c.write(append(reqBytes(0, CmdWrite, 20, 0, 5000), bytes.Repeat([]byte{0xEE}, 5000)...))
			c.expectStatus(structured, 20, EPERM)
			c.req(0, CmdTrim, 21, 0, 4096)
			c.expectStatus(structured, 21, EPERM)
			c.req(0, CmdWriteZeroes, 22, 0, 4096)
			c.expectStatus(structured, 22, EPERM)
			c.req(0, CmdFlush, 23, 0, 0)
			c.expectStatus(structured, 23, 0)
			c.req(0, 99, 24, 0, 0)
			c.expectStatus(structured, 24, EINVAL)
			c.req(0, CmdCache, 25, 8192, 1<<19) // longer than max request is fine
			c.expectStatus(structured, 25, 0)
			c.req(0, CmdCache, 26, size-10, 20)
			c.expectStatus(structured, 26, EINVAL)
			dev.mu.Lock()
			if len(dev.calls) != 1 || dev.calls[0] != [2]int64{8192, 1 << 19} {
				t.Errorf("prefetch calls %v", dev.calls)
			}
			dev.fail = true
			dev.mu.Unlock()
			c.req(0, CmdCache, 27, 0, 4096)
			c.expectStatus(structured, 27, EIO)
			c.req(0, CmdBlockStatus, 28, 0, 4096) // no meta context
			c.expectStatus(structured, 28, EINVAL)
			c.req(0, CmdRead, 29, 0, 16)
			if got := c.expectRead(structured, 29, 0, 16); !bytes.Equal(got, dev.data[:16]) {
				t.Fatal("data mismatch after errors")
			}
			c.req(0, CmdDisc, 30, 0, 0)
			c.expectClosed()
			if err := <-errc; err != nil {
				t.Fatalf("ServeConn: %v", err)
			}
		})
	}
}

func TestOversizedWriteCloses(t *testing.T) {
	s := newTestServer(t, Config{MaxRequest: maxReqTest}, Export{Device: newMemDev(1<<20, 1)})
	c, errc := startConn(t, s)
	c.goExport("", false, false)
	c.req(0, CmdWrite, 9, 0, 1<<30) // payload never sent
	c.expectStatus(false, 9, EPERM)
	c.expectClosed()
	if err := <-errc; err == nil {
		t.Fatal("want error for oversized write")
	}
}

func TestBadRequestMagicCloses(t *testing.T) {
	s := newTestServer(t, Config{}, Export{Device: newMemDev(4096, 1)})
	c, errc := startConn(t, s)
	c.goExport("", false, false)
	b := reqBytes(0, CmdRead, 1, 0, 512)
	b[0] ^= 0xff
	c.write(b)
	c.expectClosed()
	if err := <-errc; err == nil {
		t.Fatal("want error")
	}
}

func TestReadErrorEIO(t *testing.T) {
	for _, structured := range []bool{false, true} {
		dev := &failDev{memDev: *newMemDev(1<<18, 4), bad: 8192, badLen: 4096}
		s := newTestServer(t, Config{}, Export{Device: dev})
		c, _ := startConn(t, s)
		c.goExport("", structured, false)
		c.req(0, CmdRead, 1, 4096, 8192)
		c.expectStatus(structured, 1, EIO)
		c.req(0, CmdRead, 2, 0, 8192)
		if got := c.expectRead(structured, 2, 0, 8192); !bytes.Equal(got, dev.data[:8192]) {
			t.Fatal("mismatch after EIO")
		}
	}
}

// shortDev returns short reads without an error: a broken device.
type shortDev struct{ memDev }

func (d *shortDev) ReadAt(p []byte, off int64) (int, error) { return len(p) / 2, nil }

func TestShortReadIsEIO(t *testing.T) {
	s := newTestServer(t, Config{}, Export{Device: &shortDev{*newMemDev(8192, 1)}})
	c, _ := startConn(t, s)
	c.goExport("", false, false)
	c.req(0, CmdRead, 1, 0, 4096)
	c.expectStatus(false, 1, EIO)
}

func TestBlockStatus(t *testing.T) {
	// data 8K, hole 16K, data 4K, hole 1000 bytes at the (unaligned) end
	dev := newHoleDev([]int64{8192, 16384, 4096, 1000}, 5)
	s := newTestServer(t, Config{}, Export{Name: "h", Device: dev}, Export{Name: "plain", Device: newMemDev(1<<16, 1)})
	c, _ := startConn(t, s)
	c.goExport("h", true, true)
	type desc struct{ length, status uint32 }
	bs := func(cookie uint64, flags uint16, off uint64, length uint32) []desc {
		t.Helper()
		c.req(flags, CmdBlockStatus, cookie, off, length)
		simple, errno, ch := c.anyReply()
		if simple || errno != 0 || ch.typ != replyTypeBS || ch.flags&replyFlagDone == 0 || ch.cookie != cookie {
			t.Fatalf("block status reply %+v errno %d", ch, errno)
		}
		if id := binary.BigEndian.Uint32(ch.payload); id != metaAllocID || (len(ch.payload)-4)%8 != 0 {
			t.Fatalf("block status payload %x", ch.payload)
		}
		var ds []desc
		for p := ch.payload[4:]; len(p) > 0; p = p[8:] {
			ds = append(ds, desc{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
		}
		return ds
	}
	const hz = stateHole | stateZero
	size := uint32(dev.Size())
	want := []desc{{8192, 0}, {16384, hz}, {4096, 0}, {1000, hz}}
	if got := bs(1, 0, 0, size); !equalDescs(got, want) {
		t.Fatalf("whole device: %v", got)
	}
	if got := bs(2, 0, 4096, 8192); !equalDescs(got, []desc{{4096, 0}, {4096, hz}}) {
		t.Fatalf("middle: %v", got)
	}
	if got := bs(3, cmdFlagReqOne, 4096, 8192); !equalDescs(got, []desc{{4096, 0}}) {
		t.Fatalf("REQ_ONE: %v", got)
	}
	c.req(0, CmdBlockStatus, 4, 0, size+1)
	c.expectStatus(true, 4, EINVAL)
	c.req(0, CmdBlockStatus, 5, 0, 0)
	c.expectStatus(true, 5, EINVAL)
	// holes read as zeros
	c.req(0, CmdRead, 6, 8192, 16384)
	if got := c.expectRead(true, 6, 8192, 16384); !bytes.Equal(got, make([]byte, 16384)) {
		t.Fatal("hole not zero")
	}

	// A device without Mapper is all data.
	c2, _ := startConn(t, s)
	c2.goExport("plain", true, true)
	c2.req(0, CmdBlockStatus, 1, 0, 1<<16)
	_, errno, ch := c2.anyReply()
	if errno != 0 || len(ch.payload) != 12 || binary.BigEndian.Uint32(ch.payload[4:]) != 1<<16 || binary.BigEndian.Uint32(ch.payload[8:]) != 0 {
		t.Fatalf("plain block status %x", ch.payload)
	}
}

func equalDescs[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestOutOfOrderReplies(t *testing.T) {
	dev := &gateDev{memDev: *newMemDev(1<<20, 6), gateOff: 0, gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	s := newTestServer(t, Config{}, Export{Device: dev})
	c, _ := startConn(t, s)
	c.goExport("", true, false)
	c.req(0, CmdRead, 1, 0, 4096) // blocks in the device
	<-dev.entered
	for i := uint64(2); i <= 9; i++ {
		c.req(0, CmdRead, i, i*4096, 4096)
	}
	seen := map[uint64]bool{}
	for range 8 {
		_, errno, ch := c.anyReply()
		if errno != 0 || ch.cookie == 1 || seen[ch.cookie] {
			t.Fatalf("unexpected reply %d errno %d", ch.cookie, errno)
		}
		seen[ch.cookie] = true
		off := binary.BigEndian.Uint64(ch.payload)
		if !bytes.Equal(ch.payload[8:], dev.data[off:off+4096]) || off != ch.cookie*4096 {
			t.Fatalf("reply %d data mismatch", ch.cookie)
		}
	}
	close(dev.gate)
	if got := c.expectRead(true, 1, 0, 4096); !bytes.Equal(got, dev.data[:4096]) {
		t.Fatal("gated read mismatch")
	}
}

func TestDiscWaitsForInFlight(t *testing.T) {
	dev := &gateDev{memDev: *newMemDev(1<<20, 7), gateOff: 4096, gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	s := newTestServer(t, Config{}, Export{Device: dev})
	c, errc := startConn(t, s)
	c.goExport("", false, false)
	c.req(0, CmdRead, 1, 4096, 4096)
	<-dev.entered
	c.req(0, CmdDisc, 2, 0, 0)
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-errc:
		t.Fatalf("connection closed before in-flight read finished: %v", err)
	default:
	}
	close(dev.gate)
	if got := c.expectRead(false, 1, 4096, 4096); !bytes.Equal(got, dev.data[4096:8192]) {
		t.Fatal("mismatch")
	}
	c.expectClosed()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentPipelined(t *testing.T) {
	dev := newMemDev(4<<20, 8)
	s := newTestServer(t, Config{MaxInFlight: 8}, Export{Device: dev})
	for _, structured := range []bool{false, true} {
		c, _ := startConn(t, s)
		c.goExport("", structured, false)
		const n = 500
		go func() {
			for i := uint64(0); i < n; i++ {
				c.c.Write(reqBytes(0, CmdRead, i, (i*7919)%(4<<20-65536), uint32(512*(1+i%128))))
			}
		}()
		got := map[uint64]bool{}
		for range n {
			var cookie uint64
			var data []byte
			if structured {
				_, errno, ch := c.anyReply()
				if errno != 0 {
					t.Fatal(errno)
				}
				cookie, data = ch.cookie, ch.payload[8:]
			} else {
				var errno uint32
				errno, cookie = c.simple()
				if errno != 0 {
					t.Fatal(errno)
				}
				data = c.read(int(512 * (1 + cookie%128)))
			}
			off := (cookie * 7919) % (4<<20 - 65536)
			if got[cookie] || !bytes.Equal(data, dev.data[off:off+uint64(len(data))]) || len(data) != int(512*(1+cookie%128)) {
				t.Fatalf("reply %d wrong", cookie)
			}
			got[cookie] = true
		}
	}
}

func TestServeTransmissionKernel(t *testing.T) {
	dev := newMemDev(5000, 10) // not a multiple of 4096
	s := newTestServer(t, Config{}, Export{Name: "k", Device: dev})
	a, b := socketpair(t)
	defer b.Close()
	errc := make(chan error, 1)
	go func() { errc <- s.ServeTransmission(context.Background(), a, "k") }()
	c := &tclient{t: t, c: b, br: newBufReader(b)}
	if KernelSize(5000) != 8192 {
		t.Fatal(KernelSize(5000))
	}
	c.req(0, CmdRead, 1, 4096, 4096) // crosses the device end into the rounded tail
	got := c.expectRead(false, 1, 4096, 4096)
	if !bytes.Equal(got[:904], dev.data[4096:]) || !bytes.Equal(got[904:], make([]byte, 4096-904)) {
		t.Fatal("tail not zero-filled")
	}
	c.req(0, CmdRead, 2, 8192, 512)
	c.expectStatus(false, 2, EINVAL)
	c.req(0, CmdBlockStatus, 3, 0, 512)
	c.expectStatus(false, 3, EINVAL)
	c.req(0, CmdDisc, 4, 0, 0)
	c.expectClosed()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	a2, b2 := socketpair(t)
	defer b2.Close()
	if err := s.ServeTransmission(context.Background(), a2, "missing"); err == nil {
		t.Fatal("want unknown export error")
	}
}

func TestServeAndShutdown(t *testing.T) {
	dev := &gateDev{memDev: *newMemDev(1<<20, 11), gateOff: 8192, gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	obs := &countObserver{}
	s := newTestServer(t, Config{Observer: obs}, Export{Device: dev})
	l, uri, err := Listen("unix:" + filepath.Join(t.TempDir(), "nbd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.Serve(l) }()
	dial := func() *tclient {
		nc, err := net.Dial("unix", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		t.Cleanup(func() { nc.Close() })
		return &tclient{t: t, c: nc, br: newBufReader(nc)}
	}
	_ = uri
	c := dial()
	c.goExport("", false, false)
	c.req(0, CmdRead, 1, 0, 512)
	c.expectRead(false, 1, 0, 512)
	c.req(0, CmdRead, 2, 8192, 512)
	<-dev.entered
	idle := dial() // still negotiating when shutdown starts
	idle.read(18)

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	time.Sleep(50 * time.Millisecond)
	idle.expectClosed()
	close(dev.gate) // the in-flight reply still goes out
	c.expectRead(false, 2, 8192, 512)
	c.expectClosed()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-serveErr; err != ErrServerClosed {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := net.Dial("unix", l.Addr().String()); err == nil {
		t.Fatal("listener still accepting")
	}
	if o, cl, st, dn := obs.counts(); o != 2 || cl != 2 || st != 2 || dn != 2 {
		t.Fatalf("observer: open %d close %d start %d done %d", o, cl, st, dn)
	}
}

func TestMaxConnections(t *testing.T) {
	s := newTestServer(t, Config{MaxConnections: 1}, Export{Device: newMemDev(4096, 1)})
	l, _, err := Listen("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	defer s.Shutdown(context.Background())
	c1, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	io.ReadFull(c1, make([]byte, 18))
	c2, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := io.ReadFull(c2, make([]byte, 18)); err == nil {
		t.Fatalf("second connection got greeting (%d bytes)", n)
	}
}

func TestListen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.sock")
	l, uri, err := Listen("unix:" + p)
	if err != nil {
		t.Fatal(err)
	}
	if uri != "nbd+unix:///?socket="+p {
		t.Fatalf("uri %q", uri)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v %v", fi.Mode(), err)
	}
	if _, _, err := Listen("unix:" + p); err == nil {
		t.Fatal("second listen on a live socket succeeded")
	}
	l.Close()
	l2, uri2, err := Listen("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if uri2 != "nbd://"+l2.Addr().String() {
		t.Fatalf("tcp uri %q", uri2)
	}
	for _, bad := range []string{"", "unix:", "udp:1.2.3.4:5", "/path"} {
		if _, _, err := Listen(bad); err == nil {
			t.Errorf("Listen(%q) succeeded", bad)
		}
	}
}

func TestAddExportErrors(t *testing.T) {
	s := NewServer(Config{})
	if err := s.AddExport(Export{Name: "a"}); err == nil {
		t.Error("nil device accepted")
	}
	if err := s.AddExport(Export{Name: "a\x00", Device: newMemDev(1, 1)}); err == nil {
		t.Error("NUL name accepted")
	}
	if err := s.AddExport(Export{Name: "a", Device: newMemDev(1, 1)}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport(Export{Name: "a", Device: newMemDev(1, 1)}); err == nil {
		t.Error("duplicate accepted")
	}
}

func TestContextCancel(t *testing.T) {
	s := newTestServer(t, Config{}, Export{Device: newMemDev(4096, 1)})
	a, b := socketpair(t)
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.ServeConn(ctx, a) }()
	c := &tclient{t: t, c: b, br: newBufReader(b)}
	c.goExport("", false, false)
	cancel()
	select {
	case err := <-errc:
		if err != context.Canceled {
			t.Fatalf("err %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeConn ignored context cancel")
	}
}

type countObserver struct {
	open, close, start, done atomic.Int64
}

func (o *countObserver) ConnOpen(string)                      { o.open.Add(1) }
func (o *countObserver) ConnClose(string, error)              { o.close.Add(1) }
func (o *countObserver) RequestStart(string, Command, uint32) { o.start.Add(1) }
func (o *countObserver) RequestDone(RequestInfo)              { o.done.Add(1) }
func (o *countObserver) counts() (int64, int64, int64, int64) {
	return o.open.Load(), o.close.Load(), o.start.Load(), o.done.Load()
}

type panicDev struct{ memDev }

func (d *panicDev) ReadAt(p []byte, off int64) (int, error) {
	if off == 0 {
		panic("device bug")
	}
	return d.memDev.ReadAt(p, off)
}

func TestDevicePanicIsEIO(t *testing.T) {
	s := newTestServer(t, Config{}, Export{Device: &panicDev{*newMemDev(8192, 1)}})
	c, _ := startConn(t, s)
	c.goExport("", true, false)
	c.req(0, CmdRead, 1, 0, 512)
	c.expectStatus(true, 1, EIO)
	c.req(0, CmdRead, 2, 512, 512)
	c.expectRead(true, 2, 512, 512)
}

// slowDev sleeps in ReadAt and records the peak number of concurrent reads.
type slowDev struct {
	memDev
	cur, peak atomic.Int64
}

func (d *slowDev) ReadAt(p []byte, off int64) (int, error) {
	n := d.cur.Add(1)
	for {
		pk := d.peak.Load()
		if n <= pk || d.peak.CompareAndSwap(pk, n) {
			break
		}
	}
	time.Sleep(2 * time.Millisecond)
	d.cur.Add(-1)
	return d.memDev.ReadAt(p, off)
}

func TestInFlightBounded(t *testing.T) {
	dev := &slowDev{memDev: *newMemDev(1<<20, 12)}
	s := newTestServer(t, Config{MaxInFlight: 4}, Export{Device: dev})
	c, _ := startConn(t, s)
	c.goExport("", false, false)
	const n = 64
	var reqs []byte
	for i := uint64(0); i < n; i++ {
		reqs = append(reqs, reqBytes(0, CmdRead, i, i*4096, 4096)...)
	}
	c.write(reqs)
	for range n {
		if errno, _ := c.simple(); errno != 0 {
			t.Fatal(errno)
		}
		c.read(4096)
	}
	if p := dev.peak.Load(); p > 4 || p < 2 {
		t.Fatalf("peak concurrent device reads %d, want 2..4", p)
	}
}

// zeroSlowDev is a large all-zero device that records read concurrency.
type zeroSlowDev struct {
	size      int64
	cur, peak atomic.Int64
}

func (d *zeroSlowDev) Size() int64 { return d.size }
func (d *zeroSlowDev) ReadAt(p []byte, off int64) (int, error) {
	n := d.cur.Add(1)
	for pk := d.peak.Load(); n > pk && !d.peak.CompareAndSwap(pk, n); pk = d.peak.Load() {
	}
	time.Sleep(5 * time.Millisecond)
	clear(p)
	d.cur.Add(-1)
	return len(p), nil
}

func TestReadBytesBudget(t *testing.T) {
	dev := &zeroSlowDev{size: 1 << 30}
	s := newTestServer(t, Config{MaxInFlight: 32}, Export{Device: dev}) // MaxRequest 32 MiB
	c, _ := startConn(t, s)
	c.goExport("", false, false)
	const n, size = 6, 32 << 20
	go func() {
		for i := uint64(0); i < n; i++ {
			c.c.Write(reqBytes(0, CmdRead, i, i*size, size))
		}
	}()
	for range n {
		if errno, _ := c.simple(); errno != 0 {
			t.Fatal(errno)
		}
		c.read(size)
	}
	if p := dev.peak.Load(); p > 2 {
		t.Fatalf("%d concurrent 32 MiB reads, budget allows 2", p)
	}
}
