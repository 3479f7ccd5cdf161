package e2e

import (
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/layered"
	"github.com/erofs-blockd/erofs-blockd/internal/multiblob"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// layeredSet builds n images of two layers: "base" (the same files in every
// image, so byte-identical blobs in separate files: copies) and "own", in
// which half the files have the same content as files of the next image
// (stored in a different blob: content dedup through fingerprints).
func layeredSet(t testing.TB, dir string, n, files, maxSize int, fingerprints bool) [][]string {
	t.Helper()
	rng := rand.New(rand.NewSource(42))
	randFile := func() []byte {
		b := make([]byte, 1+rng.Intn(maxSize))
		rng.Read(b)
		return b
	}
	base := make([][]byte, files)
	for i := range base {
		base[i] = randFile()
	}
	shared := make([][][]byte, n) // shared[i]: files image i shares with image i+1
	for i := range shared {
		shared[i] = make([][]byte, files/2)
		for j := range shared[i] {
			shared[i][j] = randFile()
		}
	}
	var out [][]string
	for i := 0; i < n; i++ {
		tree := filepath.Join(dir, fmt.Sprintf("tree%d", i))
		write := func(p string, b []byte) {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for j, b := range base {
			write(filepath.Join(tree, "base", fmt.Sprintf("d%d/f%03d", j%4, j)), b)
		}
		// own files: half shared with the previous image (its "next" set),
		// half its own "next" set, under other names.
		prev := shared[(i+n-1)%n]
		for j, b := range prev {
			write(filepath.Join(tree, "own", fmt.Sprintf("from-prev/p%03d", j)), b)
		}
		for j, b := range shared[i] {
			write(filepath.Join(tree, "own", fmt.Sprintf("mine/m%03d", j)), b)
		}
		res, err := layered.Build(tree, filepath.Join(dir, fmt.Sprintf("img%d", i)), []string{"base", "own"}, fingerprints)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, res.Files)
	}
	return out
}

// TestCacheEveryByte serves many exports through one small shared cache
// (so pages are evicted and refetched while other exports read) and checks
// every byte of every export against compose -o, twice, with concurrent
// clients; then checks that each dedup kind was used.
func TestCacheEveryByte(t *testing.T) {
	need(t, "nbdcopy", "mkfs.erofs")
	dir := t.TempDir()
	imgs := layeredSet(t, dir, 3, 24, 96<<10, true)
	// A rich tree in the three device-table layouts (no fingerprints).
	rich := layouts(t, testtree.Full(11))

	type exp struct {
		name  string
		files []string
	}
	var exps []exp
	for i, f := range imgs {
		exps = append(exps, exp{fmt.Sprintf("layered%d", i), f})
	}
	// The same files again under another name: file dedup.
	exps = append(exps, exp{"layered0-again", imgs[0]})
	for _, im := range rich {
		exps = append(exps, exp{im.name, im.blobs})
	}
	// One more multi-blob split of the rich image with sha256 tags, and a
	// copy of its blobs: copy dedup with a checked tag and size.
	res, err := multiblob.Split(rich[0].blobs[0], rich[0].blobs[1], filepath.Join(dir, "tagged"), multiblob.Options{N: 2, Layout: multiblob.LayoutContiguous, SHA256Tags: true})
	if err != nil {
		t.Fatal(err)
	}
	tagged := append([]string{res.Primary}, res.Blobs...)
	var tagCopy []string
	for _, f := range tagged {
		c := filepath.Join(dir, "tagged-copy", filepath.Base(f))
		os.MkdirAll(filepath.Dir(c), 0o755)
		b, _ := os.ReadFile(f)
		os.WriteFile(c, b, 0o644)
		tagCopy = append(tagCopy, c)
	}
	exps = append(exps, exp{"tagged", tagged}, exp{"tagged-copy", tagCopy})

	want := map[string]string{}
	var args []string
	for _, e := range exps {
		want[e.name] = fileSHA(t, composeFile(t, image{blobs: e.files}))
		args = append(args, "--export", e.name+"="+strings.Join(e.files, ","))
	}
	// slowBackend: reads of plain local files of 64 KiB and more would be
	// sent with sendfile past the cache; a backend delay keeps them in it.
	d := serveDaemon(t, append(args, append([]string{"--cache-size", "768K", "--domain", "d"}, slowBackend...)...)...)

	for pass := 0; pass < 2; pass++ {
		var wg sync.WaitGroup
		errs := make(chan string, len(exps))
		for _, e := range exps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out := filepath.Join(t.TempDir(), e.name+".img")
				uri := d.uriFor(t, e.name)
				if b, err := execOut("nbdcopy", "--connections=2", "--request-size=131072", uri, out); err != nil {
					errs <- fmt.Sprintf("%s: nbdcopy: %v\n%s", e.name, err, b)
					return
				}
				if got, err := testtree.HashFile(out); err != nil || got != want[e.name] {
					errs <- fmt.Sprintf("%s: pass %d: served bytes differ from compose -o", e.name, pass)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
	}
	expo := scrape(t, d.metrics)
	if v := metricValue(t, expo, `erofs_blockd_cache_evictions_total`); v == 0 {
		t.Error("no evictions with a 768K cache: the test does not exercise refetching")
	}
	if v := metricValue(t, expo, `erofs_blockd_cache_resident_bytes`); v > 768<<10 {
		t.Errorf("resident %v above the bound", v)
	}

	// Dedup of every kind, read one export after another through a cache
	// that holds them all (in the tiny cache above, whether two exports'
	// reads of shared content overlap in time depends on the machine's load).
	d2 := serveDaemon(t, append(args, append([]string{"--cache-size", "64M", "--domain", "d"}, slowBackend...)...)...)
	for _, name := range []string{"layered0", "layered0-again", "layered1", "tagged", "tagged-copy"} {
		out := filepath.Join(t.TempDir(), name+".img")
		if b, err := execOut("nbdcopy", d2.uriFor(t, name), out); err != nil {
			t.Fatalf("%s: nbdcopy: %v\n%s", name, err, b)
		}
		if got, err := testtree.HashFile(out); err != nil || got != want[name] {
			t.Fatalf("%s: served bytes differ from compose -o", name)
		}
	}
	expo = scrape(t, d2.metrics)
	for _, kind := range []string{"file", "copy", "content"} {
		if v := metricValue(t, expo, `erofs_blockd_cache_dedup_hits_total{kind="`+kind+`"}`); v == 0 {
			t.Errorf("no %s dedup hits", kind)
		}
	}

	// Plain local files through the cache: large reads are sent from the
	// files (sendfile), small and edge ones go through the cache; every
	// byte is right either way, and both paths were taken.
	d3 := serveDaemon(t, append(args, "--cache-size", "768K", "--domain", "d")...)
	for _, name := range []string{"layered0", "layered0-again", rich[0].name, "tagged-copy"} {
		for _, rs := range []string{"4096", "131072"} {
			out := filepath.Join(t.TempDir(), name+".img")
			if b, err := execOut("nbdcopy", "--request-size="+rs, d3.uriFor(t, name), out); err != nil {
				t.Fatalf("%s: nbdcopy: %v\n%s", name, err, b)
			}
			if got, err := testtree.HashFile(out); err != nil || got != want[name] {
				t.Fatalf("%s, %s-byte requests, cache past local files: served bytes differ from compose -o", name, rs)
			}
		}
	}
	expo = scrape(t, d3.metrics)
	if v := metricValue(t, expo, `erofs_blockd_cache_misses_total`); v == 0 {
		t.Error("no cache misses: small reads did not go through the cache")
	}
}

// slowBackend makes every input read take a little longer, which keeps
// reads of plain local files in the content cache (zero-copy is off).
var slowBackend = []string{"--debug-backend-delay", "1us"}

// TestCacheDomains: content keys are shared only inside a domain. Two
// images with the same file contents in different blobs: with one domain,
// reading the second after the first reads only its metadata and padding
// from the backend; in different domains, it reads its data too.
func TestCacheDomains(t *testing.T) {
	need(t, "nbdcopy", "mkfs.erofs")
	dir := t.TempDir()
	imgs := layeredSet(t, dir, 2, 16, 64<<10, true)
	for _, tc := range []struct {
		name       string
		domains    [2]string
		wantShared bool
	}{
		{"same", [2]string{"a", "a"}, true},
		{"different", [2]string{"a", "b"}, false},
		{"none", [2]string{"", ""}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fmt.Sprintf(`{"exports":[{"name":"x","blobs":[%q,%q,%q],"domain":%q},{"name":"y","blobs":[%q,%q,%q],"domain":%q}]}`,
				imgs[0][0], imgs[0][1], imgs[0][2], tc.domains[0], imgs[1][0], imgs[1][1], imgs[1][2], tc.domains[1])
			cf := filepath.Join(t.TempDir(), "exports.json")
			os.WriteFile(cf, []byte(cfg), 0o644)
			d := serveDaemon(t, append([]string{"--config", cf, "--cache-size", "64M"}, slowBackend...)...)
			for _, n := range []string{"x", "y"} {
				run(t, "nbdcopy", d.uriFor(t, n), filepath.Join(t.TempDir(), n))
			}
			expo := scrape(t, d.metrics)
			content := metricValue(t, expo, `erofs_blockd_cache_dedup_hits_total{kind="content"}`)
			if tc.wantShared != (content > 0) {
				t.Errorf("content dedup hits %v, want shared=%v", content, tc.wantShared)
			}
		})
	}
}

func execOut(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

// TestCacheTwoExportsSameBlobs: two exports of the same blob files (no
// domain) share every page, fingerprinted file data included: reading the
// second after the first reads (almost) nothing from the backends.
func TestCacheTwoExportsSameBlobs(t *testing.T) {
	need(t, "nbdcopy", "mkfs.erofs")
	files := layeredSet(t, t.TempDir(), 1, 24, 96<<10, true)[0]
	list := strings.Join(files, ",")
	d := serveDaemon(t, append([]string{"--export", "a=" + list, "--export", "b=" + list, "--cache-size", "64M"}, slowBackend...)...)
	backend := func() float64 {
		var s float64
		for _, l := range strings.Split(scrape(t, d.metrics), "\n") {
			if strings.HasPrefix(l, "erofs_blockd_backend_read_bytes_total{") {
				var v float64
				fmt.Sscanf(l[strings.LastIndexByte(l, ' ')+1:], "%g", &v)
				s += v
			}
		}
		return s
	}
	b0 := backend()
	run(t, "nbdcopy", d.uriFor(t, "a"), filepath.Join(t.TempDir(), "a"))
	b1 := backend()
	run(t, "nbdcopy", d.uriFor(t, "b"), filepath.Join(t.TempDir(), "b"))
	b2 := backend()
	t.Logf("backend bytes: export a %.0f, then export b %.0f (%.3fx of one device for both)", b1-b0, b2-b1, (b2-b0)/(b1-b0))
	if b2-b0 > 1.05*(b1-b0) {
		t.Fatalf("two exports of the same blobs read %.0f backend bytes, one %.0f", b2-b0, b1-b0)
	}
}
