package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/ocitest"
	"github.com/erofs-blockd/erofs-blockd/internal/tartest"
	"github.com/erofs-blockd/erofs-blockd/tarscan"
)

// TestImageServe: `serve --image` from an OCI layout written by the test
// (four layers made by GNU tar: gzip, multi-frame zstd, plain, gzip; a
// multi-platform index) and from Debian's docker-registry (TLS, auth)
// after `skopeo copy --all`. Each kernel mount equals the layers
// extracted in order with whiteouts applied. With --cache-dir a restart
// fetches no layer byte; after `index --push`, a fresh cache dir serves
// lazily (only the index and what is read come from the registry); a
// layer byte tampered in the registry's storage gives EIO for the files
// on that chunk and correct bytes everywhere else.
func TestImageServe(t *testing.T) {
	need(t, "skopeo", "nbdfuse", "gzip", "zstd")
	dir := t.TempDir()
	l := makeTarLayers(t, dir, "gnu", []string{"gzip", "zstd-multi", "", "gzip"})
	ref := tartest.Reference(t, dir, l.tars)
	var layers []ocitest.Layer
	var layerSize int64
	for i, f := range l.files {
		layers = append(layers, ocitest.Layer{Path: f, DiffID: "sha256:" + strings.TrimPrefix(tartest.DiffID(t, l.tars[i]), "sha256:")})
		st, _ := os.Stat(f)
		layerSize += st.Size()
	}
	layout := filepath.Join(dir, "layout")
	ocitest.Layout(t, layout, "v1", map[string][]ocitest.Layer{"linux/amd64": layers, "linux/arm64/v8": layers[:1]})
	opts := tartest.DiffOptions{}

	// From the layout.
	s := serve(t, "--image", "oci-layout:"+layout+":v1", "--platform", "linux/amd64")
	tartest.Compare(t, ref, fuseMount(t, s.sock), opts)
	// The other platform is another image: only layer 1.
	ref1 := tartest.Reference(t, filepath.Join(dir, "ref1"), l.tars[:1])
	s1 := serve(t, "--image", "oci-layout:"+layout+":v1", "--platform", "linux/arm64")
	tartest.Compare(t, ref1, fuseMount(t, s1.sock), opts)

	// Through the registry.
	env := newRemoteEnv(t)
	reg, af := env.registry(t, nil, regPass)
	run(t, "skopeo", "copy", "--all", "--dest-cert-dir", env.certDir, "--dest-authfile", af,
		"oci:"+layout+":v1", "docker://"+reg.Addr+"/e2e/img:v1")
	img := "oci://" + reg.Addr + "/e2e/img:v1"
	remote := []string{"--authfile", af, "--cert-dir", env.certDir, "--platform", "linux/amd64"}
	cache := filepath.Join(dir, "cache")
	// skopeo compresses the plain layer on the way: the registry's layers
	// are what its manifest says.
	regLayers := registryLayers(t, reg.Addr+"/e2e/img", env.certDir, af)
	layerSize = 0
	for _, d := range regLayers {
		layerSize += d.Size
	}
	layerBytes := func() int64 {
		var n int64
		for _, d := range regLayers {
			b, _, err := reg.BlobBytes(strings.TrimPrefix(d.Digest, "sha256:"))
			if err != nil {
				t.Fatal(err)
			}
			n += b
		}
		return n
	}
	s2 := serve(t, append([]string{"--image", img, "--cache-dir", cache}, remote...)...)
	tartest.Compare(t, ref, fuseMount(t, s2.sock), opts)
	s2.stop(t)
	first := layerBytes()
	if first < layerSize {
		t.Fatalf("first start fetched %d layer bytes, the layers are %d", first, layerSize)
	}
	t.Logf("cold: %d layer bytes fetched for %d bytes of layers", first, layerSize)
	// A warm restart reads no layer byte (artifacts and chunks on disk).
	s3 := serve(t, append([]string{"--image", img, "--cache-dir", cache}, remote...)...)
	tartest.Compare(t, ref, fuseMount(t, s3.sock), opts)
	s3.stop(t)
	if n := layerBytes(); n != first {
		t.Errorf("warm restart fetched %d layer bytes", n-first)
	}

	// index --push, then a fresh cache dir: no layer pass at start.
	out := run(t, binPath, append([]string{"index", "--push", img}, remote...)...)
	t.Logf("index --push: %s", strings.TrimSpace(out))
	before := layerBytes()
	s4 := serve(t, append([]string{"--image", img, "--cache-dir", filepath.Join(dir, "cache2")}, remote...)...)
	mnt := fuseMount(t, s4.sock)
	if _, err := os.ReadDir(mnt); err != nil {
		t.Fatal(err)
	}
	if n := layerBytes() - before; n != 0 {
		t.Errorf("start with a pushed index fetched %d layer bytes (want 0: only the index)", n)
	}
	tartest.Compare(t, ref, mnt, opts)
	if n := layerBytes() - before; n > layerSize+layerSize/2 {
		t.Errorf("reading everything fetched %d layer bytes for %d of layers", n, layerSize)
	}
	s4.stop(t)

	// Tamper with one byte in the middle of layer 1 (gzip, one fetch
	// chunk) in the registry's storage: the files layer 1 provides fail,
	// the others do not.
	blob := registryBlob(t, env.dir, regLayers[0].Digest)
	victim, _ := layerVictim(t, l.tars[0], ref)
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	maddr := "127.0.0.1:" + freePort(t)
	s5 := serve(t, append([]string{"--image", img, "--cache-dir", filepath.Join(dir, "cache3"), "--fetch-retries", "1", "--metrics-listen", maddr}, remote...)...)
	mnt = fuseMount(t, s5.sock)
	if data, err := os.ReadFile(filepath.Join(mnt, victim)); err == nil {
		t.Fatalf("%s read %d bytes from a tampered layer chunk; want EIO", victim, len(data))
	} else if !strings.Contains(err.Error(), "input/output error") {
		t.Fatalf("%s: %v, want EIO", victim, err)
	}
	// Every file reads right or fails with EIO; files of the other layers
	// read right.
	okFiles, eio := 0, 0
	filepath.Walk(ref, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(ref, p)
		got, gerr := os.ReadFile(filepath.Join(mnt, rel))
		want, _ := os.ReadFile(p)
		switch {
		case gerr == nil && !bytes.Equal(got, want):
			t.Errorf("%s: wrong bytes after tampering", rel)
		case gerr == nil:
			okFiles++
		case strings.Contains(gerr.Error(), "input/output error"):
			eio++
		default:
			t.Errorf("%s: %v", rel, gerr)
		}
		return nil
	})
	top, _ := layerVictim(t, l.tars[2], ref)
	if got, err := os.ReadFile(filepath.Join(mnt, top)); err != nil {
		t.Errorf("%s (layer 3) after tampering layer 1: %v", top, err)
	} else if want, _ := os.ReadFile(filepath.Join(ref, top)); !bytes.Equal(got, want) {
		t.Errorf("%s (layer 3): wrong bytes", top)
	}
	t.Logf("after tampering one byte of layer 1: %d files right, %d EIO, none wrong", okFiles, eio)
	if v := metricValue(t, scrape(t, "http://"+maddr+"/metrics"), "erofs_blockd_source_chunk_digest_failures_total"); v < 1 {
		t.Errorf("chunk digest failures metric %v, want >= 1", v)
	}
	s5.stop(t)
	if !strings.Contains(s5.stderr.String(), "does not match its digest") {
		t.Errorf("server log does not name the digest mismatch:\n%s", s5.stderr.String())
	}
}

