package nbd

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// releaseDev blocks each read at a registered offset until released.
type releaseDev struct {
	memDev
	mu    sync.Mutex
	gates map[int64]chan struct{}
	in    chan int64 // offsets of reads that reached their gate
}

func (d *releaseDev) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	g := d.gates[off]
	d.mu.Unlock()
	if g != nil {
		d.in <- off
		<-g
	}
	return d.memDev.ReadAt(p, off)
}

// gateConn blocks its first Write until gate is closed.
type gateConn struct {
	net.Conn
	once    sync.Once
	entered chan struct{}
	gate    chan struct{}
}

func (c *gateConn) Write(b []byte) (int, error) {
	c.once.Do(func() {
		close(c.entered)
		<-c.gate
	})
	return c.Conn.Write(b)
}

// onlyConn returns the server's single connection.
func onlyConn(t *testing.T, s *Server) *conn {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		s.mu.Lock()
		for c := range s.conns {
			s.mu.Unlock()
			return c
		}
		s.mu.Unlock()
	}
	t.Fatal("no connection")
	return nil
}

// waitQueued waits until n replies wait in c's queue.
func waitQueued(t *testing.T, c *conn, n int) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		c.qmu.Lock()
		got := len(c.queue)
		c.qmu.Unlock()
		if got == n {
			return
		}
	}
	t.Fatalf("queue never reached %d replies", n)
}

// TestBatchOutOfOrder: while one reply is being written, replies that
// complete (here in reverse order) queue up and leave as one batch, in
// completion order, each intact and with its own cookie.
func TestBatchOutOfOrder(t *testing.T) {
	const n = 16
	dev := &releaseDev{memDev: *newMemDev(n*4096, 5), gates: map[int64]chan struct{}{}, in: make(chan int64, n)}
	for i := 0; i < n; i++ {
		dev.gates[int64(i)*4096] = make(chan struct{})
	}
	s := newTestServer(t, Config{}, Export{Name: "k", Device: dev})
	a, b := socketpair(t)
	defer b.Close()
	gc := &gateConn{Conn: a, entered: make(chan struct{}), gate: make(chan struct{})}
	errc := make(chan error, 1)
	go func() { errc <- s.ServeTransmission(context.Background(), gc, "k") }()
	b.SetDeadline(time.Now().Add(20 * time.Second))
	cl := &tclient{t: t, c: b, br: newBufReader(b)}
	for i := 0; i < n; i++ {
		cl.req(0, CmdRead, uint64(i), uint64(i)*4096, 4096)
	}
	for i := 0; i < n; i++ {
		<-dev.in // every request is in a worker
	}
	c := onlyConn(t, s)
	close(dev.gates[0]) // request 0 completes; its worker becomes the writer and blocks
	<-gc.entered
	for i := n - 1; i >= 1; i-- {
		close(dev.gates[int64(i)*4096])
		waitQueued(t, c, n-i) // queued behind the writer, in completion order
	}
	close(gc.gate)
	order := []uint64{0}
	for i := n - 1; i >= 1; i-- {
		order = append(order, uint64(i))
	}
	for _, cookie := range order {
		got := cl.expectRead(false, cookie, cookie*4096, 4096)
		if !bytes.Equal(got, dev.data[cookie*4096:(cookie+1)*4096]) {
			t.Fatalf("reply %d: wrong data", cookie)
		}
	}
	cl.req(0, CmdDisc, 99, 0, 0)
	cl.expectClosed()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestBatchWritev: more replies than one writev takes (IOV_MAX 1024)
// pile up behind a large reply that fills the socket; they all arrive
// intact once the client reads, and every buffer's budget is returned.
func TestBatchWritev(t *testing.T) {
	const big = 32 << 20
	const small = 3000
	dev := newMemDev(big+small*512, 6)
	s := newTestServer(t, Config{MaxRequest: big}, Export{Name: "k", Device: dev})
	a, b := socketpair(t)
	defer b.Close()
	errc := make(chan error, 1)
	go func() { errc <- s.ServeTransmission(context.Background(), a, "k") }()
	b.SetDeadline(time.Now().Add(30 * time.Second))
	cl := &tclient{t: t, c: b, br: newBufReader(b)}
	cl.req(0, CmdRead, 0, 0, big) // more than the socket holds: its writer blocks
	c := onlyConn(t, s)
	waitWriting(t, c)
	var reqs []byte
	for i := 0; i < small; i++ {
		reqs = append(reqs, reqBytes(0, CmdRead, uint64(1+i), uint64(big+i*512), 512)...)
	}
	cl.write(reqs)
	waitQueued(t, c, small)
	if got := cl.expectRead(false, 0, 0, big); !bytes.Equal(got, dev.data[:big]) {
		t.Fatal("large reply: wrong data")
	}
	seen := make(map[uint64]bool)
	for i := 0; i < small; i++ {
		errno, cookie := cl.simple()
		if errno != 0 || cookie < 1 || cookie > small || seen[cookie] {
			t.Fatalf("reply %d: errno %d cookie %d", i, errno, cookie)
		}
		seen[cookie] = true
		off := big + (cookie-1)*512
		if got := cl.read(512); !bytes.Equal(got, dev.data[off:off+512]) {
			t.Fatalf("reply %d: wrong data", cookie)
		}
	}
	cl.req(0, CmdDisc, 0, 0, 0)
	cl.expectClosed()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	s.budget.mu.Lock()
	defer s.budget.mu.Unlock()
	if s.budget.used != 0 {
		t.Fatalf("budget still holds %d bytes", s.budget.used)
	}
}

// waitWriting waits (bounded) until a goroutine of c is inside a reply write.
func waitWriting(t *testing.T, c *conn) {
	t.Helper()
	// The flag must stay set for a while: the writer of the previous reply
	// may not have cleared it yet although the client already read that
	// reply (seen on a loaded machine), and a large reply stays blocked.
	var since time.Time
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
		c.qmu.Lock()
		w := c.writing
		c.qmu.Unlock()
		switch {
		case !w:
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) > 200*time.Millisecond:
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the large reply never started")
		}
	}
}
