package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/erofs-blockd/erofs-blockd/source"
)

func need(t *testing.T, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed", b)
		}
	}
}

// tarOf is a deterministic tar with one file per name (content = name).
func tarOf(t *testing.T, names ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(n)), ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(n))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipOf(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstdOf(t *testing.T, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// layout writes an OCI image layout by hand (deterministic bytes).
type layout struct {
	t   *testing.T
	dir string
	idx []Descriptor
}

func newLayout(t *testing.T, dir string) *layout {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	l := &layout{t: t, dir: dir}
	l.writeIndex()
	return l
}

func (l *layout) blob(mediaType string, b []byte) Descriptor {
	l.t.Helper()
	d := Descriptor{MediaType: mediaType, Digest: source.Digest(b), Size: int64(len(b))}
	if err := os.WriteFile(filepath.Join(l.dir, "blobs", "sha256", strings.TrimPrefix(d.Digest, "sha256:")), b, 0o644); err != nil {
		l.t.Fatal(err)
	}
	return d
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testLayer is a layer to write: its media type, stored bytes and
// uncompressed tar (for the diffID).
type testLayer struct {
	mediaType   string
	data, plain []byte
}

// image writes config + manifest for layers and returns the manifest's
// descriptor with platform p.
func (l *layout) image(p Platform, layers ...testLayer) Descriptor {
	l.t.Helper()
	var diffIDs []string
	var ds []Descriptor
	for _, tl := range layers {
		diffIDs = append(diffIDs, source.Digest(tl.plain))
		ds = append(ds, l.blob(tl.mediaType, tl.data))
	}
	cfg := mustJSON(l.t, map[string]any{
		"architecture": p.Architecture, "os": p.OS, "variant": p.Variant,
		"config": map[string]any{}, "rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	cd := l.blob(MediaTypeConfig, cfg)
	m := mustJSON(l.t, map[string]any{"schemaVersion": 2, "mediaType": MediaTypeManifest, "config": cd, "layers": ds})
	d := l.blob(MediaTypeManifest, m)
	pp := p
	d.Platform = &pp
	return d
}

// index writes an image index over ms and returns its descriptor.
func (l *layout) index(ms ...Descriptor) Descriptor {
	l.t.Helper()
	b := mustJSON(l.t, map[string]any{"schemaVersion": 2, "mediaType": MediaTypeIndex, "manifests": ms})
	return l.blob(MediaTypeIndex, b)
}

// tag adds d to index.json under name ("" = unnamed).
func (l *layout) tag(name string, d Descriptor) {
	l.t.Helper()
	if name != "" {
		d.Annotations = map[string]string{AnnotationRefName: name}
	}
	l.idx = append(l.idx, d)
	l.writeIndex()
}

func (l *layout) writeIndex() {
	l.t.Helper()
	ms := l.idx
	if ms == nil {
		ms = []Descriptor{}
	}
	b := mustJSON(l.t, map[string]any{"schemaVersion": 2, "mediaType": MediaTypeIndex, "manifests": ms})
	if err := os.WriteFile(filepath.Join(l.dir, "index.json"), b, 0o644); err != nil {
		l.t.Fatal(err)
	}
}

var (
	amd64 = Platform{OS: "linux", Architecture: "amd64"}
	arm64 = Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
)

// stdLayers are a gzip, a zstd and a plain tar layer.
func stdLayers(t *testing.T, tag string) []testLayer {
	a, b, c := tarOf(t, "a-"+tag, "etc/x"), tarOf(t, "b-"+tag), tarOf(t, ".wh.a-"+tag, "c")
	return []testLayer{
		{"application/vnd.oci.image.layer.v1.tar+gzip", gzipOf(t, a), a},
		{"application/vnd.oci.image.layer.v1.tar+zstd", zstdOf(t, b), b},
		{"application/vnd.oci.image.layer.v1.tar", c, c},
	}
}
