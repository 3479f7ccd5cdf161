package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// fileDev is a device made of segments: file-backed data (which it names
// through FileRange), holes, and in-memory data (like flatdev's overlaid
// primary head), so zero-copy and copied reads mix within one test.
type fileDev struct {
	data  []byte // the expected bytes of the whole device
	segs  []fileSeg
	zeroc atomic.Int64 // FileRange calls that said ok
	calls atomic.Int64 // all FileRange calls
}

type fileSeg struct {
	off, n int64
	f      *os.File // nil: hole (zeros) or memory (mem)
	foff   int64
	mem    bool
}

// newFileDev builds [mem 64K][file A 3M at file offset 4K][hole 192K][file B 2M][mem 256K].
func newFileDev(t *testing.T, seed int64) *fileDev {
	d := &fileDev{}
	rng := rand.New(rand.NewSource(seed))
	add := func(n int64, kind string) {
		off := int64(len(d.data))
		b := make([]byte, n)
		if kind != "hole" {
			rng.Read(b)
		}
		d.data = append(d.data, b...)
		s := fileSeg{off: off, n: n, mem: kind == "mem"}
		if kind == "file" {
			p := filepath.Join(t.TempDir(), "blob")
			if err := os.WriteFile(p, append(make([]byte, 4096), b...), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			s.f, s.foff = f, 4096
		}
		d.segs = append(d.segs, s)
	}
	add(64<<10, "mem")
	add(3<<20, "file")
	add(192<<10, "hole")
	add(2<<20, "file")
	add(256<<10, "mem")
	return d
}

func (d *fileDev) Size() int64 { return int64(len(d.data)) }

func (d *fileDev) ReadAt(p []byte, off int64) (int, error) {
	if off >= d.Size() {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), d.Size()-off)]
	for _, s := range d.segs {
		lo, hi := max(off, s.off), min(off+int64(len(p)), s.off+s.n)
		if lo >= hi {
			continue
		}
		buf := p[lo-off : hi-off]
		switch {
		case s.f != nil:
			if _, err := s.f.ReadAt(buf, s.foff+lo-s.off); err != nil {
				return 0, err
			}
		default:
			copy(buf, d.data[lo:hi]) // memory, or zeros for a hole
		}
	}
	return len(p), nil
}

func (d *fileDev) FileRange(off, n int64) (*os.File, int64, bool) {
	d.calls.Add(1)
	for _, s := range d.segs {
		if s.f != nil && off >= s.off && off+n <= s.off+s.n {
			d.zeroc.Add(1)
			return s.f, s.foff + off - s.off, true
		}
	}
	return nil, 0, false
}

