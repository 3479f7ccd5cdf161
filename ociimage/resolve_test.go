package ociimage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/regtest"
	"github.com/erofs-blockd/erofs-blockd/source"
)

func TestParseRef(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	good := []struct {
		in   string
		want Ref
	}{
		{"oci://reg.example:5000/a/b", Ref{Transport: Registry, Host: "reg.example:5000", Repo: "a/b", Tag: "latest"}},
		{"oci://127.0.0.1:5000/a/b:v1.2", Ref{Transport: Registry, Host: "127.0.0.1:5000", Repo: "a/b", Tag: "v1.2"}},
		{"oci://localhost/a@" + d, Ref{Transport: Registry, Host: "localhost", Repo: "a", Digest: d}},
		{"oci://[::1]:5000/a:t@" + d, Ref{Transport: Registry, Host: "[::1]:5000", Repo: "a", Tag: "t", Digest: d}},
		{"oci-layout:/srv/img", Ref{Transport: Layout, Dir: "/srv/img"}},
		{"oci-layout:/srv/img:v1", Ref{Transport: Layout, Dir: "/srv/img", Tag: "v1"}},
		{"oci-layout:rel/dir@" + d, Ref{Transport: Layout, Dir: "rel/dir", Digest: d}},
		{"oci-layout:/a:b/c", Ref{Transport: Layout, Dir: "/a:b/c"}},
		{"oci-layout:/a/b:c/", Ref{Transport: Layout, Dir: "/a/b:c/"}},
		{"oci-layout:/a/b:c/:v1", Ref{Transport: Layout, Dir: "/a/b:c/", Tag: "v1"}},
	}
	for _, g := range good {
		r, err := ParseRef(g.in)
		if err != nil || r != g.want {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v", g.in, r, err, g.want)
			continue
		}
		if r2, err := ParseRef(r.String()); err != nil || r2.Dir != r.Dir && filepath.Clean(r2.Dir) != filepath.Clean(r.Dir) || r2.Tag != r.Tag || r2.Digest != r.Digest || r2.Repo != r.Repo {
			t.Errorf("round trip of %q via %q: %+v %v", g.in, r.String(), r2, err)
		}
	}
	for _, in := range []string{"", "docker://x/y", "oci://", "oci://host", "oci://host/", "oci://host/A", "oci://host/a:b:c",
		"oci://host/a@sha256:12", "oci://host/a@md5:" + strings.Repeat("a", 32), "oci://ho st/a", "oci://host/a:-x",
		"oci-layout:", "oci-layout::tag", "oci-layout:dir@sha256:zz", "oci-layout:dir:bad tag"} {
		if r, err := ParseRef(in); err == nil {
			t.Errorf("ParseRef(%q) = %+v, want an error", in, r)
		}
	}
}

func TestPlatform(t *testing.T) {
	for _, c := range []struct {
		want, have string
		rank       int
	}{
		{"linux/amd64", "linux/amd64", 0},
		{"linux/amd64", "linux/amd64/v1", 0},
		{"linux/x86_64", "linux/amd64", 0},
		{"linux/amd64", "linux/amd64/v2", -1},
		{"linux/amd64/v3", "linux/amd64/v2", 2},
		{"linux/amd64/v3", "linux/amd64", 3},
		{"linux/arm64", "linux/arm64/v8", 0},
		{"linux/arm64/v8", "linux/arm64", 0},
		{"linux/aarch64", "linux/arm64", 0},
		{"linux/arm64", "linux/arm/v7", -1},
		{"linux/arm", "linux/arm/v7", 0},
		{"linux/arm/v7", "linux/arm/v6", 2},
		{"linux/arm/v6", "linux/arm/v7", -1},
		{"linux/amd64", "windows/amd64", -1},
	} {
		w, err := ParsePlatform(c.want)
		if err != nil {
			t.Fatal(err)
		}
		h, _ := ParsePlatform(c.have)
		if got := rank(w, h); got != c.rank {
			t.Errorf("rank(%s, %s) = %d, want %d", c.want, c.have, got, c.rank)
		}
	}
	for _, bad := range []string{"linux", "linux/", "/amd64", "a/b/c/d"} {
		if _, err := ParsePlatform(bad); err == nil {
			t.Errorf("ParsePlatform(%q): no error", bad)
		}
	}
	p, _ := ParsePlatform("")
	if p.OS != runtime.GOOS {
		t.Errorf("default platform %v", p)
	}
}

