package nbd

import (
	"bytes"
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
)

// nowaitDev is a memDev that reads without waiting (blockdev.NoWaitReader)
// except for "cold" 4 KiB pages (index%3 == 0), which would block; it
// counts both outcomes. panicky makes ReadAtNoWait panic instead.
type nowaitDev struct {
	memDev
	inline, blocked atomic.Int64
	panicky         bool
}

func (d *nowaitDev) ReadAtNoWait(p []byte, off int64) (int, error) {
	if d.panicky {
		panic("no-wait read exploded")
	}
	for pg := off / 4096; pg*4096 < off+int64(len(p)); pg++ {
		if pg%3 == 0 {
			d.blocked.Add(1)
			return 0, blockdev.ErrWouldBlock
		}
	}
	n, err := d.memDev.ReadAt(p, off)
	if err != nil || n < len(p) {
		return 0, blockdev.ErrWouldBlock
	}
	d.inline.Add(1)
	return n, nil
}

// TestInlineReads: pipelined READs of every size, some answered inline,
// some by workers (would block, or too large), with simple and structured
// replies, all arrive once with the right bytes.
func TestInlineReads(t *testing.T) {
	const size = 4 << 20
	dev := &nowaitDev{memDev: *newMemDev(size, 21)}
	s := newTestServer(t, Config{MaxInFlight: 4}, Export{Device: dev})
	length := func(i uint64) uint32 { return uint32(512 * (1 + i%160)) } // up to 80 KiB
	offset := func(i uint64) uint64 { return (i * 7919 * 512) % (size - 128<<10) }
	for _, structured := range []bool{false, true} {
		c, _ := startConn(t, s)
		c.goExport("", structured, false)
		const n = 600
		go func() {
			var b []byte
			for i := uint64(0); i < n; i++ {
				b = append(b, reqBytes(0, CmdRead, i, offset(i), length(i))...)
				if i%37 == 0 { // sometimes a whole pipeline in one write
					c.c.Write(b)
					b = b[:0]
				}
			}
			c.c.Write(b)
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
				data = c.read(int(length(cookie)))
			}
			off := offset(cookie)
			if got[cookie] || len(data) != int(length(cookie)) || !bytes.Equal(data, dev.data[off:off+uint64(len(data))]) {
				t.Fatalf("reply %d wrong", cookie)
			}
			got[cookie] = true
		}
		c.req(0, CmdDisc, 0, 0, 0)
		c.expectClosed()
	}
	if dev.inline.Load() == 0 || dev.blocked.Load() == 0 {
		t.Fatalf("inline %d, would block %d: want both paths used", dev.inline.Load(), dev.blocked.Load())
	}
}

// TestInlineKernelTail: an inline READ across the device end on the kernel
// path reads the rounded tail as zeros, and errors still get replies.
func TestInlineKernelTail(t *testing.T) {
	dev := &nowaitDev{memDev: *newMemDev(4096+5000, 22)} // page 1 is warm
	s := newTestServer(t, Config{}, Export{Name: "k", Device: dev})
	a, b := socketpair(t)
	defer b.Close()
	errc := make(chan error, 1)
	go func() { errc <- s.ServeTransmission(context.Background(), a, "k") }()
	c := &tclient{t: t, c: b, br: newBufReader(b)}
	c.write(append(append(reqBytes(0, CmdRead, 1, 8192, 4096), reqBytes(0, CmdRead, 2, 12288, 512)...),
		reqBytes(0, CmdRead, 3, 4096, 4096)...))
	for range 3 {
		errno, cookie := c.simple()
		switch cookie {
		case 1:
			got := c.read(4096)
			if errno != 0 || !bytes.Equal(got[:904], dev.data[8192:]) || !bytes.Equal(got[904:], make([]byte, 4096-904)) {
				t.Fatal("tail not zero-filled")
			}
		case 2:
			if errno != EINVAL {
				t.Fatalf("read past the rounded end: errno %d", errno)
			}
		case 3:
			if got := c.read(4096); errno != 0 || !bytes.Equal(got, dev.data[4096:8192]) {
				t.Fatal("mismatch")
			}
		default:
			t.Fatalf("cookie %d", cookie)
		}
	}
	c.req(0, CmdDisc, 4, 0, 0)
	c.expectClosed()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if dev.inline.Load() == 0 {
		t.Fatal("nothing was read inline")
	}
}

