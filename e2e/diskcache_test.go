package e2e

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// readDevice copies the whole served device with nbdcopy and returns the
// file's sha256.
func readDevice(t *testing.T, s *server) string {
	t.Helper()
	need(t, "nbdcopy")
	out := filepath.Join(t.TempDir(), "dev.img")
	if b, err := exec.Command("nbdcopy", s.uri, out).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy %s: %v\n%s\n%s", s.uri, err, b, s.stderr)
	}
	return fileSHA(t, out)
}

// chunkFiles lists the disk cache's chunk records and their total size.
func chunkFiles(t *testing.T, dir string) ([]string, int64) {
	t.Helper()
	var files []string
	var total int64
	filepath.WalkDir(filepath.Join(dir, "chunks"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if st, err := d.Info(); err == nil {
				files = append(files, p)
				total += st.Size()
			}
		}
		return nil
	})
	return files, total
}

// kill9 kills the server without letting it clean up.
func (s *server) kill9(t *testing.T) {
	t.Helper()
	s.cmd.Process.Kill()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("killed server did not exit")
	}
}

// TestDiskCacheRegistry: blobs from the real registry through --cache-dir:
// every byte equal to the local composition cold, warm (the registry log
// shows 0 blob bytes sent), after kill -9 in the middle of a fill, after
// chunk files are garbled and truncated, with the registry stopped
// (offline restart), and with a cache smaller than the device (the bound
// holds throughout); a second daemon on the same dir is refused.
func TestDiskCacheRegistry(t *testing.T) {
	e := newRemoteEnv(t)
	reg, af := e.registry(t, nil, regPass)
	im := layouts(t, testtree.Options{Seed: 71, Files: 24, MaxSize: 256 << 10})[2]
	repo := "e2e/diskcache"
	rim := e.push(t, reg, reg.Addr, repo, im)
	want := fileSHA(t, composeFile(t, im))
	cdir := filepath.Join(t.TempDir(), "cache")
	args := func(dir string, extra ...string) []string {
		return e.remoteArgs(rim, af, append([]string{"--cache-dir", dir, "--fetch-chunk", "64K"}, extra...)...)
	}
	blobBytes := func() int64 {
		n, _, err := reg.BlobBytes(repo)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	// Cold, then a second daemon on the same dir is refused.
	srv := serve(t, args(cdir)...)
	if got := readDevice(t, srv); got != want {
		t.Fatal("cold read differs from the local composition")
	}
	out, err := exec.Command(binPath, append([]string{"serve", "--listen", "unix:" + filepath.Join(t.TempDir(), "s")}, args(cdir)...)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") {
		t.Fatalf("second daemon on a locked cache dir: %v\n%s", err, out)
	}
	srv.stop(t)
	files, _ := chunkFiles(t, cdir)
	if len(files) == 0 {
		t.Fatal("nothing in the cache dir after a cold read")
	}

	// Warm restart: nothing fetched.
	before := blobBytes()
	srv = serve(t, args(cdir)...)
	if got := readDevice(t, srv); got != want {
		t.Fatal("warm read differs")
	}
	srv.stop(t)
	if n := blobBytes() - before; n != 0 {
		t.Fatalf("warm restart fetched %d blob bytes", n)
	}

	// Damaged chunk files: found and refetched, never served.
	for i, f := range files {
		switch i % 3 {
		case 0:
			b, _ := os.ReadFile(f)
			b[len(b)/2] ^= 0x40
			os.WriteFile(f, b, 0o644)
		case 1:
			st, _ := os.Stat(f)
			os.Truncate(f, st.Size()/2)
		}
	}
	before = blobBytes()
	srv = serve(t, args(cdir)...)
	if got := readDevice(t, srv); got != want {
		t.Fatal("read after garbling the cache differs")
	}
	srv.stop(t)
	if blobBytes() == before {
		t.Fatal("damaged chunks were not refetched")
	}

	// Offline: registry down, everything cached.
	reg.Kill()
	srv = serve(t, args(cdir)...)
	if got := readDevice(t, srv); got != want {
		t.Fatal("offline read differs")
	}
	srv.stop(t)
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}

	// kill -9 in the middle of a fill, then a restart on the same dir.
	kdir := filepath.Join(t.TempDir(), "killed")
	srv = serve(t, args(kdir, "--fetch-parallel", "1")...)
	before = blobBytes()
	go exec.Command("nbdcopy", srv.uri, filepath.Join(t.TempDir(), "partial")).Run()
	for deadline := time.Now().Add(30 * time.Second); blobBytes() == before && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	srv.kill9(t)
	srv = serve(t, args(kdir)...)
	if got := readDevice(t, srv); got != want {
		t.Fatal("read after kill -9 mid-fill differs")
	}
	srv.stop(t)

	// A cache smaller than the device: the bound holds during the read.
	sdir := filepath.Join(t.TempDir(), "small")
	const bound = 1 << 20
	srv = serve(t, args(sdir, "--cache-dir-size", "1M")...)
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			_, n := chunkFiles(t, sdir)
			if n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	if got := readDevice(t, srv); got != want {
		t.Fatal("read through a small cache differs")
	}
	close(stop)
	wg.Wait()
	srv.stop(t)
	t.Logf("small cache: peak %d bytes on disk, bound %d", peak.Load(), bound)
	if peak.Load() > bound {
		t.Fatalf("disk cache held %d bytes, bound %d", peak.Load(), bound)
	}
}