// checkImage compares a resolved image with the layers written.
func checkImage(t *testing.T, img *Image, platform string, layers []testLayer, specPrefix string) {
	t.Helper()
	if img.Platform != platform {
		t.Errorf("platform %s, want %s", img.Platform, platform)
	}
	if len(img.Layers) != len(layers) {
		t.Fatalf("%d layers, want %d", len(img.Layers), len(layers))
	}
	for i, l := range img.Layers {
		want := layers[i]
		if l.Digest != source.Digest(want.data) || l.Size != int64(len(want.data)) || l.DiffID != source.Digest(want.plain) {
			t.Errorf("layer %d: %+v", i, l)
		}
		if l.Kind != LayerKind(want.mediaType) && !(l.Kind == KindTarGzip && strings.Contains(l.MediaType, "docker")) {
			t.Errorf("layer %d: kind %s for %s", i, l.Kind, want.mediaType)
		}
		if !strings.HasPrefix(l.Spec, specPrefix) || !strings.HasSuffix(l.Spec, strings.TrimPrefix(l.Digest, "sha256:")) {
			t.Errorf("layer %d: spec %s", i, l.Spec)
		}
	}
	if source.Digest(img.Manifest) != img.ManifestDigest {
		t.Error("manifest digest")
	}
}

func TestLayout(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newLayout(t, dir)
	r := NewResolver(nil)
	amdL, armL := stdLayers(t, "amd"), stdLayers(t, "arm")
	single := l.image(amd64, amdL...)
	l.tag("single", single)
	ma, mb := l.image(amd64, amdL...), l.image(arm64, armL...)
	idx := l.index(ma, mb)
	l.tag("multi", idx)

	img, err := r.Resolve(ctx, "oci-layout:"+dir+":single", "")
	if err != nil {
		t.Fatal(err)
	}
	checkImage(t, img, "linux/amd64", amdL, filepath.Join(dir, "blobs", "sha256")+"/")
	if img.IndexDigest != "" || img.ManifestDigest != single.Digest {
		t.Errorf("single: index %q manifest %s", img.IndexDigest, img.ManifestDigest)
	}
	// The layer spec opens the raw blob.
	b, err := source.OpenFile(img.Layers[0].Spec)
	if err != nil || b.Size() != img.Layers[0].Size {
		t.Fatalf("open %s: %v", img.Layers[0].Spec, err)
	}
	b.Close()

	for _, c := range []struct {
		platform, want string
		layers         []testLayer
		manifest       string
	}{
		{"linux/amd64", "linux/amd64", amdL, ma.Digest},
		{"linux/arm64", "linux/arm64/v8", armL, mb.Digest},
		{"linux/arm64/v8", "linux/arm64/v8", armL, mb.Digest},
		{"linux/aarch64", "linux/arm64/v8", armL, mb.Digest},
	} {
		img, err := r.Resolve(ctx, "oci-layout:"+dir+":multi", c.platform)
		if err != nil {
			t.Fatalf("%s: %v", c.platform, err)
		}
		checkImage(t, img, c.want, c.layers, dir)
		if img.IndexDigest != idx.Digest || img.ManifestDigest != c.manifest {
			t.Errorf("%s: index %s manifest %s", c.platform, img.IndexDigest, img.ManifestDigest)
		}
	}
	_, err = r.Resolve(ctx, "oci-layout:"+dir+":multi", "linux/s390x")
	if err == nil || !strings.Contains(err.Error(), "no manifest for platform linux/s390x") || !strings.Contains(err.Error(), "linux/amd64, linux/arm64/v8") {
		t.Errorf("no match: %v", err)
	}
	// By digest: the index and a manifest.
	if img, err := r.Resolve(ctx, "oci-layout:"+dir+"@"+idx.Digest, "linux/arm64"); err != nil || img.ManifestDigest != mb.Digest {
		t.Errorf("index by digest: %v", err)
	}
	if img, err := r.Resolve(ctx, "oci-layout:"+dir+"@"+ma.Digest, "linux/s390x"); err != nil || img.ManifestDigest != ma.Digest {
		t.Errorf("manifest by digest (platform not applied): %v", err)
	}
	// Untagged with two names: refused, naming them.
	if _, err := r.Resolve(ctx, "oci-layout:"+dir, ""); err == nil || !strings.Contains(err.Error(), "multi, single") {
		t.Errorf("untagged: %v", err)
	}
	if _, err := r.Resolve(ctx, "oci-layout:"+dir+":nope", ""); err == nil || !strings.Contains(err.Error(), `no manifest named "nope"; it has multi, single`) {
		t.Errorf("unknown tag: %v", err)
	}
	// A layout with one unnamed manifest needs no tag.
	d2 := t.TempDir()
	l2 := newLayout(t, d2)
	l2.tag("", l2.image(arm64, armL...))
	if img, err := r.Resolve(ctx, "oci-layout:"+d2, "linux/amd64"); err != nil || img.Platform != "linux/arm64/v8" {
		t.Errorf("one unnamed manifest: %v", err)
	}
	// Two entries with one tag (no index): chosen by platform.
	d3 := t.TempDir()
	l3 := newLayout(t, d3)
	l3.tag("x", l3.image(amd64, amdL...))
	l3.tag("x", l3.image(arm64, armL...))
	if img, err := r.Resolve(ctx, "oci-layout:"+d3+":x", "linux/arm64"); err != nil || img.Platform != "linux/arm64/v8" {
		t.Errorf("tag on two entries: %v", err)
	}
}

