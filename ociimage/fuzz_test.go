package ociimage

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/source"
)

func FuzzParseRef(f *testing.F) {
	d := "sha256:" + strings.Repeat("0", 64)
	for _, s := range []string{"oci://h:1/a/b:t@" + d, "oci-layout:/a:b/c:d@" + d, "oci-layout::", "oci://[::1]/a", "oci://h/a@sha256:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRef(s)
		if err != nil {
			return
		}
		r2, err := ParseRef(r.String())
		if err != nil || r2.Tag != r.Tag || r2.Digest != r.Digest || r2.Repo != r.Repo || r2.Host != r.Host {
			t.Fatalf("%q → %q → %+v %v", s, r.String(), r2, err)
		}
	})
}

// memStore serves a fuzzed root manifest and fuzzed blobs (any digest
// gets the same bytes: the digest checks are the stores' job).
type memStore struct{ top, data []byte }

func (m *memStore) root(context.Context) (string, []byte, string, error) {
	return "", m.top, source.Digest(m.top), nil
}
func (m *memStore) manifest(_ context.Context, d Descriptor) (string, []byte, error) {
	if int64(len(m.top)) != d.Size {
		return "", nil, fmt.Errorf("size")
	}
	return d.MediaType, m.top, nil
}
func (m *memStore) blob(_ context.Context, d Descriptor, max int64) ([]byte, error) {
	if d.Size > max || int64(len(m.data)) != d.Size {
		return nil, fmt.Errorf("size")
	}
	return m.data, nil
}
func (m *memStore) spec(d string) string { return "mem:" + d }

// FuzzResolve feeds arbitrary manifests, indexes and configs to the
// resolver: errors, never panics.
func FuzzResolve(f *testing.F) {
	d := "sha256:" + strings.Repeat("a", 64)
	cfg := `{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":["` + d + `"]}}`
	f.Add(`{"schemaVersion":2,"config":{"mediaType":"`+MediaTypeConfig+`","digest":"`+d+`","size":`+fmt.Sprint(len(cfg))+`},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"`+d+`","size":1}]}`, cfg)
	f.Add(`{"schemaVersion":2,"manifests":[{"mediaType":"`+MediaTypeManifest+`","digest":"`+d+`","size":3,"platform":{"os":"linux","architecture":"amd64"}}]}`, cfg)
	f.Add(`{"schemaVersion":1,"fsLayers":[]}`, "")
	f.Add(`{"mediaType":"x","manifests":null}`, "{}")
	f.Fuzz(func(t *testing.T, root, blob string) {
		want, _ := ParsePlatform("linux/amd64")
		img, err := resolve(context.Background(), &memStore{[]byte(root), []byte(blob)}, Ref{Transport: Registry}, want, nil)
		if err == nil && (len(img.Layers) == 0 || img.ConfigDigest == "") {
			t.Fatalf("resolved without layers or config: %+v", img)
		}
	})
}