// TestDiskCacheSharedLayers: two exports naming the same layers in two
// repositories (same digests), read whole through one --cache-dir daemon,
// fetch the unique blob bytes about once; the disk cache and per-source
// metrics are promtool-clean.
func TestDiskCacheSharedLayers(t *testing.T) {
	e := newRemoteEnv(t)
	reg, af := e.registry(t, nil, regPass)
	im := layouts(t, testtree.Options{Seed: 73, Files: 24, MaxSize: 256 << 10})[1]
	a := e.push(t, reg, reg.Addr, "e2e/shared-a", im)
	b := e.push(t, reg, reg.Addr, "e2e/shared-b", im)
	want := fileSHA(t, composeFile(t, im))
	before, _, _ := reg.BlobBytes("")
	d := serveDaemon(t, "--export", "a="+strings.Join(a.blobs, ","), "--export", "b="+strings.Join(b.blobs, ","),
		"--cert-dir", e.certDir, "--authfile", af, "--cache-dir", filepath.Join(t.TempDir(), "c"))
	for _, name := range []string{"a", "b"} {
		out := filepath.Join(t.TempDir(), name+".img")
		if o, err := exec.Command("nbdcopy", d.uriFor(t, name), out).CombinedOutput(); err != nil {
			t.Fatalf("nbdcopy %s: %v %s", name, err, o)
		}
		if fileSHA(t, out) != want {
			t.Fatalf("export %s differs from the local composition", name)
		}
	}
	after, _, _ := reg.BlobBytes("")
	unique := blobSizes(t, im)
	t.Logf("two exports read whole: %d blob bytes fetched, %d unique (%.3fx)", after-before, unique, float64(after-before)/float64(unique))
	if float64(after-before) > 1.05*float64(unique) {
		t.Fatalf("fetched %d bytes for %d unique", after-before, unique)
	}
	expo := scrape(t, d.metrics)
	for _, m := range []string{"erofs_blockd_disk_cache_bytes", "erofs_blockd_source_fetched_bytes_total", "erofs_blockd_source_request_duration_seconds_bucket"} {
		if !strings.Contains(expo, m) {
			t.Errorf("%s missing from /metrics", m)
		}
	}
	noSecrets(t, "/metrics", expo)
	if _, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command("promtool", "check", "metrics")
		cmd.Stdin = strings.NewReader(expo)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool check metrics: %v\n%s", err, out)
		}
	}
}
