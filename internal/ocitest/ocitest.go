// Package ocitest is test support: it writes OCI image layouts (as
// skopeo, umoci and buildah read them) from layer files, with a config
// holding the layers' diffIDs and, under one tag, an image index with a
// manifest per platform.
package ocitest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Layer is one layer file and its diffID (sha256:HEX of the uncompressed
// tar; for an EROFS layer, of the image).
type Layer struct {
	Path   string
	DiffID string
}

// MediaType is the OCI media type for a layer file, from its name.
func MediaType(path string) string {
	switch {
	case strings.HasSuffix(path, ".gz"):
		return "application/vnd.oci.image.layer.v1.tar+gzip"
	case strings.HasSuffix(path, ".zst"):
		return "application/vnd.oci.image.layer.v1.tar+zstd"
	case strings.HasSuffix(path, ".erofs"):
		return "application/vnd.erofs.layer.v1"
	}
	return "application/vnd.oci.image.layer.v1.tar"
}

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *Platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Platform is an OCI platform.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Variant      string `json:"variant,omitempty"`
}

// Layout writes (or adds to) the layout at dir: per platform
// ("linux/amd64", "linux/arm64/v8") a config and manifest over its
// layers, and an image index of them tagged tag in index.json. It returns
// the index digest and each platform's manifest digest.
func Layout(t testing.TB, dir, tag string, platforms map[string][]Layer) (string, map[string]string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(data []byte) Descriptor {
		h := sha256.Sum256(data)
		d := "sha256:" + hex.EncodeToString(h[:])
		if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", d[7:]), data, 0o644); err != nil {
			t.Fatal(err)
		}
		return Descriptor{Digest: d, Size: int64(len(data))}
	}
	file := func(p string) Descriptor {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		h := sha256.New()
		n, err := io.Copy(h, f)
		if err != nil {
			t.Fatal(err)
		}
		d := "sha256:" + hex.EncodeToString(h.Sum(nil))
		dst := filepath.Join(dir, "blobs", "sha256", d[7:])
		if _, err := os.Stat(dst); err != nil {
			if err := os.Link(p, dst); err != nil {
				data, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				os.WriteFile(dst, data, 0o644)
			}
		}
		return Descriptor{Digest: d, Size: n}
	}
	mans := map[string]string{}
	var idx struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Manifests     []Descriptor `json:"manifests"`
	}
	idx.SchemaVersion, idx.MediaType = 2, "application/vnd.oci.image.index.v1+json"
	for _, plat := range sortedKeys(platforms) {
		parts := strings.Split(plat, "/")
		p := &Platform{OS: parts[0], Architecture: parts[1]}
		if len(parts) > 2 {
			p.Variant = parts[2]
		}
		var diffs []string
		var layers []Descriptor
		for _, l := range platforms[plat] {
			d := file(l.Path)
			d.MediaType = MediaType(l.Path)
			layers = append(layers, d)
			diffs = append(diffs, l.DiffID)
		}
		cfg, _ := json.Marshal(map[string]any{
			"architecture": p.Architecture, "os": p.OS, "variant": p.Variant,
			"config": map[string]any{"Cmd": []string{"/bin/sh"}},
			"rootfs": map[string]any{"type": "layers", "diff_ids": diffs},
		})
		cd := write(cfg)
		cd.MediaType = "application/vnd.oci.image.config.v1+json"
		man, _ := json.Marshal(map[string]any{
			"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
			"config": cd, "layers": layers,
		})
		md := write(man)
		md.MediaType = "application/vnd.oci.image.manifest.v1+json"
		md.Platform = p
		mans[plat] = md.Digest
		idx.Manifests = append(idx.Manifests, md)
	}
	ib, _ := json.Marshal(idx)
	id := write(ib)
	id.MediaType = idx.MediaType
	id.Annotations = map[string]string{"org.opencontainers.image.ref.name": tag}

	top := struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType,omitempty"`
		Manifests     []Descriptor `json:"manifests"`
	}{SchemaVersion: 2, MediaType: "application/vnd.oci.image.index.v1+json"}
	if b, err := os.ReadFile(filepath.Join(dir, "index.json")); err == nil {
		json.Unmarshal(b, &top)
	}
	kept := top.Manifests[:0]
	for _, m := range top.Manifests {
		if m.Annotations["org.opencontainers.image.ref.name"] != tag {
			kept = append(kept, m)
		}
	}
	top.Manifests = append(kept, id)
	tb, _ := json.Marshal(top)
	if err := os.WriteFile(filepath.Join(dir, "index.json"), tb, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return id.Digest, mans
}

// FileDigest is a file's sha256 digest (sha256:HEX).
func FileDigest(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func sortedKeys(m map[string][]Layer) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	for i := range ks {
		for j := i + 1; j < len(ks); j++ {
			if ks[j] < ks[i] {
				ks[i], ks[j] = ks[j], ks[i]
			}
		}
	}
	return ks
}
