package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

var (
	fuzzDevOnce sync.Once
	fuzzDev     *holeDev
)

func fuzzServer() *Server {
	fuzzDevOnce.Do(func() { fuzzDev = newHoleDev([]int64{64 << 10, 64 << 10, 100 << 10, 28 << 10}, 77) })
	s := NewServer(Config{MaxRequest: 64 << 10, MaxInFlight: 4, HandshakeTimeout: 2 * time.Second})
	s.AddExport(Export{Name: "", Device: fuzzDev})
	s.AddExport(Export{Name: "two", Description: "second", Device: &failDev{memDev: fuzzDev.memDev, bad: 4096, badLen: 4096}})
	return s
}

// fuzzServe feeds data to serve over a net.Pipe, drains the replies, and
// fails if serve does not return soon after the input ends.
func fuzzServe(t *testing.T, data []byte, serve func(net.Conn) error) {
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve(a)
	}()
	go io.Copy(io.Discard, b)
	go func() {
		b.Write(data)
		b.Close()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("server did not return after input of %d bytes ended", len(data))
	}
}

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

var (
	cflags    = []byte{0, 0, 0, 3}
	negotiate = cat(cflags, optBytes(optStructuredReply, nil),
		optBytes(optSetMetaContext, metaData("", metaAllocation)),
		optBytes(optGo, infoData("", infoBlockSize)))
)

// requestSeeds exercise every command and edge case.
func requestSeeds() [][]byte {
	return [][]byte{
		reqBytes(0, CmdRead, 1, 0, 4096),
		cat(reqBytes(0, CmdRead, 1, 0, 0), reqBytes(0, CmdRead, 2, ^uint64(0), 10), reqBytes(0, CmdRead, 3, 250<<10, 8<<10)),
		cat(reqBytes(0, CmdRead, 1, 0, 1<<20), reqBytes(0, CmdRead, 2, 4096, 100)),
		cat(reqBytes(0, CmdWrite, 1, 0, 8), []byte("12345678"), reqBytes(0, CmdFlush, 2, 0, 0)),
		reqBytes(0, CmdWrite, 1, 0, 1<<30),
		cat(reqBytes(0, CmdTrim, 1, 0, 512), reqBytes(0, CmdWriteZeroes, 2, 0, 512), reqBytes(0, 77, 3, 0, 0)),
		cat(reqBytes(0, CmdCache, 1, 0, 1<<18), reqBytes(cmdFlagReqOne, CmdBlockStatus, 2, 0, 1<<18)),
		cat(reqBytes(0, CmdBlockStatus, 1, 60<<10, 100<<10), reqBytes(0, CmdDisc, 2, 0, 0), reqBytes(0, CmdRead, 3, 0, 1)),
		cat(reqBytes(cmdFlagDF, CmdRead, 1, 1, 3), []byte{0x25, 0x60, 0x95}),
		{0xde, 0xad, 0xbe, 0xef},
	}
}

func FuzzHandshake(f *testing.F) {
	f.Add(negotiate)
	f.Add(cat(cflags, optBytes(optExportName, nil), reqBytes(0, CmdRead, 1, 0, 512)))
	f.Add(cat([]byte{0, 0, 0, 1}, optBytes(optExportName, []byte("two")), reqBytes(0, CmdRead, 1, 4096, 512)))
	f.Add(cat(cflags, optBytes(optList, nil), optBytes(optList, []byte{1}), optBytes(optAbort, nil)))
	f.Add(cat(cflags, optBytes(optInfo, infoData("two", infoName, infoDescription, infoBlockSize)), optBytes(optGo, infoData("zz"))))
	f.Add(cat(cflags, optBytes(optGo, []byte{0, 0, 1, 0, 'a', 0}), optBytes(optStartTLS, nil), optBytes(999, []byte("x"))))
	f.Add(cat(cflags, optBytes(optStructuredReply, nil), optBytes(optListMetaContext, metaData("", "base:")),
		optBytes(optSetMetaContext, metaData("two", metaAllocation, "x-foo:bar")), optBytes(optGo, infoData("two"))))
	f.Add(cat(cflags, []byte("IHAVEOPT\x00\x00\x00\x07\xff\xff\xff\xff")))
	f.Add([]byte{0, 0, 0, 0xff})
	for _, r := range requestSeeds() {
		f.Add(cat(negotiate, r))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := fuzzServer()
		fuzzServe(t, data, func(c net.Conn) error { return s.ServeConn(context.Background(), c) })
	})
}

// FuzzRequests fuzzes the transmission phase. The first byte picks the
// path: even = kernel path (ServeTransmission, simple replies), odd = a
// negotiated session with structured replies and base:allocation.
func FuzzRequests(f *testing.F) {
	for _, r := range requestSeeds() {
		f.Add(cat([]byte{0}, r))
		f.Add(cat([]byte{1}, r))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		s := fuzzServer()
		if data[0]&1 == 0 {
			fuzzServe(t, data[1:], func(c net.Conn) error { return s.ServeTransmission(context.Background(), c, "two") })
			return
		}
		fuzzServe(t, cat(negotiate, data[1:]), func(c net.Conn) error { return s.ServeConn(context.Background(), c) })
	})
}
