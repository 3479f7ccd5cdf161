package ociimage

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/source"
)

const testArtifactType = "application/vnd.erofs-blockd.index.v1"

func pushFiles(tag string) []File {
	return []File{
		{Name: "index.erofs", MediaType: "application/vnd.erofs.layer.v1", Data: []byte("erofs index " + tag)},
		{Name: "report.json", MediaType: "application/json", Data: []byte(`{"tag":"` + tag + `"}`)},
	}
}

// checkArtifact compares a found artifact with the files pushed, reading
// each through FetchFile.
func checkArtifact(t *testing.T, r *Resolver, a *Artifact, digest string, files []File) {
	t.Helper()
	if a == nil {
		t.Fatal("no artifact found")
	}
	if a.Digest != digest || a.ArtifactType != testArtifactType || len(a.Files) != len(files) {
		t.Fatalf("artifact %+v, want digest %s and %d files", a, digest, len(files))
	}
	for i, f := range files {
		af := a.Files[i]
		if af.Name != f.Name || af.MediaType != f.MediaType || af.Digest != source.Digest(f.Data) || af.Size != int64(len(f.Data)) {
			t.Errorf("file %d: %+v", i, af)
		}
		b, err := r.FetchFile(context.Background(), af, 1<<20)
		if err != nil || string(b) != string(f.Data) {
			t.Errorf("fetch %s: %q %v", f.Name, b, err)
		}
		if _, err := r.FetchFile(context.Background(), af, 3); err == nil || !strings.Contains(err.Error(), "limit") {
			t.Errorf("fetch %s with a small limit: %v", f.Name, err)
		}
	}
	if a.File(files[0].Name) == nil || a.File("nope") != nil {
		t.Error("Artifact.File")
	}
}

// TestPush pushes an image with PushBlob/PushManifest (a plain tar layer
// too, which skopeo would compress), resolves it, then keeps two
// artifacts on it in docker-registry 2.8, which has no referrers API: the
// sha256-HEX fallback tag lists both.
func TestPush(t *testing.T) {
	ctx := context.Background()
	for _, token := range []bool{false, true} {
		name := "basic"
		if token {
			name = "bearer"
		}
		t.Run(name, func(t *testing.T) {
			e := startRegistry(t, token)
			host, repo := e.st.Host, "art/img"
			dir := t.TempDir()
			l := newLayout(t, dir)
			ly := stdLayers(t, "p")
			md := l.image(amd64, ly...)
			// Push the layout's blobs and manifest by hand.
			read := func(d string) []byte {
				b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(d, "sha256:")))
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			mb := read(md.Digest)
			var m struct {
				Config Descriptor
				Layers []Descriptor
			}
			json.Unmarshal(mb, &m)
			for _, d := range append(m.Layers, m.Config) {
				dg, err := e.op.PushBlob(ctx, host, repo, read(d.Digest))
				if err != nil || dg != d.Digest {
					t.Fatalf("push blob: %s %v", dg, err)
				}
			}
			// Again: the HEAD finds it.
			if _, err := e.op.PushBlob(ctx, host, repo, read(m.Config.Digest)); err != nil {
				t.Fatal(err)
			}
			dg, err := e.op.PushManifest(ctx, host, repo, "v1", MediaTypeManifest, mb)
			if err != nil || dg != md.Digest {
				t.Fatalf("push manifest: %s %v", dg, err)
			}
			if _, err := e.op.PushManifest(ctx, host, repo, source.Digest([]byte("x")), MediaTypeManifest, mb); err == nil {
				t.Error("push under another digest accepted")
			}
			img, err := e.r.Resolve(ctx, "oci://"+host+"/"+repo+":v1", "linux/amd64")
			if err != nil {
				t.Fatal(err)
			}
			checkImage(t, img, "linux/amd64", ly, "oci://"+host+"/"+repo+"@")

			if a, err := e.r.FindArtifact(ctx, img, testArtifactType); a != nil || err != nil {
				t.Fatalf("before any push: %+v %v", a, err)
			}
			if _, ok, err := e.op.Referrers(ctx, host, repo, img.ManifestDigest, ""); ok || err != nil {
				t.Fatalf("docker-registry 2.8 has a referrers API? %v %v", ok, err)
			}
			f1, f2 := pushFiles("one"), pushFiles("two")
			d1, err := e.r.PushArtifact(ctx, img, testArtifactType, f1)
			if err != nil {
				t.Fatal(err)
			}
			a, err := e.r.FindArtifact(ctx, img, testArtifactType)
			if err != nil {
				t.Fatal(err)
			}
			checkArtifact(t, e.r, a, d1, f1)
			d2, err := e.r.PushArtifact(ctx, img, testArtifactType, f2)
			if err != nil {
				t.Fatal(err)
			}
			// The same files again: same digest, no new entry.
			if d, err := e.r.PushArtifact(ctx, img, testArtifactType, f1); err != nil || d != d1 {
				t.Fatalf("push again: %s %v", d, err)
			}
			as, err := e.r.FindArtifacts(ctx, img, testArtifactType)
			if err != nil || len(as) != 2 {
				t.Fatalf("two artifacts: %d %v", len(as), err)
			}
			checkArtifact(t, e.r, as[0], d1, f1)
			checkArtifact(t, e.r, as[1], d2, f2)
			if a, _ := e.r.FindArtifact(ctx, img, testArtifactType); a == nil || a.Digest != d2 {
				t.Errorf("FindArtifact is not the last pushed")
			}
			if as, err := e.r.FindArtifacts(ctx, img, "application/vnd.other"); len(as) != 0 || err != nil {
				t.Errorf("other type: %d %v", len(as), err)
			}
			// The fallback tag is an index with both, as other tools read it.
			mt, b, _, err := e.op.FetchManifest(ctx, host, repo, FallbackTag(img.ManifestDigest), []string{MediaTypeIndex})
			if err != nil || mt != MediaTypeIndex || strings.Count(string(b), testArtifactType) != 2 {
				t.Errorf("fallback tag: %s %s %v", mt, b, err)
			}
			// The artifact manifest names the image as subject.
			_, b, _, err = e.op.FetchManifest(ctx, host, repo, d1, []string{MediaTypeManifest})
			var am artifactManifest
			if err != nil || json.Unmarshal(b, &am) != nil || am.Subject == nil || am.Subject.Digest != img.ManifestDigest ||
				am.Config.MediaType != MediaTypeEmpty || am.ArtifactType != testArtifactType || am.Layers[0].Annotations[AnnotationTitle] != "index.erofs" {
				t.Errorf("artifact manifest: %s %v", b, err)
			}
			// The resolver refuses to take an artifact as an image.
			if _, err := e.r.Resolve(ctx, "oci://"+host+"/"+repo+"@"+d1, ""); err == nil || !strings.Contains(err.Error(), "not an image config") {
				t.Errorf("artifact as image: %v", err)
			}
		})
	}
}

