package e2e

import (
	"bytes"
	"math/rand"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// EnvSoak lengthens the soak (a Go duration, e.g. EROFS_BLOCKD_SOAK=10m);
// the default keeps `make test` short.
const EnvSoak = "EROFS_BLOCKD_SOAK"

// TestSoak: 64 connections of random reads (1 byte to 1 MiB, random
// alignment, 4 requests in flight each) against the real binary serving the
// aligned multi-blob layout with holes, every byte checked against
// `compose -o`. Reports requests, bytes and mismatches (must be 0) and the
// server's RSS, threads and fds at the start and the end.
func TestSoak(t *testing.T) {
	d := 10 * time.Second
	if v := os.Getenv(EnvSoak); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("%s=%q: %v", EnvSoak, v, err)
		}
	}
	im := layouts(t, testtree.Options{Seed: 53, Files: 40, MaxSize: 600 << 10, Dup: true})[2]
	want, err := os.ReadFile(composeFile(t, im))
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, im.blobArgs()...)
	pid := srv.cmd.Process.Pid
	start := readProc(t, pid)
	var reqs, nbytes, mismatches, failures atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	for k := 0; k < 64; k++ {
		c := connectRaw(t, srv.sock)
		c.c.SetDeadline(time.Time{})
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(k)))
			type pend struct{ off, n uint64 }
			var mu sync.Mutex
			pending := map[uint64]pend{}
			issued := make(chan struct{}, 4) // one token per request in flight
			go func() {                      // writer
				defer close(issued)
				for cookie := uint64(0); time.Now().Before(deadline); cookie++ {
					var n uint64
					switch rng.Intn(4) {
					case 0:
						n = uint64(1 + rng.Intn(512))
					case 1:
						n = 4096
					default:
						n = uint64(1 + rng.Intn(1<<20))
					}
					off := uint64(rng.Int63n(int64(len(want)) - int64(n) + 1))
					if rng.Intn(2) == 0 {
						off &^= 4095
					}
					mu.Lock()
					pending[cookie] = pend{off, n}
					mu.Unlock()
					if err := c.req(cmdRead, cookie, off, uint32(n)); err != nil {
						return
					}
					issued <- struct{}{}
				}
			}()
			buf := make([]byte, 1<<20)
			for range issued {
				errno, cookie, err := c.simple()
				if err != nil || errno != 0 {
					failures.Add(1)
					t.Errorf("conn %d: errno %d err %v", k, errno, err)
					return
				}
				mu.Lock()
				p, ok := pending[cookie]
				delete(pending, cookie)
				mu.Unlock()
				if !ok {
					failures.Add(1)
					t.Errorf("conn %d: reply for unknown cookie %d", k, cookie)
					return
				}
				b := buf[:p.n]
				if _, err := readFull(c, b); err != nil {
					failures.Add(1)
					t.Errorf("conn %d: %v", k, err)
					return
				}
				if !bytes.Equal(b, want[p.off:p.off+p.n]) {
					mismatches.Add(1)
				}
				reqs.Add(1)
				nbytes.Add(int64(p.n))
			}
			c.req(cmdDisc, 0, 0, 0)
		}(k)
	}
	wg.Wait()
	time.Sleep(200 * time.Millisecond)
	end := readProc(t, pid)
	t.Logf("soak %v, 64 connections: %d requests, %.1f MiB, %d mismatches, %d failures (%.0f req/s, %.1f MiB/s)",
		d, reqs.Load(), float64(nbytes.Load())/(1<<20), mismatches.Load(), failures.Load(),
		float64(reqs.Load())/d.Seconds(), float64(nbytes.Load())/(1<<20)/d.Seconds())
	t.Logf("server at the start: %v; at the end: %v", start, end)
	if mismatches.Load() != 0 || failures.Load() != 0 || reqs.Load() == 0 {
		t.Fatalf("%d mismatches, %d failures", mismatches.Load(), failures.Load())
	}
	if end.fds > start.fds+2 {
		t.Errorf("server fds: %d at the end, %d at the start", end.fds, start.fds)
	}
}

func readFull(c *rawClient, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.br.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
