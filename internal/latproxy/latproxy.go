// Package latproxy is a TCP proxy that delays every byte by a fixed time in
// each direction, so a client on the loopback sees a server RTT away
// (benchmarks of remote sources: scripts/bench-remote.sh). Bandwidth is not
// limited: data read from one side is queued with its arrival time and
// written to the other side Delay later, like a long fat pipe. A half-close
// (EOF) is forwarded after the data before it.
package latproxy

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Proxy forwards connections to Target, delaying each direction by Delay.
type Proxy struct {
	Target string
	Delay  time.Duration // one way; the RTT added is 2 × Delay
	// Queue bounds the segments in flight per direction (default 1024 of
	// up to 64 KiB each); a full queue stops reading, so TCP pushes back.
	Queue int
}

// Serve accepts connections on l until it is closed.
func (p *Proxy) Serve(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go p.handle(c)
	}
}

func (p *Proxy) handle(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.Target)
	if err != nil {
		return
	}
	defer server.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client) }()
	go func() { defer wg.Done(); p.pipe(client, server) }()
	wg.Wait()
}

type segment struct {
	data []byte
	at   time.Time // when it was read
}

var bufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// pipe copies src to dst, each segment Delay after it was read, then
// half-closes dst. On a write error both sides are closed.
func (p *Proxy) pipe(dst, src net.Conn) {
	q := p.Queue
	if q <= 0 {
		q = 1024
	}
	ch := make(chan segment, q)
	go func() {
		defer close(ch)
		for {
			bp := bufs.Get().(*[]byte)
			n, err := src.Read(*bp)
			if n > 0 {
				ch <- segment{(*bp)[:n], time.Now()}
			} else {
				bufs.Put(bp)
			}
			if err != nil {
				return
			}
		}
	}()
	for s := range ch {
		if d := time.Until(s.at.Add(p.Delay)); d > 0 {
			time.Sleep(d)
		}
		_, err := dst.Write(s.data)
		b := s.data[:cap(s.data)]
		bufs.Put(&b)
		if err != nil {
			dst.Close()
			src.Close()
			for s := range ch { // unblock the reader
				b := s.data[:cap(s.data)]
				bufs.Put(&b)
			}
			return
		}
	}
	if tc, ok := dst.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	} else {
		dst.Close()
	}
}
