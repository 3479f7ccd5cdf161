package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/layered"
)

// TestDiskCacheFingerprints: two images whose layers are different blobs
// but hold the same large files (ishare fingerprints, one domain), in two
// repositories of the real registry, served with a memory cache far
// smaller than those files and a disk cache. Read whole one after the
// other, the registry sends the shared files once (≤ 1.05× the unique
// bytes); after a restart (empty memory cache) reading the second image
// fetches nothing: its copy of the shared files is read from the first
// image's stored chunks. Every byte equals the local composition.
func TestDiskCacheFingerprints(t *testing.T) {
	e := newRemoteEnv(t)
	reg, af := e.registry(t, nil, regPass)
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(91))
	rnd := func(n int) []byte { b := make([]byte, n); rng.Read(b); return b }
	shared := make([][]byte, 8)
	var sharedBytes int64
	for i := range shared {
		shared[i] = rnd(2<<20 + i*4096) // whole pages: no padding in either blob
		sharedBytes += int64(len(shared[i]))
	}
	var local, remote []image
	for k, name := range []string{"x", "y"} {
		tree := filepath.Join(dir, "tree-"+name)
		write := func(rel string, b []byte) {
			p := filepath.Join(tree, "l", rel)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for i := 0; i < 6; i++ { // the image's own files
			write(fmt.Sprintf("own-%s/f%d", name, i), rnd(300<<10+rng.Intn(300<<10)))
		}
		for i, b := range shared { // other names in each image, other order
			write(fmt.Sprintf("shared/%c%d", 'a'+rune((i*3+k*5)%8), i), b)
		}
		res, err := layered.Build(tree, filepath.Join(dir, "img-"+name), []string{"l"}, true)
		if err != nil {
			t.Fatal(err)
		}
		im := image{name: name, tree: tree, blobs: res.Files}
		local = append(local, im)
		remote = append(remote, e.push(t, reg, reg.Addr, "e2e/fp-"+name, im))
	}
	unique := blobSizes(t, local[0]) + blobSizes(t, local[1]) - sharedBytes
	want := []string{fileSHA(t, composeFile(t, local[0])), fileSHA(t, composeFile(t, local[1]))}

	type exp struct {
		Name   string   `json:"name"`
		Blobs  []string `json:"blobs"`
		Domain string   `json:"domain"`
	}
	cfg, _ := json.Marshal(map[string][]exp{"exports": {
		{Name: "x", Blobs: remote[0].blobs, Domain: "d"}, {Name: "y", Blobs: remote[1].blobs, Domain: "d"},
	}})
	cf := filepath.Join(dir, "exports.json")
	if err := os.WriteFile(cf, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	cdir := filepath.Join(dir, "cache")
	start := func() *daemon {
		return serveDaemon(t, "--config", cf, "--cert-dir", e.certDir, "--authfile", af,
			"--cache-size", "2M", "--cache-dir", cdir, "--fetch-chunk", "256K")
	}
	read := func(d *daemon, i int) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "dev.img")
		if o, err := exec.Command("nbdcopy", d.uriFor(t, []string{"x", "y"}[i]), out).CombinedOutput(); err != nil {
			t.Fatalf("nbdcopy: %v %s", err, o)
		}
		if fileSHA(t, out) != want[i] {
			t.Fatalf("export %d differs from the local composition", i)
		}
		os.Remove(out)
	}
	fetched := func() int64 {
		n, _, err := reg.BlobBytes("")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	before := fetched()
	d := start()
	read(d, 0)
	read(d, 1)
	got := fetched() - before
	local1 := metricValue(t, scrape(t, d.metrics), "erofs_blockd_cache_content_local_bytes_total")
	d.stop(t)
	t.Logf("cold: %d blob bytes fetched for %d unique (%.3fx; %d shared bytes in each image); %.0f bytes of y's files read from x's stored chunks",
		got, unique, float64(got)/float64(unique), sharedBytes, local1)
	if float64(got) > 1.05*float64(unique) {
		t.Fatalf("fetched %d bytes for %d unique: the shared files were fetched twice", got, unique)
	}
	if local1 < float64(sharedBytes)/2 {
		t.Fatalf("content local bytes %v, want most of %d", local1, sharedBytes)
	}

	// Restart: the memory cache is empty; y fetches nothing.
	before = fetched()
	d = start()
	read(d, 1)
	local2 := metricValue(t, scrape(t, d.metrics), "erofs_blockd_cache_content_local_bytes_total")
	d.stop(t)
	if n := fetched() - before; n != 0 {
		t.Fatalf("after a restart, reading y fetched %d blob bytes", n)
	}
	if local2 < float64(sharedBytes)/2 {
		t.Fatalf("after a restart, content local bytes %v", local2)
	}
}