func TestLayoutArtifacts(t *testing.T) {
	dir := t.TempDir()
	l := newLayout(t, dir)
	l.tag("t", l.image(amd64, stdLayers(t, "x")...))
	r := NewResolver(nil)
	img, err := r.Resolve(context.Background(), "oci-layout:"+dir+":t", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.PushArtifact(context.Background(), img, testArtifactType, pushFiles("x")); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("push to a layout: %v", err)
	}
	if _, err := r.FindArtifact(context.Background(), img, testArtifactType); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("find in a layout: %v", err)
	}
}

// fakeRegistry is an in-memory registry WITH the referrers API (the real
// one here has none): blobs, monolithic uploads, manifests by tag and
// digest, GET /v2/REPO/referrers/DIGEST.
type fakeRegistry struct {
	mu        sync.Mutex
	blobs     map[string][]byte
	manifests map[string][]byte // digest → body
	types     map[string]string // digest → media type
	tags      map[string]string // tag → digest
	log       []string
}

func newFakeRegistry(t *testing.T) (*fakeRegistry, string) {
	f := &fakeRegistry{blobs: map[string][]byte{}, manifests: map[string][]byte{}, types: map[string]string{}, tags: map[string]string{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, strings.TrimPrefix(srv.URL, "http://")
}

func (f *fakeRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, r.Method+" "+r.URL.Path)
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	switch {
	case strings.Contains(p, "/blobs/uploads/"):
		if r.Method == http.MethodPost {
			w.Header().Set("Location", "/v2/upload/1")
			w.WriteHeader(http.StatusAccepted)
			return
		}
	case strings.HasPrefix(p, "upload/") && r.Method == http.MethodPut:
		b, _ := io.ReadAll(r.Body)
		if source.Digest(b) != r.URL.Query().Get("digest") {
			http.Error(w, "digest", http.StatusBadRequest)
			return
		}
		f.blobs[source.Digest(b)] = b
		w.WriteHeader(http.StatusCreated)
		return
	case strings.Contains(p, "/blobs/"):
		b, ok := f.blobs[p[strings.LastIndex(p, "/")+1:]]
		if !ok {
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Length", itoa(len(b)))
		if r.Method == http.MethodGet {
			w.Write(b)
		}
		return
	case strings.Contains(p, "/manifests/"):
		ref := p[strings.LastIndex(p, "/")+1:]
		if r.Method == http.MethodPut {
			b, _ := io.ReadAll(r.Body)
			dg := source.Digest(b)
			f.manifests[dg], f.types[dg] = b, r.Header.Get("Content-Type")
			if !strings.HasPrefix(ref, "sha256:") {
				f.tags[ref] = dg
			}
			w.Header().Set("Docker-Content-Digest", dg)
			w.Header().Set("OCI-Subject", "yes")
			w.WriteHeader(http.StatusCreated)
			return
		}
		if d, ok := f.tags[ref]; ok {
			ref = d
		}
		b, ok := f.manifests[ref]
		if !ok {
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", f.types[ref])
		w.Header().Set("Docker-Content-Digest", ref)
		w.Write(b)
		return
	case strings.Contains(p, "/referrers/"):
		subj := p[strings.LastIndex(p, "/")+1:]
		ms := []Descriptor{}
		for dg, b := range f.manifests {
			var m artifactManifest
			if json.Unmarshal(b, &m) == nil && m.Subject != nil && m.Subject.Digest == subj {
				ms = append(ms, Descriptor{MediaType: MediaTypeManifest, Digest: dg, Size: int64(len(b)), ArtifactType: m.ArtifactType})
			}
		}
		w.Header().Set("Content-Type", MediaTypeIndex)
		json.NewEncoder(w).Encode(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeIndex, "manifests": ms})
		return
	}
	http.Error(w, "not here", http.StatusNotFound)
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// TestReferrersAPI: with a referrers API no fallback tag is written, and
// FindArtifact uses the API.
func TestReferrersAPI(t *testing.T) {
	ctx := context.Background()
	fr, host := newFakeRegistry(t)
	af := filepath.Join(t.TempDir(), "auth.json")
	os.WriteFile(af, []byte(`{"auths":{}}`), 0o600)
	op := source.NewOpener(source.Options{AuthFile: af, Insecure: []string{host}, RetryBase: time.Millisecond})
	r := NewResolver(op)
	dir := t.TempDir()
	l := newLayout(t, dir)
	ly := stdLayers(t, "api")
	md := l.image(arm64, ly...)
	var m struct {
		Config Descriptor
		Layers []Descriptor
	}
	mb, _ := os.ReadFile(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(md.Digest, "sha256:")))
	json.Unmarshal(mb, &m)
	for _, d := range append(m.Layers, m.Config) {
		b, _ := os.ReadFile(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(d.Digest, "sha256:")))
		if _, err := op.PushBlob(ctx, host, "a/b", b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := op.PushManifest(ctx, host, "a/b", "v1", MediaTypeManifest, mb); err != nil {
		t.Fatal(err)
	}
	img, err := r.Resolve(ctx, "oci://"+host+"/a/b:v1", "linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	f1, f2 := pushFiles("1"), pushFiles("2")
	d1, err := r.PushArtifact(ctx, img, testArtifactType, f1)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := r.PushArtifact(ctx, img, testArtifactType, f2)
	if err != nil {
		t.Fatal(err)
	}
	fr.mu.Lock()
	_, tagged := fr.tags[FallbackTag(img.ManifestDigest)]
	fr.mu.Unlock()
	if tagged {
		t.Error("fallback tag written although the registry has the referrers API")
	}
	as, err := r.FindArtifacts(ctx, img, testArtifactType)
	if err != nil || len(as) != 2 {
		t.Fatalf("find: %d %v", len(as), err)
	}
	for _, a := range as {
		switch a.Digest {
		case d1:
			checkArtifact(t, r, a, d1, f1)
		case d2:
			checkArtifact(t, r, a, d2, f2)
		default:
			t.Errorf("unknown artifact %s", a.Digest)
		}
	}
	if as, err := r.FindArtifacts(ctx, img, "application/vnd.other"); len(as) != 0 || err != nil {
		t.Errorf("other type: %d %v", len(as), err)
	}
	// A registry serving another config under the config's digest.
	fr.mu.Lock()
	fr.blobs[m.Config.Digest] = []byte(strings.Replace(string(fr.blobs[m.Config.Digest]), "arm64", "amd64", 1))
	fr.mu.Unlock()
	if _, err := r.Resolve(ctx, "oci://"+host+"/a/b:v1", "linux/arm64"); err == nil || !strings.Contains(err.Error(), "corrupt or wrong blob") {
		t.Errorf("tampered config: %v", err)
	}
}
