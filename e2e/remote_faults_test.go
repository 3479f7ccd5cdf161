package e2e

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/regtest"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// faultArgs make reads reach the remote one 4 KiB chunk at a time, with
// no content cache. (Fetched chunks stay in the source's memory, so each
// block of the device is fetched once: the checker reads fresh blocks.)
var faultArgs = []string{"--cache-size", "0", "--fetch-chunk", "4K"}

// checker is a set of clients that read the export and check every byte
// against the local composition. Each read takes the next 4 KiB block of
// a shuffled list of every block of the device, so (holes aside) each is
// a fresh fetch from the remote; when the list runs out reads go to
// random cached ranges. Errors (EIO) are counted, wrong bytes are never
// acceptable.
type checker struct {
	want          []byte
	order         []int64 // block offsets, shuffled
	next          atomic.Int64
	pace          time.Duration
	ok, bad, eio  atomic.Int64
	lastEIO       atomic.Int64 // offset of the last block that got EIO
	lastErr       atomic.Value
	stop          chan struct{}
	wg            sync.WaitGroup
	stopped, dead atomic.Bool
}

// startChecker runs conns readers, each on its own NBD connection,
// pausing pace between reads.
func startChecker(t *testing.T, sock string, want []byte, conns int, pace time.Duration) *checker {
	t.Helper()
	c := &checker{want: want, stop: make(chan struct{}), pace: pace}
	c.order = make([]int64, len(want)/4096)
	for i := range c.order {
		c.order[i] = int64(i) * 4096
	}
	rand.New(rand.NewSource(int64(len(want)))).Shuffle(len(c.order), func(i, j int) { c.order[i], c.order[j] = c.order[j], c.order[i] })
	for i := 0; i < conns; i++ {
		rc := connectRaw(t, sock)
		c.wg.Add(1)
		go c.loop(rc, int64(i))
	}
	t.Cleanup(func() { c.halt() })
	return c
}

func (c *checker) loop(rc *rawClient, seed int64) {
	defer c.wg.Done()
	rng := rand.New(rand.NewSource(seed))
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		var off uint64
		n := uint32(4096)
		if i := c.next.Add(1) - 1; i < int64(len(c.order)) {
			off = uint64(c.order[i])
		} else {
			n = uint32(1 + rng.Intn(16<<10))
			off = uint64(rng.Int63n(int64(len(c.want)) - int64(n) + 1))
		}
		rc.c.SetDeadline(time.Now().Add(60 * time.Second))
		b, errno, err := rc.read(off, n)
		switch {
		case err != nil:
			c.lastErr.Store(err.Error())
			c.dead.Store(true)
			return
		case errno != 0:
			c.eio.Add(1)
			c.lastEIO.Store(int64(off))
		case !bytes.Equal(b, c.want[off:off+uint64(n)]):
			c.bad.Add(1)
		default:
			c.ok.Add(1)
		}
		if c.pace > 0 {
			time.Sleep(c.pace)
		}
	}
}

func (c *checker) halt() {
	if c.stopped.CompareAndSwap(false, true) {
		close(c.stop)
		c.wg.Wait()
	}
}

