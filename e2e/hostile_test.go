package e2e

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// watchdog is a well-behaved client that keeps reading random ranges of
// the device and checks every byte while hostile clients do their worst.
type watchdog struct {
	ok, bad, errs atomic.Int64
	stop          chan struct{}
	done          chan struct{}
	lastErr       atomic.Value
}

func startWatchdog(t *testing.T, sock string, want []byte) *watchdog {
	t.Helper()
	w := &watchdog{stop: make(chan struct{}), done: make(chan struct{})}
	c, err := dialRaw("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.greet(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.goExport(""); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(w.done)
		defer c.Close()
		rng := rand.New(rand.NewSource(1))
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			n := uint32(1 + rng.Intn(64<<10))
			off := uint64(rng.Int63n(int64(len(want)) - int64(n) + 1))
			c.c.SetDeadline(time.Now().Add(10 * time.Second))
			b, errno, err := c.read(off, n)
			switch {
			case err != nil || errno != 0:
				w.errs.Add(1)
				if err != nil {
					w.lastErr.Store(err.Error())
					return
				}
			case !bytes.Equal(b, want[off:off+uint64(n)]):
				w.bad.Add(1)
			default:
				w.ok.Add(1)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return w
}

// check stops the watchdog and fails t unless every read succeeded.
func (w *watchdog) check(t *testing.T) {
	t.Helper()
	close(w.stop)
	<-w.done
	t.Logf("concurrent well-behaved client: %d reads correct, %d wrong, %d failed", w.ok.Load(), w.bad.Load(), w.errs.Load())
	if w.bad.Load() != 0 || w.errs.Load() != 0 || w.ok.Load() == 0 {
		t.Errorf("the well-behaved client was disturbed (last error: %v)", w.lastErr.Load())
	}
}

// TestHostileClients runs hostile raw-socket clients against the real
// binary while a well-behaved client reads and checks the device: bad
// options, bad requests, cut-off requests, stalled handshakes, a flood of
// idle connections above --max-connections and 10 000 pipelined requests.
// Each case checks the spec's reply and that the server stays healthy; at
// the end RSS and fds are compared with the start.
func TestHostileClients(t *testing.T) {
	ims := layouts(t, testtree.Options{Seed: 23, Files: 20, MaxSize: 256 << 10})
	im := ims[2] // aligned multi-blob with holes
	want, err := os.ReadFile(composeFile(t, im))
	if err != nil {
		t.Fatal(err)
	}
	const maxConns = 64
	srv := serve(t, append(im.blobArgs(), "--max-connections", "64", "--handshake-timeout", "2s", "--max-request", "1M", "--log-level", "error")...)
	pid := srv.cmd.Process.Pid
	w := startWatchdog(t, srv.sock, want)
	time.Sleep(100 * time.Millisecond)
	before := readProc(t, pid)
	t.Logf("server at start: %v", before)
	size := uint64(len(want))

	dial := func(t *testing.T) *rawClient {
		t.Helper()
		c, err := dialRaw("unix", srv.sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		c.c.SetDeadline(time.Now().Add(20 * time.Second))
		if err := c.greet(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	expectOpt := func(t *testing.T, c *rawClient, opt, typ uint32) {
		t.Helper()
		o, ty, p, err := c.optReply()
		if err != nil || o != opt || ty != typ {
			t.Fatalf("option %d: reply opt %d type %#x %q err %v; want type %#x", opt, o, ty, p, err, typ)
		}
	}

	t.Run("options", func(t *testing.T) {
		// Option data above the 64 KiB cap: NBD_REP_ERR_TOO_BIG, then the
		// server hangs up (it will not skip up to 4 GiB).
		c := dial(t)
		h := optBytes(optList, nil)
		binary.BigEndian.PutUint32(h[12:], 64<<10+1)
		c.c.Write(h)
		expectOpt(t, c, optList, repErrTooBig)
		if err := c.closedWithin(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		// Name length beyond the option: NBD_REP_ERR_INVALID, still in the
		// option phase; unknown option: NBD_REP_ERR_UNSUP; LIST still works.
		c = dial(t)
		d := goData("x")
		binary.BigEndian.PutUint32(d, 1<<30)
		c.opt(optGo, d)
		expectOpt(t, c, optGo, repErrInvalid)
		c.opt(4242, []byte("junk"))
		expectOpt(t, c, 4242, repErrUnsup)
		c.opt(optStartTLS, nil) // no TLS configured
		expectOpt(t, c, optStartTLS, repErrUnsup)
		c.opt(optList, nil)
		for {
			_, ty, _, err := c.optReply()
			if err != nil {
				t.Fatal(err)
			}
			if ty == repAck {
				break
			}
		}
		// Bad option magic: hang up.
		c.c.Write(bytes.Repeat([]byte{0xAA}, 16))
		if err := c.closedWithin(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		// Bad greeting flags: hang up.
		c2, _ := dialRaw("unix", srv.sock)
		defer c2.Close()
		io.ReadFull(c2.br, make([]byte, 18))
		c2.c.Write([]byte{0xff, 0xff, 0xff, 0xff})
		if err := c2.closedWithin(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("requests", func(t *testing.T) {
		c := dial(t)
		if s, err := c.goExport(""); err != nil || uint64(s) != size {
			t.Fatalf("GO: size %d err %v", s, err)
		}
		cases := []struct {
			name   string
			typ    uint16
			off    uint64
			length uint32
			errno  uint32
		}{
			{"zero-length read", cmdRead, 0, 0, errINVAL},
			{"overflowing read", cmdRead, ^uint64(0) - 511, 1024, errINVAL},
			{"read past the end", cmdRead, size, 512, errINVAL},
			{"read crossing the end", cmdRead, size - 512, 1024, errINVAL},
			{"read above --max-request", cmdRead, 0, 1<<20 + 4096, errINVAL},
			{"trim", cmdTrim, 0, 4096, errPERM},
			{"write-zeroes", cmdWriteZeroes, 0, 4096, errPERM},
			{"unknown command", 99, 0, 4096, errINVAL},
		}
		for i, tc := range cases {
			c.req(tc.typ, uint64(i), tc.off, tc.length)
			errno, cookie, err := c.simple()
			if err != nil || cookie != uint64(i) || errno != tc.errno {
				t.Fatalf("%s: errno %d cookie %d err %v; want errno %d", tc.name, errno, cookie, err, tc.errno)
			}
		}
		// WRITE: the payload is consumed, EPERM, and the stream stays in sync.
		c.c.Write(append(reqBytes(cmdWrite, 77, 0, 4096), make([]byte, 4096)...))
		if errno, cookie, err := c.simple(); err != nil || errno != errPERM || cookie != 77 {
			t.Fatalf("write: errno %d cookie %d err %v", errno, cookie, err)
		}
		b, errno, err := c.read(4096, 8192)
		if err != nil || errno != 0 || !bytes.Equal(b, want[4096:4096+8192]) {
			t.Fatalf("read after bad requests: errno %d err %v", errno, err)
		}
		// A WRITE payload above the maximum: EPERM, then the server hangs up.
		c.req(cmdWrite, 78, 0, 64<<20)
		if errno, cookie, err := c.simple(); err != nil || errno != errPERM || cookie != 78 {
			t.Fatalf("oversized write: errno %d cookie %d err %v", errno, cookie, err)
		}
		if err := c.closedWithin(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		// Bad request magic: hang up.
		c = dial(t)
		c.goExport("")
		c.c.Write(bytes.Repeat([]byte{0x55}, 28))
		if err := c.closedWithin(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("cut-off", func(t *testing.T) {
		// Half a request, then disconnect; a WRITE with half its payload.
		for i := 0; i < 20; i++ {
			c := dial(t)
			c.goExport("")
			if i%2 == 0 {
				c.c.Write(reqBytes(cmdRead, 1, 0, 4096)[:14])
			} else {
				c.c.Write(append(reqBytes(cmdWrite, 1, 0, 8192), make([]byte, 100)...))
			}
			c.Close()
		}
	})

	t.Run("stalled-handshake", func(t *testing.T) {
		// Silent client, and one that stops after the greeting: both are
		// dropped at --handshake-timeout (2 s).
		start := time.Now()
		silent, err := dialRaw("unix", srv.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
		c := dial(t)
		c.c.Write(optBytes(optList, nil)[:10]) // half an option header
		io.ReadFull(silent.br, make([]byte, 18))
		for _, cl := range []*rawClient{silent, c} {
			if err := cl.closedWithin(6 * time.Second); err != nil {
				t.Fatal(err)
			}
		}
		if d := time.Since(start); d < 1500*time.Millisecond || d > 5*time.Second {
			t.Fatalf("stalled handshakes dropped after %v, want about 2 s", d)
		}
		t.Logf("stalled handshakes dropped after %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("idle-flood", func(t *testing.T) {
		// 1000 idle connections against --max-connections 64: the ones
		// above the limit are closed at once, the server's fds stay
		// bounded, the established client keeps being served, and after
		// the handshake timeout new clients get in again.
		var conns []*rawClient
		greeted, refused := 0, 0
		for i := 0; i < 1000; i++ {
			c, err := dialRaw("unix", srv.sock)
			if err != nil {
				refused++ // listen backlog full
				continue
			}
			conns = append(conns, c)
		}
		peak := readProc(t, pid)
		for _, c := range conns {
			c.c.SetReadDeadline(time.Now().Add(3 * time.Second))
			var g [18]byte
			if _, err := io.ReadFull(c.br, g[:]); err == nil {
				greeted++
			} else {
				refused++
			}
		}
		t.Logf("1000 idle connections: %d got a greeting, %d closed at once; server during the flood: %v", greeted, refused, peak)
		if greeted > maxConns || greeted == 0 {
			t.Fatalf("%d connections greeted with --max-connections %d", greeted, maxConns)
		}
		if peak.fds > before.fds+maxConns+16 {
			t.Fatalf("server fds %d during the flood (start %d, limit %d)", peak.fds, before.fds, maxConns)
		}
		for _, c := range conns {
			c.Close()
		}
		time.Sleep(2500 * time.Millisecond)
		c := dial(t)
		if _, err := c.goExport(""); err != nil {
			t.Fatalf("new client after the flood: %v", err)
		}
	})

	t.Run("pipelined", func(t *testing.T) {
		c := dial(t)
		if _, err := c.goExport(""); err != nil {
			t.Fatal(err)
		}
		const n = 10000
		rng := rand.New(rand.NewSource(7))
		offs := make([]uint64, n)
		lens := make([]uint32, n)
		var reqs []byte
		for i := range offs {
			lens[i] = uint32(512 * (1 + rng.Intn(16)))
			offs[i] = uint64(rng.Int63n(int64(size)-int64(lens[i])+1)) &^ 511
			reqs = append(reqs, reqBytes(cmdRead, uint64(i), offs[i], lens[i])...)
		}
		werr := make(chan error, 1)
		go func() { _, err := c.c.Write(reqs); werr <- err }()
		seen := make([]bool, n)
		var bytesOK int64
		for k := 0; k < n; k++ {
			errno, cookie, err := c.simple()
			if err != nil || errno != 0 || cookie >= n || seen[cookie] {
				t.Fatalf("reply %d: errno %d cookie %d err %v", k, errno, cookie, err)
			}
			seen[cookie] = true
			b := make([]byte, lens[cookie])
			if _, err := io.ReadFull(c.br, b); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, want[offs[cookie]:offs[cookie]+uint64(lens[cookie])]) {
				t.Fatalf("reply for cookie %d: wrong data", cookie)
			}
			bytesOK += int64(len(b))
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
		t.Logf("10000 pipelined reads: all replies correct (%d bytes)", bytesOK)
	})

	w.check(t)
	time.Sleep(300 * time.Millisecond)
	after := readProc(t, pid)
	t.Logf("server at the end: %v", after)
	if after.fds > before.fds+2 {
		t.Errorf("server fds %d at the end, %d at the start: leak", after.fds, before.fds)
	}
	if after.rssKiB > before.rssKiB+128<<10 {
		t.Errorf("server RSS grew from %d to %d KiB", before.rssKiB, after.rssKiB)
	}
}
