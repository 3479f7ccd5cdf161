package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"testing"
)

var sinkReq request

func BenchmarkDecodeRequest(b *testing.B) {
	var h [requestHdrLen]byte
	copy(h[:], reqBytes(0, CmdRead, 42, 1<<30, 128<<10))
	b.ReportAllocs()
	for b.Loop() {
		r, ok := decodeRequest(&h)
		if !ok {
			b.Fatal("bad magic")
		}
		sinkReq = r
	}
}

func BenchmarkEncodeSimpleReply(b *testing.B) {
	buf := make([]byte, simpleHdrLen)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		putSimpleReply(buf, 0, uint64(i))
	}
}

func BenchmarkEncodeReadChunk(b *testing.B) {
	buf := make([]byte, structHdrLen+8)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		putChunkHeader(buf, replyFlagDone, replyTypeData, uint64(i), 8+4096)
		binary.BigEndian.PutUint64(buf[structHdrLen:], uint64(i)*4096)
	}
}

func BenchmarkBufPool(b *testing.B) {
	var p bufPool
	b.ReportAllocs()
	for b.Loop() {
		bp := p.get(128 << 10)
		p.put(bp)
	}
}

// BenchmarkServeRead measures whole READ round trips over a socketpair:
// a client pipelining requests in batches of 32, the server's reader,
// workers and reply writes. allocs/op covers client and server.
func BenchmarkServeRead(b *testing.B) {
	for _, tc := range []struct {
		name       string
		size       uint32
		structured bool
	}{
		{"4K", 4 << 10, false},
		{"128K", 128 << 10, false},
		{"1M", 1 << 20, false},
		{"128K-structured", 128 << 10, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			dev := newMemDev(64<<20, 1)
			s := newTestServer(b, Config{}, Export{Device: dev})
			a, cn := socketpair(b)
			defer cn.Close()
			go s.ServeConn(context.Background(), a)
			c := &tclient{t: b, c: cn, br: bufio.NewReaderSize(cn, 1<<20)}
			c.goExport("", tc.structured, false)

			const batch = 32
			var reqs []byte
			for i := range batch {
				off := uint64(i) * uint64(tc.size) % (64<<20 - uint64(tc.size))
				reqs = append(reqs, reqBytes(0, CmdRead, uint64(i), off, tc.size)...)
			}
			hdr := simpleHdrLen
			if tc.structured {
				hdr = structHdrLen + 8
			}
			reply := make([]byte, hdr+int(tc.size))
			b.SetBytes(int64(tc.size))
			b.ReportAllocs()
			b.ResetTimer()
			sent := make(chan error, 1)
			n := b.N
			go func() {
				for i := 0; i < n; i += batch {
					k := min(batch, n-i)
					if _, err := cn.Write(reqs[:k*requestHdrLen]); err != nil {
						sent <- err
						return
					}
				}
				sent <- nil
			}()
			for range n {
				if _, err := io.ReadFull(c.br, reply); err != nil {
					b.Fatal(err)
				}
				if binary.BigEndian.Uint32(reply[4:8]) != 0 && !tc.structured {
					b.Fatal("error reply")
				}
			}
			b.StopTimer()
			if err := <-sent; err != nil {
				b.Fatal(err)
			}
			c.req(0, CmdDisc, 0, 0, 0)
		})
	}
}