// TestInlinePanicFallsBack: a device whose no-wait read panics still
// answers every READ (through the workers' ReadAt).
func TestInlinePanicFallsBack(t *testing.T) {
	dev := &nowaitDev{memDev: *newMemDev(1<<20, 23), panicky: true}
	s := newTestServer(t, Config{}, Export{Device: dev})
	c, _ := startConn(t, s)
	c.goExport("", true, false)
	for i := uint64(0); i < 10; i++ {
		c.req(0, CmdRead, i, i*4096+4096, 4096)
		if got := c.expectRead(true, i, i*4096+4096, 4096); !bytes.Equal(got, dev.data[i*4096+4096:i*4096+8192]) {
			t.Fatal("mismatch")
		}
	}
}

// TestInlineGlobalBudget: inline replies hold READ budget until written;
// with a server-wide budget of three 4 KiB buffers, pipelines of warm
// READs on several connections neither deadlock nor exceed it.
func TestInlineGlobalBudget(t *testing.T) {
	dev := &nowaitDev{memDev: *newMemDev(1<<20, 24)}
	s := newTestServer(t, Config{MaxRequest: 4096, MaxBufferBytes: 3 * 4096, MaxInFlight: 16}, Export{Device: dev})
	var wg sync.WaitGroup
	for k := 0; k < 4; k++ {
		c, _ := startConn(t, s)
		c.goExport("", false, false)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var req []byte
			for i := 0; i < 96; i++ {
				req = append(req, reqBytes(0, CmdRead, uint64(i), uint64(i%256)*4096, 4096)...)
			}
			go c.c.Write(req)
			for i := 0; i < 96; i++ {
				if errno, _ := c.simple(); errno != 0 {
					t.Errorf("errno %d", errno)
					return
				}
				c.read(4096)
			}
		}()
	}
	wg.Wait()
	if dev.inline.Load() == 0 {
		t.Fatal("nothing was read inline")
	}
	// A writer releases a reply's budget just after writing it, so
	// possibly after the client has read it: wait (bounded) for that.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.budget.mu.Lock()
		used := s.budget.used
		s.budget.mu.Unlock()
		if used == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server-wide budget holds %d bytes after all replies", used)
		}
	}
}

// TestInlineStalledReader: a client that pipelines warm small READs and
// never reads its replies makes the reader goroutine itself the writer;
// the write timeout still disconnects it and everything is released.
func TestInlineStalledReader(t *testing.T) {
	base := runtime.NumGoroutine()
	dev := &nowaitDev{memDev: *newMemDev(8<<20, 25)}
	s := newTestServer(t, Config{WriteTimeout: 300 * time.Millisecond}, Export{Device: dev})
	c, errc := startConn(t, s)
	c.goExport("", false, false)
	var req []byte
	for i := 0; i < 8000; i++ {
		off := uint64(i%600)*4096*3 + 4096 // warm pages
		req = append(req, reqBytes(0, CmdRead, uint64(i), off, 4096)...)
	}
	go c.c.Write(req)
	select {
	case err := <-errc:
		t.Logf("stalled client dropped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("a client that never reads was not disconnected")
	}
	c.c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.budget.mu.Lock()
		used := s.budget.used
		s.budget.mu.Unlock()
		if used == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server-wide budget still holds %d bytes", used)
		}
	}
	waitGoroutines(t, base)
	if dev.inline.Load() == 0 {
		t.Fatal("nothing was read inline")
	}
}