func TestLayoutMediaTypes(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := newLayout(t, dir)
	r := NewResolver(nil)
	p := tarOf(t, "f")
	gz, zs := gzipOf(t, p), zstdOf(t, p)
	ero := []byte("not really erofs; nothing reads it here")
	var layers []testLayer
	for mt, kind := range layerKinds {
		var tl testLayer
		switch kind {
		case KindTar:
			tl = testLayer{mt, p, p}
		case KindTarGzip:
			tl = testLayer{mt, gz, p}
		case KindTarZstd:
			tl = testLayer{mt, zs, p}
		case KindErofs:
			tl = testLayer{mt, ero, ero}
		case KindErofsZstd:
			tl = testLayer{mt, zstdOf(t, ero), ero}
		}
		layers = append(layers, tl)
	}
	l.tag("all", l.image(amd64, layers...))
	img, err := r.Resolve(ctx, "oci-layout:"+dir+":all", "linux/amd64")
	if err != nil {
		t.Fatal(err)
	}
	checkImage(t, img, "linux/amd64", layers, dir)
	for i, ly := range img.Layers {
		if ly.MediaType != layers[i].mediaType || ly.Kind != layerKinds[ly.MediaType] {
			t.Errorf("layer %d: %s → %s", i, ly.MediaType, ly.Kind)
		}
	}
	// Unsupported: named by index, digest and media type.
	bad := testLayer{"application/vnd.oci.image.layer.v1.tar+bzip2", []byte("BZh"), []byte("x")}
	l.tag("bad", l.image(amd64, layers[0], bad))
	_, err = r.Resolve(ctx, "oci-layout:"+dir+":bad", "linux/amd64")
	if err == nil || !strings.Contains(err.Error(), "layer 1 ("+source.Digest(bad.data)+")") || !strings.Contains(err.Error(), "tar+bzip2") {
		t.Errorf("unsupported layer: %v", err)
	}
}