// TestZeroCopyMatchesRead: random large reads inside files, across file,
// hole and memory boundaries, return the device's bytes whether they
// were sent with sendfile or copied, with simple and structured replies.
func TestZeroCopyMatchesRead(t *testing.T) {
	for _, structured := range []bool{false, true} {
		dev := newFileDev(t, 7)
		s := newTestServer(t, Config{MaxRequest: 1 << 20}, Export{Name: "f", Device: dev})
		c, errc := startConn(t, s)
		c.goExport("f", structured, false)
		rng := rand.New(rand.NewSource(8))
		const n = 300
		type rq struct{ off, len uint64 }
		reqs := make(map[uint64]rq)
		var b []byte
		for i := uint64(0); i < n; i++ {
			l := uint64(32<<10 + rng.Intn(1<<20-32<<10+1))
			off := uint64(rng.Int63n(dev.Size() - int64(l) + 1))
			reqs[i] = rq{off, l}
			b = append(b, reqBytes(0, CmdRead, i, off, uint32(l))...)
		}
		go c.c.Write(b)
		for range n {
			var cookie uint64
			var data []byte
			if structured {
				simple, errno, ch := c.anyReply()
				if simple || errno != 0 || ch.typ != replyTypeData {
					t.Fatalf("reply %+v errno %d", ch, errno)
				}
				cookie, data = ch.cookie, ch.payload[8:]
				if off := binary.BigEndian.Uint64(ch.payload); off != reqs[cookie].off {
					t.Fatalf("reply %d: chunk offset %d, want %d", cookie, off, reqs[cookie].off)
				}
			} else {
				var errno uint32
				errno, cookie = c.simple()
				if errno != 0 {
					t.Fatalf("reply %d: errno %d", cookie, errno)
				}
				data = c.read(int(reqs[cookie].len))
			}
			r, ok := reqs[cookie]
			if !ok || uint64(len(data)) != r.len || !bytes.Equal(data, dev.data[r.off:r.off+r.len]) {
				t.Fatalf("reply %d (%+v, known %v): wrong data", cookie, r, ok)
			}
			delete(reqs, cookie)
		}
		if dev.zeroc.Load() == 0 || dev.zeroc.Load() == dev.calls.Load() {
			t.Fatalf("zero-copy used for %d of %d candidate reads: want some, not all", dev.zeroc.Load(), dev.calls.Load())
		}
		c.req(0, CmdDisc, 0, 0, 0)
		c.expectClosed()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// TestZeroCopyTruncated: a file truncated after the zero-copy reply was
// queued (header committed) closes the connection: the client gets a short
// reply and EOF, never zeros or wrong bytes, and the log says why. A file
// already truncated when the READ is served gets EIO through the read path.
func TestZeroCopyTruncated(t *testing.T) {
	var lc lineCounter
	dev := newFileDev(t, 9)
	// A large memory segment to fill the socket with first.
	bigOff := dev.Size()
	big := make([]byte, 32<<20)
	rand.New(rand.NewSource(10)).Read(big)
	dev.data = append(dev.data, big...)
	dev.segs = append(dev.segs, fileSeg{off: bigOff, n: int64(len(big)), mem: true})
	s := newTestServer(t, Config{MaxRequest: 32 << 20, Logger: slog.New(slog.NewTextHandler(&lc, nil))}, Export{Name: "f", Device: dev})
	a, b := socketpair(t)
	defer b.Close()
	errc := make(chan error, 1)
	go func() { errc <- s.ServeTransmission(context.Background(), a, "f") }()
	b.SetDeadline(time.Now().Add(30 * time.Second))
	cl := &tclient{t: t, c: b, br: newBufReader(b)}

	fa := dev.segs[1]
	cl.req(0, CmdRead, 1, uint64(fa.off), 1<<20) // file still whole: data
	if got := cl.expectRead(false, 1, uint64(fa.off), 1<<20); !bytes.Equal(got, dev.data[fa.off:fa.off+1<<20]) {
		t.Fatal("zero-copy read: wrong data")
	}
	fb := dev.segs[3]
	if err := os.Truncate(fb.f.Name(), fb.foff+fb.n/2); err != nil {
		t.Fatal(err)
	}
	cl.req(0, CmdRead, 2, uint64(fb.off), uint32(fb.n)) // already short: EIO, connection stays
	cl.expectStatus(false, 2, EIO)

	cl.req(0, CmdRead, 3, uint64(bigOff), uint32(len(big))) // fills the socket; its writer blocks
	c := onlyConn(t, s)
	waitWriting(t, c)
	const n = 2 << 20
	cl.req(0, CmdRead, 4, uint64(fa.off), n) // passes the size check, queued
	waitQueued(t, c, 1)
	if err := os.Truncate(fa.f.Name(), fa.foff+n/4); err != nil {
		t.Fatal(err)
	}
	if got := cl.expectRead(false, 3, uint64(bigOff), len(big)); !bytes.Equal(got, big) {
		t.Fatal("large reply: wrong data")
	}
	errno, cookie := cl.simple()
	if errno != 0 || cookie != 4 {
		t.Fatalf("errno %d cookie %d", errno, cookie)
	}
	rest, err := io.ReadAll(cl.br)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) >= n || !bytes.Equal(rest, dev.data[fa.off:fa.off+int64(len(rest))]) {
		t.Fatalf("after truncation got %d of %d bytes, or wrong ones", len(rest), n)
	}
	if err := <-errc; err == nil {
		t.Fatal("no error from a connection closed mid-reply")
	}
	if lc.count("zero-copy send failed") != 1 {
		t.Fatalf("log: %q", lc.lines)
	}
}

// TestZeroCopyNotWithTLS: over TLS, large reads are copied through the
// TLS connection; the device's FileRange is never asked.
func TestZeroCopyNotWithTLS(t *testing.T) {
	srvCfg, cliCfg := selfSigned(t)
	dev := newFileDev(t, 11)
	s := newTestServer(t, Config{TLS: srvCfg}, Export{Name: "f", Device: dev})
	c, _ := startConn(t, s)
	c.greet(flagFixedNewstyle | flagNoZeroes)
	c.sendOpt(optStartTLS, nil)
	c.expectReply(optStartTLS, repAck)
	tc := tls.Client(c.c, cliCfg)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.c, c.br = tc, newBufReader(tc)
	c.goExport2("f")
	off := uint64(dev.segs[1].off)
	c.req(0, CmdRead, 1, off, 1<<20)
	if got := c.expectRead(false, 1, off, 1<<20); !bytes.Equal(got, dev.data[off:off+1<<20]) {
		t.Fatal("wrong data over TLS")
	}
	if dev.calls.Load() != 0 {
		t.Fatalf("FileRange called %d times over TLS", dev.calls.Load())
	}
}