// waitFor polls cond until it holds. It fails t at once if a reader saw
// wrong bytes or lost its connection, or the fresh blocks ran out (the
// remote would see no more reads), and after a minute (a hang).
func (c *checker) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if c.bad.Load() != 0 {
			t.Fatalf("waiting for %s: a reader got wrong bytes", what)
		}
		if c.dead.Load() {
			t.Fatalf("waiting for %s: a reader's connection failed: %v", what, c.lastErr.Load())
		}
		if c.next.Load() >= int64(len(c.order)) {
			t.Fatalf("waiting for %s: every block of the device was read (use a bigger image)", what)
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: still not after a minute (%d reads ok, %d EIO)", what, c.ok.Load(), c.eio.Load())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// moreOK waits until n more reads have succeeded.
func (c *checker) moreOK(t *testing.T, n int64) {
	t.Helper()
	base := c.ok.Load()
	c.waitFor(t, "successful reads", func() bool { return c.ok.Load() >= base+n })
}

// finish stops the readers and fails t on any wrong byte or lost
// connection, and on any EIO unless eioAllowed.
func (c *checker) finish(t *testing.T, eioAllowed bool) {
	t.Helper()
	c.halt()
	t.Logf("concurrent readers: %d reads correct, %d wrong, %d EIO; %d of %d blocks read fresh", c.ok.Load(), c.bad.Load(), c.eio.Load(),
		min(c.next.Load(), int64(len(c.order))), len(c.order))
	if c.bad.Load() != 0 {
		t.Errorf("%d reads returned wrong bytes", c.bad.Load())
	}
	if c.dead.Load() {
		t.Errorf("a reader's connection failed: %v", c.lastErr.Load())
	}
	if !eioAllowed && c.eio.Load() != 0 {
		t.Errorf("%d reads failed with EIO", c.eio.Load())
	}
}

// faultImage is the aligned multi-blob layout (holes between devices).
func faultImage(t *testing.T, seed int64, files int) (image, []byte) {
	t.Helper()
	im := layouts(t, testtree.Options{Seed: seed, Files: files, MaxSize: 256 << 10})[2]
	want, err := os.ReadFile(composeFile(t, im))
	if err != nil {
		t.Fatal(err)
	}
	return im, want
}

// TestRemoteRegistryRestart: the registry is killed (SIGKILL, mid-read)
// while two clients read uncached ranges. Back within the retry window,
// every read finishes with the right bytes; down for longer, reads fail
// with EIO (never wrong bytes, never a hang); restarted, reads recover,
// including the very range that failed.
func TestRemoteRegistryRestart(t *testing.T) {
	e := newRemoteEnv(t)
	reg, af := e.registry(t, nil, regPass)
	im, want := faultImage(t, 71, 12)
	rim := e.push(t, reg, reg.Addr, "e2e/restart", im)
	// 5 retries: at least 0.1+0.2+0.4+0.8+1.6 = 3.1 s before a read gives up.
	srv := serve(t, e.remoteArgs(rim, af, append(faultArgs, "--fetch-retries", "5")...)...)
	c := startChecker(t, srv.sock, want, 2, 0)
	c.moreOK(t, 20)

	// Back within the window: no read fails.
	reg.Kill()
	okAtKill := c.ok.Load()
	time.Sleep(500 * time.Millisecond)
	okWhileDown := c.ok.Load() - okAtKill
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	c.moreOK(t, 30)
	t.Logf("registry down 0.5 s: %d reads completed meanwhile, %d EIO", okWhileDown, c.eio.Load())
	if n := c.eio.Load(); n != 0 {
		t.Fatalf("%d reads failed although the registry came back within the retry window", n)
	}

	// Down past the window: EIO.
	reg.Kill()
	c.waitFor(t, "EIO while the registry is down", func() bool { return c.eio.Load() >= 1 })
	off := uint64(c.lastEIO.Load())
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	c.moreOK(t, 30)
	c.finish(t, true)

	// The range that failed reads correctly now.
	rc := connectRaw(t, srv.sock)
	if b, errno, err := rc.read(off, 4096); err != nil || errno != 0 || !bytes.Equal(b, want[off:off+4096]) {
		t.Fatalf("re-read of the block that failed (%d): errno %d err %v", off, errno, err)
	}
	rc.Close()
	srv.stop(t)
	t.Logf("server log: %d lines", strings.Count(srv.stderr.String(), "\n"))
	noSecrets(t, "the server's log", srv.stderr.String())
}

// TestRemoteFaultProxy: a proxy between the server and the registry
// injects, one kind after another into a quarter of the ranged GETs, 500, 503,
// 429, connection resets mid-body, short bodies, 206s for another range,
// stalls mid-body and requests never answered (both cut by
// --fetch-stall-timeout). Retries hide every one of them: the concurrent
// readers get every read right and none fails.
func TestRemoteFaultProxy(t *testing.T) {
	e := newRemoteEnv(t)
	reg, _ := e.registry(t, nil, regPass)
	px, err := regtest.StartProxy(regtest.ProxyOptions{Upstream: reg.URL, UpstreamCA: e.ca, TLS: e.ca, Dir: e.dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(px.Close)
	im, want := faultImage(t, 72, 14)
	rim := e.push(t, reg, px.Addr, "e2e/faults", im)
	af := filepath.Join(e.dir, "proxy-auth.json")
	if err := regtest.AuthFile(af, px.Addr, regUser, regPass); err != nil {
		t.Fatal(err)
	}
	srv := serve(t, e.remoteArgs(rim, af, append(faultArgs, "--fetch-retries", "10", "--fetch-stall-timeout", "200ms")...)...)
	c := startChecker(t, srv.sock, want, 2, 0)
	c.moreOK(t, 10)
	faults := []regtest.Fault{regtest.Fault500, regtest.Fault503, regtest.Fault429, regtest.FaultReset,
		regtest.FaultShortBody, regtest.FaultWrongRange, regtest.FaultStall, regtest.FaultHang}
	for _, f := range faults {
		px.SetFault(f, 0.25)
		c.waitFor(t, string(f)+" faults", func() bool { return px.Injected(f) >= 5 })
		px.SetFault(regtest.FaultNone, 0)
		c.moreOK(t, 5)
		t.Logf("%s: %d injected; %d reads ok, %d EIO so far", f, px.Injected(f), c.ok.Load(), c.eio.Load())
	}
	c.finish(t, false)
	srv.stop(t)
	noSecrets(t, "the server's log", srv.stderr.String())
}

// TestRemoteRedirect: the registry (behind a proxy playing a registry
// with a blob store) answers authorized blob GETs with 307 to another
// host, nginx over https. The server follows it, never sends the
// registry's Authorization there, and the device mounts identical.
func TestRemoteRedirect(t *testing.T) {
	e := newRemoteEnv(t)
	need(t, regtest.NginxBinary)
	reg, _ := e.registry(t, nil, regPass)
	im := layouts(t, testtree.Options{Seed: 73, Files: 14, MaxSize: 160 << 10})[1]
	root := filepath.Join(e.dir, "store")
	os.Mkdir(root, 0o755)
	px, err := regtest.StartProxy(regtest.ProxyOptions{Upstream: reg.URL, UpstreamCA: e.ca, TLS: e.ca, Dir: e.dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(px.Close)
	rim := e.push(t, reg, px.Addr, "e2e/redirect", im)
	for i, b := range im.blobs {
		data, _ := os.ReadFile(b)
		hex := rim.blobs[i][strings.LastIndex(rim.blobs[i], ":")+1:]
		os.WriteFile(filepath.Join(root, hex), data, 0o644)
	}
	ng, err := regtest.StartNginx(filepath.Join(e.dir, "nginx"), root, e.ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ng.Close)
	px.SetRedirect(ng.HTTPS)
	px.SetFault(regtest.FaultRedirect, 1)
	af := filepath.Join(e.dir, "proxy-auth.json")
	if err := regtest.AuthFile(af, px.Addr, regUser, regPass); err != nil {
		t.Fatal(err)
	}
	srv := serve(t, e.remoteArgs(rim, af, "--fetch-chunk", "32K")...)
	compareTree(t, im.tree, fuseMount(t, srv.sock))
	composeRemote(t, e.remoteArgs(rim, af), composeFile(t, im))

	es, err := ng.Access()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range es {
		if a.Authorization != "" {
			t.Fatalf("the redirect target got Authorization %q", a.Authorization)
		}
	}
	_, regGETs, _ := reg.BlobBytes("e2e/redirect")
	if len(es) == 0 || px.Injected(regtest.FaultRedirect) == 0 || regGETs == 0 {
		t.Fatalf("redirects %d, blob store GETs %d, registry blob GETs %d", px.Injected(regtest.FaultRedirect), len(es), regGETs)
	}
	t.Logf("%d redirects by the registry, %d GETs at the blob store, none with Authorization", px.Injected(regtest.FaultRedirect), len(es))
	srv.stop(t)
	noSecrets(t, "the server's log", srv.stderr.String())
}

// TestRemoteTokenExpiry: a token registry whose tokens expire. First the
// token server says expires_in=1: the server fetches new tokens before
// the old ones expire. Then tokens claim an hour but the registry stops
// accepting each after a second or so (an early expiry): the server gets 401
// and fetches another. The concurrent readers never fail.
func TestRemoteTokenExpiry(t *testing.T) {
	e := newRemoteEnv(t)
	ts := e.tokenServer(t)
	reg, af := e.registry(t, ts, regPass)
	im, want := faultImage(t, 74, 20)
	rim := e.push(t, reg, reg.Addr, "e2e/expiry", im)
	ts.SetExpiry(time.Second, 2*time.Second)
	srv := serve(t, e.remoteArgs(rim, af, append(faultArgs, "--fetch-retries", "3")...)...)
	c := startChecker(t, srv.sock, want, 2, 10*time.Millisecond)

	base := ts.Issued()
	c.waitFor(t, "tokens refreshed ahead of expiry", func() bool { return ts.Issued() >= base+2 })
	c.moreOK(t, 10)
	t.Logf("expires_in=1: %d tokens issued while reading", ts.Issued()-base)

	ts.SetExpiry(time.Hour, 1500*time.Millisecond)
	base = ts.Issued()
	c.waitFor(t, "tokens replaced after a 401", func() bool { return ts.Issued() >= base+2 })
	c.moreOK(t, 10)
	t.Logf("early expiry: %d tokens issued while reading", ts.Issued()-base)
	c.finish(t, false)
	if ts.Refused() != 0 {
		t.Errorf("token server refused %d requests", ts.Refused())
	}
}

// TestRemoteBadCredentials: wrong or missing credentials, and a registry
// the server does not trust, are refused at start: serve exits non-zero
// with a message naming the registry, the repository and the status, and
// never prints the password (plain or base64 as in the auth file).
func TestRemoteBadCredentials(t *testing.T) {
	e := newRemoteEnv(t)
	const wrong = "Wr0ng-pass-e2e-ZZ"
	ts := e.tokenServer(t)
	im := layouts(t, testtree.Options{Seed: 75, Files: 4, MaxSize: 16 << 10})[0]
	for _, kind := range []string{"htpasswd", "token"} {
		var tsArg *regtest.TokenServer
		if kind == "token" {
			tsArg = ts
		}
		reg, _ := e.registry(t, tsArg, regPass)
		repo := "e2e/creds-" + kind
		rim := e.push(t, reg, reg.Addr, repo, im)
		badAuth := filepath.Join(t.TempDir(), "bad.json")
		regtest.AuthFile(badAuth, reg.Addr, regUser, wrong)
		noAuth := filepath.Join(t.TempDir(), "none.json")
		os.WriteFile(noAuth, []byte(`{"auths":{}}`), 0o600)
		cases := []struct {
			name string
			args []string
			want []string
		}{
			{"wrong password", e.remoteArgs(rim, badAuth, "--fetch-retries", "1"), []string{reg.Addr, repo, "401"}},
			{"no credentials", e.remoteArgs(rim, noAuth, "--fetch-retries", "1"), []string{reg.Addr, repo, "401"}},
			{"untrusted CA", append(rim.blobArgs(), "--authfile", badAuth, "--fetch-retries", "1"), []string{reg.Addr, repo, "certificate"}},
		}
		for _, tc := range cases {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			cmd := exec.CommandContext(ctx, binPath, append([]string{"serve", "--listen", "unix:" + filepath.Join(t.TempDir(), "s")}, tc.args...)...)
			out, err := cmd.CombinedOutput()
			cancel()
			msg := strings.TrimSpace(string(out))
			if _, ok := err.(*exec.ExitError); !ok {
				t.Errorf("%s, %s: serve did not exit with an error: %v\n%s", kind, tc.name, err, msg)
				continue
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("%s, %s: message does not name %q:\n%s", kind, tc.name, w, msg)
				}
			}
			noSecrets(t, kind+", "+tc.name+": the message", msg, wrong)
			t.Logf("%s, %s: %v: %s", kind, tc.name, err, msg)
		}
	}
}
