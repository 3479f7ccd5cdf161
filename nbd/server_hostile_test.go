package nbd

import (
	"bytes"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// waitGoroutines waits until the goroutine count is back to base (a little
// slack for runtime helpers) and fails with a dump otherwise.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d, baseline %d\n%s", n, base, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHostileStalledReader: a client that pipelines large reads and never
// reads its replies is disconnected after WriteTimeout; its buffers and
// goroutines are released (server-wide budget back to zero).
func TestHostileStalledReader(t *testing.T) {
	base := runtime.NumGoroutine()
	dev := newMemDev(8<<20, 3)
	s := newTestServer(t, Config{WriteTimeout: 300 * time.Millisecond, MaxRequest: 1 << 20}, Export{Device: dev})
	c, errc := startConn(t, s)
	c.goExport("", false, false)
	var req []byte
	for i := 0; i < 200; i++ {
		req = append(req, reqBytes(0, CmdRead, uint64(i), uint64(i%8)<<20, 1<<20)...)
	}
	go c.c.Write(req) // the server stops reading once its budget is full
	select {
	case err := <-errc:
		t.Logf("stalled client dropped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("a client that never reads was not disconnected")
	}
	c.c.Close()
	// Workers still finishing their reads release their buffers after the
	// connection has ended: wait (bounded) for the budget to drain.
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
}

// TestHostileVanish: clients that disappear in the middle of a request
// header, in the middle of a WRITE payload, or while their READ is being
// served leak no goroutines and do not disturb a concurrent client.
func TestHostileVanish(t *testing.T) {
	base := runtime.NumGoroutine()
	dev := &gateDev{memDev: *newMemDev(1<<20, 4), gateOff: 4096, gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	s := newTestServer(t, Config{}, Export{Device: dev})
	good, _ := startConn(t, s)
	good.goExport("", true, false)

	// Half a request header, then gone.
	c1, e1 := startConn(t, s)
	c1.goExport("", false, false)
	c1.write(reqBytes(0, CmdRead, 1, 0, 512)[:14])
	c1.c.Close()
	// A WRITE header announcing 1 MiB of payload, 10 bytes of it, then gone.
	c2, e2 := startConn(t, s)
	c2.goExport("", false, false)
	c2.write(append(reqBytes(0, CmdWrite, 2, 0, 1<<20), make([]byte, 10)...))
	c2.c.Close()
	// A READ in progress in the backend, then gone.
	c3, e3 := startConn(t, s)
	c3.goExport("", false, false)
	c3.req(0, CmdRead, 3, 4096, 4096)
	<-dev.entered
	c3.c.Close()
	for i, e := range []<-chan error{e1, e2} {
		select {
		case err := <-e:
			t.Logf("client %d: %v", i+1, err)
		case <-time.After(5 * time.Second):
			t.Fatalf("connection %d not torn down", i+1)
		}
	}
	// The well-behaved client is served while c3's read is stuck.
	good.req(0, CmdRead, 9, 8192, 1000)
	if got := good.expectRead(true, 9, 8192, 1000); !bytes.Equal(got, dev.data[8192:9192]) {
		t.Fatal("concurrent client got wrong data")
	}
	close(dev.gate)
	select {
	case err := <-e3:
		t.Logf("client 3: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("connection 3 not torn down after its read finished")
	}
	good.req(0, CmdDisc, 0, 0, 0)
	good.expectClosed()
	waitGoroutines(t, base)
}

// TestHostileGlobalBudget: READ buffers in flight are bounded across all
// connections, not only per connection.
func TestHostileGlobalBudget(t *testing.T) {
	dev := &slowDev{memDev: *newMemDev(1<<20, 5)}
	s := newTestServer(t, Config{MaxRequest: 4096, MaxBufferBytes: 3 * 4096, MaxInFlight: 16}, Export{Device: dev})
	var wg sync.WaitGroup
	for k := 0; k < 4; k++ {
		c, _ := startConn(t, s)
		c.goExport("", false, false)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var req []byte
			for i := 0; i < 32; i++ {
				req = append(req, reqBytes(0, CmdRead, uint64(i), uint64(i)*4096, 4096)...)
			}
			go c.c.Write(req)
			for i := 0; i < 32; i++ {
				if errno, _ := c.simple(); errno != 0 {
					t.Errorf("errno %d", errno)
					return
				}
				c.read(4096)
			}
		}()
	}
	wg.Wait()
	if p := dev.peak.Load(); p > 3 {
		t.Fatalf("%d reads of 4 KiB in flight with a 12 KiB server-wide budget", p)
	} else {
		t.Logf("peak concurrent backend reads: %d", p)
	}
}

// lineCounter counts log records whose message contains sub.
type lineCounter struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineCounter) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, string(p))
	l.mu.Unlock()
	return len(p), nil
}

func (l *lineCounter) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			n++
		}
	}
	return n
}

// TestHostileErrorLogRateLimited: 200 failing reads give 200 EIO replies
// and one log line, not 200.
func TestHostileErrorLogRateLimited(t *testing.T) {
	var lc lineCounter
	dev := &failDev{memDev: *newMemDev(1<<20, 6), bad: 0, badLen: 1 << 20}
	s := newTestServer(t, Config{Logger: slog.New(slog.NewTextHandler(&lc, nil))}, Export{Device: dev})
	c, _ := startConn(t, s)
	c.goExport("", false, false)
	for i := 0; i < 200; i++ {
		c.req(0, CmdRead, uint64(i), uint64(i)*512, 512)
		if errno, _ := c.simple(); errno != EIO {
			t.Fatalf("read %d: errno %d, want EIO", i, errno)
		}
	}
	if n := lc.count("backend read failed"); n != 1 {
		t.Fatalf("%d log lines for 200 failing reads, want 1:\n%s", n, strings.Join(lc.lines, ""))
	}
}

// TestHostileSocketMode: sockets never exist with looser permissions than
// asked, a non-socket file at the path is not clobbered, a stale socket is
// replaced, and Close removes the socket.
func TestHostileSocketMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.sock")
	for _, mode := range []os.FileMode{0, 0o660} {
		l, _, err := ListenWith("unix:"+p, ListenOptions{SocketMode: mode})
		if err != nil {
			t.Fatal(err)
		}
		want := mode
		if want == 0 {
			want = 0o600
		}
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode().Perm() != want || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("mode %v: %v %v", want, fi.Mode(), err)
		}
		if l.Addr().String() != p {
			t.Fatalf("Addr %q", l.Addr())
		}
		c, err := net.Dial("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		l.Close()
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Fatalf("socket left behind after Close: %v", err)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Fatalf("leftovers in the socket directory: %v", ents)
	}
	// A stale socket (nobody listening) is replaced.
	l, _ := net.Listen("unix", p)
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, _, err := ListenWith("unix:"+p, ListenOptions{})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
	// A regular file is left alone.
	os.WriteFile(p, []byte("data"), 0o644)
	if _, _, err := ListenWith("unix:"+p, ListenOptions{}); err == nil {
		t.Fatal("a regular file at the socket path was replaced")
	}
	if b, _ := os.ReadFile(p); string(b) != "data" {
		t.Fatal("regular file clobbered")
	}
	// A path too long for a private directory beside it still works.
	long := filepath.Join(dir, strings.Repeat("x", 100-len(dir)))
	if len(long) <= maxUnixPath {
		l3, _, err := ListenWith("unix:"+long, ListenOptions{})
		if err != nil {
			t.Fatalf("long path: %v", err)
		}
		fi, _ := os.Lstat(long)
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("long path mode %v", fi.Mode())
		}
		l3.Close()
	}
}