// registryLayers returns the layers of repo:v1's linux/amd64 manifest as
// the registry holds them.
func registryLayers(t *testing.T, repo, certDir, authFile string) []ocitest.Descriptor {
	t.Helper()
	inspect := func(ref string) []byte {
		return []byte(run(t, "skopeo", "inspect", "--raw", "--cert-dir", certDir, "--authfile", authFile, "docker://"+ref))
	}
	var idx struct{ Manifests []ocitest.Descriptor }
	if err := json.Unmarshal(inspect(repo+":v1"), &idx); err != nil {
		t.Fatal(err)
	}
	for _, m := range idx.Manifests {
		if m.Platform != nil && m.Platform.Architecture == "amd64" {
			var man struct{ Layers []ocitest.Descriptor }
			if err := json.Unmarshal(inspect(repo+"@"+m.Digest), &man); err != nil {
				t.Fatal(err)
			}
			return man.Layers
		}
	}
	t.Fatal("no amd64 manifest in the registry's index")
	return nil
}

// registryBlob finds a blob's data file in a regtest registry's storage.
func registryBlob(t *testing.T, root, digest string) string {
	t.Helper()
	hexd := strings.TrimPrefix(digest, "sha256:")
	m, _ := filepath.Glob(filepath.Join(root, "registry*", "storage", "docker", "registry", "v2", "blobs", "sha256", hexd[:2], hexd, "data"))
	if len(m) != 1 {
		out, _ := exec.Command("find", root, "-name", "data").CombinedOutput()
		t.Fatalf("blob %s in registry storage: %v\n%s", digest, m, out)
	}
	return m[0]
}

// layerVictim picks a regular file of the tar that the merged tree shows
// with exactly that layer's content, and returns its path and the offset
// of its data in the tar.
func layerVictim(t *testing.T, tarPath, ref string) (string, int64) {
	t.Helper()
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tarscan.NewReader(bufio.NewReader(f))
	for {
		e, err := tr.Next()
		if err != nil {
			t.Fatalf("no file of %s is visible in the merged tree (%v)", tarPath, err)
		}
		if e.Type != tarscan.TypeReg || e.Sparse != nil || e.Size < 100 {
			continue
		}
		data := make([]byte, e.Size)
		if _, err := io.ReadFull(tr, data); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(filepath.Join(ref, e.Name)); err == nil && bytes.Equal(got, data) {
			return e.Name, e.Offset + e.Size/2
		}
	}
}
