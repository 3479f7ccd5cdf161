package nbd

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// recListener records what clients send, for fuzz seeds.
type recListener struct {
	net.Listener
	mu   sync.Mutex
	recs []*recConn
}

type recConn struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
}

func (c *recConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	if len(c.buf) < 64<<10 {
		c.buf = append(c.buf, p[:n]...)
	}
	c.mu.Unlock()
	return n, err
}

func (l *recListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	rc := &recConn{Conn: c}
	l.mu.Lock()
	l.recs = append(l.recs, rc)
	l.mu.Unlock()
	return rc, nil
}

// TestCaptureSeeds records real client sessions (nbdinfo, nbdcopy, qemu-img,
// qemu-io) into testdata/fuzz/FuzzHandshake. It only runs with
// NBD_CAPTURE_SEEDS=1; the files it writes are checked in.
func TestCaptureSeeds(t *testing.T) {
	if os.Getenv("NBD_CAPTURE_SEEDS") == "" {
		t.Skip("set NBD_CAPTURE_SEEDS=1 to re-record fuzz seeds from real clients")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzHandshake")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dev := newHoleDev([]int64{64 << 10, 64 << 10, 100 << 10, 28 << 10}, 77)
	for _, tc := range []struct {
		name string
		tool string
		args []string
	}{
		{"nbdinfo-json", "nbdinfo", []string{"--json", "URI"}},
		{"nbdinfo-list", "nbdinfo", []string{"--list", "URI"}},
		{"nbdinfo-map", "nbdinfo", []string{"--map", "URI"}},
		{"nbdcopy", "nbdcopy", []string{"--connections=1", "URI", "OUT"}},
		{"qemu-img-convert", "qemu-img", []string{"convert", "-f", "raw", "-O", "raw", "URI", "OUT"}},
		{"qemu-io-read", "qemu-io", []string{"-r", "-f", "raw", "-c", "read 0 64k", "-c", "read 100k 4k", "URI"}},
	} {
		s := newTestServer(t, Config{}, Export{Device: dev})
		l, uri, err := Listen("unix:" + filepath.Join(t.TempDir(), "s"))
		if err != nil {
			t.Fatal(err)
		}
		rl := &recListener{Listener: l}
		go s.Serve(rl)
		args := make([]string, len(tc.args))
		for i, a := range tc.args {
			args[i] = strings.NewReplacer("URI", uri, "OUT", filepath.Join(t.TempDir(), "out")).Replace(a)
		}
		run(t, tc.tool, args...)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.Shutdown(ctx)
		cancel()
		rl.mu.Lock()
		for i, rc := range rl.recs {
			rc.mu.Lock()
			seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", rc.buf)
			rc.mu.Unlock()
			name := filepath.Join(dir, fmt.Sprintf("%s-%d", tc.name, i))
			if err := os.WriteFile(name, []byte(seed), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		rl.mu.Unlock()
	}
}
