package e2e

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A raw NBD client for the hostile, fault, shutdown and soak tests: it
// speaks exactly the bytes a test wants, including malformed ones.
const (
	nbdMagic      = 0x4e42444d41474943 // "NBDMAGIC"
	ihaveopt      = 0x49484156454F5054
	optReplyMagic = 0x3e889045565a9
	reqMagic      = 0x25609513
	simpleMagic   = 0x67446698
	structMagic   = 0x668e33ef

	optExportName = 1
	optAbort      = 2
	optList       = 3
	optStartTLS   = 5
	optGo         = 7
	optStructured = 8

	repAck        = 1
	repInfo       = 3
	repErrUnsup   = 1<<31 | 1
	repErrInvalid = 1<<31 | 3
	repErrTLSReqd = 1<<31 | 5
	repErrTooBig  = 1<<31 | 9

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdTrim        = 4
	cmdWriteZeroes = 6

	errPERM  = 1
	errIO    = 5
	errINVAL = 22
)

type rawClient struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(network, addr string) (*rawClient, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &rawClient{c: c, br: bufio.NewReaderSize(c, 1<<20)}, nil
}

// greet reads the greeting and sends FIXED_NEWSTYLE|NO_ZEROES.
func (r *rawClient) greet() error {
	var g [18]byte
	if _, err := io.ReadFull(r.br, g[:]); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if binary.BigEndian.Uint64(g[0:]) != nbdMagic || binary.BigEndian.Uint64(g[8:]) != ihaveopt {
		return fmt.Errorf("bad greeting %x", g)
	}
	_, err := r.c.Write([]byte{0, 0, 0, 3})
	return err
}

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, ihaveopt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func (r *rawClient) opt(opt uint32, data []byte) error {
	_, err := r.c.Write(optBytes(opt, data))
	return err
}

// optReply reads one option reply: option, type, payload.
func (r *rawClient) optReply() (uint32, uint32, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return 0, 0, nil, err
	}
	if binary.BigEndian.Uint64(h[0:]) != optReplyMagic {
		return 0, 0, nil, fmt.Errorf("bad option reply magic %x", h[:8])
	}
	n := binary.BigEndian.Uint32(h[16:])
	if n > 1<<20 {
		return 0, 0, nil, fmt.Errorf("option reply of %d bytes", n)
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r.br, p)
	return binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:]), p, err
}

func goData(name string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	return append(b, 0, 0)
}

// goExport negotiates NBD_OPT_GO for name and returns the export size.
func (r *rawClient) goExport(name string) (int64, error) {
	if err := r.opt(optGo, goData(name)); err != nil {
		return 0, err
	}
	var size int64 = -1
	for {
		_, typ, p, err := r.optReply()
		if err != nil {
			return 0, err
		}
		switch typ {
		case repInfo:
			if len(p) >= 12 && binary.BigEndian.Uint16(p) == 0 {
				size = int64(binary.BigEndian.Uint64(p[2:]))
			}
		case repAck:
			return size, nil
		default:
			return 0, fmt.Errorf("NBD_OPT_GO: reply %#x %q", typ, p)
		}
	}
}

func reqBytes(typ uint16, cookie, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, reqMagic)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

func (r *rawClient) req(typ uint16, cookie, off uint64, length uint32) error {
	_, err := r.c.Write(reqBytes(typ, cookie, off, length))
	return err
}

// simple reads a simple reply header: errno and cookie.
func (r *rawClient) simple() (uint32, uint64, error) {
	var h [16]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return 0, 0, err
	}
	if m := binary.BigEndian.Uint32(h[:]); m != simpleMagic {
		return 0, 0, fmt.Errorf("bad reply magic %#x", m)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:]), nil
}

// read issues one READ and returns the data, or the errno.
func (r *rawClient) read(off uint64, n uint32) ([]byte, uint32, error) {
	if err := r.req(cmdRead, off, off, n); err != nil {
		return nil, 0, err
	}
	errno, cookie, err := r.simple()
	if err != nil {
		return nil, 0, err
	}
	if cookie != off {
		return nil, 0, fmt.Errorf("cookie %d, want %d", cookie, off)
	}
	if errno != 0 {
		return nil, errno, nil
	}
	b := make([]byte, n)
	_, err = io.ReadFull(r.br, b)
	return b, 0, err
}

// closedWithin reports whether the server closes the connection (EOF or
// reset, no more bytes) within d.
func (r *rawClient) closedWithin(d time.Duration) error {
	r.c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(r.br)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return fmt.Errorf("still open after %v", d)
	}
	if len(b) != 0 {
		return fmt.Errorf("%d unexpected bytes before close", len(b))
	}
	return nil
}

func (r *rawClient) Close() { r.c.Close() }

// procStat reads VmRSS (KiB) and Threads from /proc/PID/status and counts
// open fds.
type procStat struct{ rssKiB, threads, fds int }

func (p procStat) String() string {
	return fmt.Sprintf("RSS %.1f MiB, %d threads, %d fds", float64(p.rssKiB)/1024, p.threads, p.fds)
}

func readProc(t testing.TB, pid int) procStat {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var s procStat
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			s.rssKiB, _ = strconv.Atoi(f[1])
		case "Threads:":
			s.threads, _ = strconv.Atoi(f[1])
		}
	}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	s.fds = len(ents)
	return s
}