// rewrite replaces the blob of d in the layout with data (same name).
func rewrite(t *testing.T, dir, digest string, f func([]byte) []byte) {
	t.Helper()
	p := filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:"))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, f(b), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLayoutRefusals(t *testing.T) {
	ctx := context.Background()
	r := NewResolver(nil)
	ly := stdLayers(t, "x")
	fresh := func() (string, *layout, Descriptor) {
		dir := t.TempDir()
		l := newLayout(t, dir)
		d := l.image(amd64, ly...)
		l.tag("t", d)
		return dir, l, d
	}
	refused := func(dir, want string) {
		t.Helper()
		_, err := r.Resolve(ctx, "oci-layout:"+dir+":t", "linux/amd64")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want an error with %q, got %v", want, err)
		}
	}
	// A tampered manifest (same size, other bytes).
	dir, _, d := fresh()
	rewrite(t, dir, d.Digest, func(b []byte) []byte { return []byte(strings.Replace(string(b), `"size":`, `"size" :`, 1))[:len(b)] })
	refused(dir, "digest is sha256:")
	// A tampered config.
	dir, _, d = fresh()
	m, _ := os.ReadFile(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(d.Digest, "sha256:")))
	cfgDigest := string(m[strings.Index(string(m), `"config":{`):])
	cfgDigest = cfgDigest[strings.Index(cfgDigest, "sha256:") : strings.Index(cfgDigest, "sha256:")+71]
	rewrite(t, dir, cfgDigest, func(b []byte) []byte { return []byte(strings.Replace(string(b), "amd64", "arm64", 1)) })
	refused(dir, "layout is damaged or was modified")
	// A truncated manifest.
	dir, _, d = fresh()
	rewrite(t, dir, d.Digest, func(b []byte) []byte { return b[:len(b)-1] })
	refused(dir, "its descriptor says")
	// A missing manifest blob.
	dir, _, d = fresh()
	os.Remove(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(d.Digest, "sha256:")))
	refused(dir, "no such file")
	// diff_ids count mismatch, and none.
	dir, l, _ := fresh()
	cfg := l.blob(MediaTypeConfig, []byte(`{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":["`+source.Digest(nil)+`"]}}`))
	ld := l.blob(ly[0].mediaType, ly[0].data)
	l.idx = nil
	l.tag("t", l.blob(MediaTypeManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "config": cfg, "layers": []Descriptor{ld, ld}})))
	refused(dir, "1 rootfs.diff_ids for 2 layers")
	cfg = l.blob(MediaTypeConfig, []byte(`{"os":"linux","architecture":"amd64"}`))
	l.idx = nil
	l.tag("t", l.blob(MediaTypeManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "config": cfg, "layers": []Descriptor{ld}})))
	refused(dir, `no rootfs of type "layers"`)
	// A config claiming to be huge is refused before it is read.
	l.idx = nil
	l.tag("t", l.blob(MediaTypeManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "config": Descriptor{MediaType: MediaTypeConfig, Digest: cfg.Digest, Size: 1 << 40}, "layers": []Descriptor{ld}})))
	refused(dir, "more than the limit")
	// Schema 1.
	l.idx = nil
	l.tag("t", l.blob("", []byte(`{"schemaVersion":1,"name":"x","tag":"t","fsLayers":[]}`)))
	refused(dir, "schema 1 is not supported")
	// An artifact manifest is not an image.
	empty := l.blob(MediaTypeEmpty, []byte("{}"))
	l.idx = nil
	l.tag("t", l.blob(MediaTypeManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": MediaTypeManifest, "artifactType": "x/y", "config": empty, "layers": []Descriptor{ld}})))
	refused(dir, "not an image config")
	// A body whose mediaType contradicts its descriptor.
	l.idx = nil
	md := l.blob(MediaTypeManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": MediaTypeIndex, "manifests": []Descriptor{}}))
	l.tag("t", md)
	refused(dir, "says it is")
	// Not a layout.
	bad := t.TempDir()
	if _, err := r.Resolve(ctx, "oci-layout:"+bad, ""); err == nil || !strings.Contains(err.Error(), "not an OCI image layout") {
		t.Errorf("not a layout: %v", err)
	}
	os.WriteFile(filepath.Join(bad, "oci-layout"), []byte(`{"imageLayoutVersion":"2.0.0"}`), 0o644)
	if _, err := r.Resolve(ctx, "oci-layout:"+bad, ""); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("layout version: %v", err)
	}
}

// regEnv is a TLS registry stack plus an Opener and Resolver using its
// auth file and CA.
type regEnv struct {
	st  *regtest.Stack
	op  *source.Opener
	r   *Resolver
	dir string
}

func startRegistry(t *testing.T, token bool) *regEnv {
	t.Helper()
	need(t, regtest.RegistryBinary, "htpasswd")
	dir := t.TempDir()
	st, err := regtest.StartStack(dir, regtest.StackOptions{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	op := source.NewOpener(source.Options{AuthFile: st.AuthFile, CertDir: st.CertDir, RetryBase: time.Millisecond})
	return &regEnv{st: st, op: op, r: NewResolver(op), dir: dir}
}

// skopeo copies src to docker://HOST/dst with the stack's credentials.
func (e *regEnv) skopeo(t *testing.T, src, dst string, extra ...string) {
	t.Helper()
	need(t, "skopeo")
	args := append([]string{"copy", "--quiet", "--dest-authfile", e.st.AuthFile, "--dest-cert-dir", e.st.CertDir}, extra...)
	args = append(args, src, "docker://"+e.st.Host+"/"+dst)
	cmd := exec.Command("skopeo", args...)
	cmd.Env = append(os.Environ(), "HOME="+e.dir) // no user policy or auth leaks in
	if err := os.WriteFile(filepath.Join(e.dir, "policy.json"), []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Args = append([]string{"skopeo", "--policy", filepath.Join(e.dir, "policy.json")}, cmd.Args[1:]...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(cmd.Args[1:], " "), err, out)
	}
}

func TestRegistry(t *testing.T) {
	ctx := context.Background()
	e := startRegistry(t, false)
	dir := filepath.Join(e.dir, "layout")
	l := newLayout(t, dir)
	// skopeo compresses uncompressed layers on the way to a registry:
	// only compressed ones here (plain tar layers: TestPush).
	amdL, armL := stdLayers(t, "amd")[:2], stdLayers(t, "arm")[:2]
	single := l.image(amd64, amdL...)
	l.tag("single", single)
	ma, mb := l.image(amd64, amdL...), l.image(arm64, armL...)
	l.tag("multi", l.index(ma, mb))
	gzL := stdLayers(t, "gz")[:1]
	l.tag("gz", l.image(amd64, gzL...))
	gzA := stdLayers(t, "gza")[:1]
	l.tag("multigz", l.index(l.image(amd64, gzL...), l.image(arm64, gzA...)))

	e.skopeo(t, "oci:"+dir+":single", "img/single:v1")
	e.skopeo(t, "oci:"+dir+":multi", "img/multi:v1", "--all")
	e.skopeo(t, "oci:"+dir+":gz", "img/docker:v1", "--format", "v2s2")
	e.skopeo(t, "oci:"+dir+":multigz", "img/dockerlist:v1", "--all", "--format", "v2s2")
	host := e.st.Host

	t.Run("tag", func(t *testing.T) {
		img, err := e.r.Resolve(ctx, "oci://"+host+"/img/single:v1", "linux/amd64")
		if err != nil {
			t.Fatal(err)
		}
		checkImage(t, img, "linux/amd64", amdL, "oci://"+host+"/img/single@")
		if img.ManifestMediaType != MediaTypeManifest || img.IndexDigest != "" {
			t.Errorf("%s %s", img.ManifestMediaType, img.IndexDigest)
		}
		// The layer spec opens the blob through the same Opener.
		b, err := e.op.Open(ctx, img.Layers[1].Spec)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		buf := make([]byte, b.Size())
		if _, err := b.ReadAt(buf, 0); err != nil || source.Digest(buf) != img.Layers[1].Digest {
			t.Errorf("read layer: %v", err)
		}
		// By digest.
		img2, err := e.r.Resolve(ctx, "oci://"+host+"/img/single@"+img.ManifestDigest, "")
		if err != nil || img2.ManifestDigest != img.ManifestDigest {
			t.Errorf("by digest: %v", err)
		}
		if _, err := e.r.Resolve(ctx, "oci://"+host+"/img/single:nope", ""); err == nil || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), "manifest nope") {
			t.Errorf("missing tag: %v", err)
		}
	})
	t.Run("index", func(t *testing.T) {
		for _, c := range []struct {
			p, want string
			layers  []testLayer
		}{{"linux/amd64", "linux/amd64", amdL}, {"linux/arm64/v8", "linux/arm64/v8", armL}, {"linux/arm64", "linux/arm64/v8", armL}} {
			img, err := e.r.Resolve(ctx, "oci://"+host+"/img/multi:v1", c.p)
			if err != nil {
				t.Fatal(err)
			}
			checkImage(t, img, c.want, c.layers, "oci://"+host+"/img/multi@")
			if img.IndexDigest == "" {
				t.Error("no index digest")
			}
		}
		_, err := e.r.Resolve(ctx, "oci://"+host+"/img/multi:v1", "linux/riscv64")
		if err == nil || !strings.Contains(err.Error(), "no manifest for platform linux/riscv64; it has linux/amd64, linux/arm64/v8") {
			t.Errorf("no match: %v", err)
		}
	})
	t.Run("docker", func(t *testing.T) {
		img, err := e.r.Resolve(ctx, "oci://"+host+"/img/docker:v1", "linux/amd64")
		if err != nil {
			t.Fatal(err)
		}
		if img.ManifestMediaType != MediaTypeDockerManifest || img.Layers[0].MediaType != "application/vnd.docker.image.rootfs.diff.tar.gzip" {
			t.Errorf("%s %s", img.ManifestMediaType, img.Layers[0].MediaType)
		}
		checkImage(t, img, "linux/amd64", gzL, "oci://"+host+"/img/docker@")
		img, err = e.r.Resolve(ctx, "oci://"+host+"/img/dockerlist:v1", "linux/arm64")
		if err != nil {
			t.Fatal(err)
		}
		ix, _, _, _ := e.op.FetchManifest(ctx, host, "img/dockerlist", img.IndexDigest, acceptManifests)
		if ix != MediaTypeDockerList || img.ManifestMediaType != MediaTypeDockerManifest {
			t.Errorf("list %s manifest %s", ix, img.ManifestMediaType)
		}
		checkImage(t, img, "linux/arm64/v8", gzA, "oci://"+host+"/img/dockerlist@")
	})
	t.Run("bearer", func(t *testing.T) {
		e2 := startRegistry(t, true)
		e2.skopeo(t, "oci:"+dir+":multi", "img/multi:v1", "--all")
		img, err := e2.r.Resolve(ctx, "oci://"+e2.st.Host+"/img/multi:v1", "linux/arm64")
		if err != nil {
			t.Fatal(err)
		}
		checkImage(t, img, "linux/arm64/v8", armL, "oci://"+e2.st.Host+"/img/multi@")
		if e2.st.Token.Issued() < 1 {
			t.Error("no token issued")
		}
		// Wrong credentials: refused, no password in the message.
		af := filepath.Join(t.TempDir(), "auth.json")
		regtest.AuthFile(af, e2.st.Host, "regtest", "Wrong-Pass-77")
		r := NewResolver(source.NewOpener(source.Options{AuthFile: af, CertDir: e2.st.CertDir}))
		_, err = r.Resolve(ctx, "oci://"+e2.st.Host+"/img/multi:v1", "linux/arm64")
		if err == nil || strings.Contains(err.Error(), "Wrong-Pass-77") || !strings.Contains(err.Error(), "401") {
			t.Errorf("wrong password: %v", err)
		}
	})
	t.Run("tls", func(t *testing.T) {
		// Without the CA the registry is not trusted.
		r := NewResolver(source.NewOpener(source.Options{AuthFile: e.st.AuthFile}))
		_, err := r.Resolve(ctx, "oci://"+host+"/img/single:v1", "")
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("untrusted: %v", err)
		}
		// Without credentials: 401.
		af := filepath.Join(t.TempDir(), "auth.json")
		os.WriteFile(af, []byte(`{"auths":{}}`), 0o600)
		r = NewResolver(source.NewOpener(source.Options{AuthFile: af, CertDir: e.st.CertDir}))
		_, err = r.Resolve(ctx, "oci://"+host+"/img/single:v1", "")
		if err == nil || !strings.Contains(err.Error(), "credentials") {
			t.Errorf("anonymous: %v", err)
		}
	})
}
