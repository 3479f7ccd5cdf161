package source

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// hostileOpener is an Opener for a plain-HTTP test server at host with
// user:pass in its auth file.
func hostileOpener(t *testing.T, host, pass string) *Opener {
	t.Helper()
	af := filepath.Join(t.TempDir(), "auth.json")
	b := `{"auths":{"` + host + `":{"username":"u","password":"` + pass + `"}}}`
	if err := os.WriteFile(af, []byte(b), 0o600); err != nil {
		t.Fatal(err)
	}
	return NewOpener(Options{AuthFile: af, Insecure: []string{host}, RetryBase: time.Millisecond})
}

const testManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}`

func TestFetchManifestHostile(t *testing.T) {
	ctx := context.Background()
	const pass = "Secret-Pass-9f"
	var mode atomic.Value
	var sent atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "u" || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="x"`)
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		body := []byte(testManifest)
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json; charset=utf-8")
		switch mode.Load().(string) {
		case "ok":
			w.Header().Set("Docker-Content-Digest", Digest(body))
		case "huge-length":
			w.Header().Set("Content-Length", "5000000")
			w.Write(bytes.Repeat([]byte(" "), 5000000))
			return
		case "endless":
			chunk := bytes.Repeat([]byte(" "), 64<<10)
			for {
				n, err := w.Write(chunk)
				sent.Add(int64(n))
				if err != nil || sent.Load() > 64<<20 {
					return
				}
			}
		case "wrong-dcd":
			w.Header().Set("Docker-Content-Digest", Digest([]byte("other")))
		case "garbage-dcd":
			w.Header().Set("Docker-Content-Digest", strings.Repeat("x", 5000))
		case "404":
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`, http.StatusNotFound)
			return
		case "500":
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		if r.Header.Get("Accept") == "" {
			http.Error(w, "no accept", http.StatusBadRequest)
			return
		}
		w.Write(body)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	o := hostileOpener(t, host, pass)
	accept := []string{"application/vnd.oci.image.manifest.v1+json"}
	fetch := func(m, ref string) (string, []byte, string, error) {
		mode.Store(m)
		return o.FetchManifest(ctx, host, "a/b", ref, accept)
	}
	mt, body, dg, err := fetch("ok", "v1")
	if err != nil || mt != "application/vnd.oci.image.manifest.v1+json" || string(body) != testManifest || dg != Digest([]byte(testManifest)) {
		t.Fatalf("ok: %q %q %s %v", mt, body, dg, err)
	}
	if _, _, _, err := fetch("ok", dg); err != nil {
		t.Errorf("by digest: %v", err)
	}
	other := Digest([]byte("other"))
	for _, c := range []struct{ mode, ref, want string }{
		{"ok", other, "the registry sent another manifest"},
		{"huge-length", "v1", "exceeds the limit"},
		{"endless", "v1", "exceeds the limit"},
		{"wrong-dcd", "v1", "does not match the body's digest"},
		{"garbage-dcd", "v1", "does not match the body's digest"},
		{"404", "v1", "404 Not Found (MANIFEST_UNKNOWN): no such manifest"},
		{"500", "v1", "500 Internal Server Error"},
		{"ok", "bad/ref", "bad tag or digest"},
	} {
		_, _, _, err := fetch(c.mode, c.ref)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %s: want %q, got %v", c.mode, c.ref, c.want, err)
			continue
		}
		if !strings.Contains(err.Error(), "registry "+host+" repository a/b manifest "+c.ref) || strings.Contains(err.Error(), pass) || len(err.Error()) > 600 {
			t.Errorf("%s: error does not name the manifest or is too long or shows the password: %v", c.mode, err)
		}
	}
	if _, _, _, err := fetch("404", "v1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("404 is not ErrNotFound: %v", err)
	}
	if n := sent.Load(); n > 16<<20 {
		t.Errorf("the endless body was read for %d bytes", n)
	}
	// A wrong password: refused, not shown.
	o2 := hostileOpener(t, host, "Wrong-Pass-3")
	_, _, _, err = o2.FetchManifest(ctx, host, "a/b", "v1", accept)
	if err == nil || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "Wrong-Pass-3") {
		t.Errorf("wrong password: %v", err)
	}
	if _, _, _, err := o.FetchManifest(ctx, host, "A/B", "v1", accept); err == nil || !strings.Contains(err.Error(), "bad repository") {
		t.Errorf("bad repository: %v", err)
	}
}

func TestFetchBlobSmall(t *testing.T) {
	ctx := context.Background()
	good := []byte(`{"rootfs":{}}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, Digest(good)):
			w.Write(good)
		case strings.HasSuffix(r.URL.Path, Digest([]byte("liar"))):
			w.Write([]byte("other content"))
		default:
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
		}
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	o := hostileOpener(t, host, "p")
	if b, err := o.FetchBlob(ctx, host, "r", Digest(good), 100); err != nil || !bytes.Equal(b, good) {
		t.Fatalf("%q %v", b, err)
	}
	if _, err := o.FetchBlob(ctx, host, "r", Digest(good), 4); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("cap: %v", err)
	}
	if _, err := o.FetchBlob(ctx, host, "r", Digest([]byte("liar")), 100); err == nil || !strings.Contains(err.Error(), "corrupt or wrong blob") {
		t.Errorf("wrong content: %v", err)
	}
	if _, err := o.FetchBlob(ctx, host, "r", Digest([]byte("none")), 100); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing: %v", err)
	}
	if _, err := o.FetchBlob(ctx, host, "r", "sha256:zz", 100); err == nil {
		t.Error("bad digest accepted")
	}
}

// TestManifestRedirect: a manifest redirected to another host gets no
// Authorization there.
func TestManifestRedirect(t *testing.T) {
	body := []byte(testManifest)
	var leaked atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			leaked.Store(true)
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Write(body)
	}))
	defer other.Close()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, _, ok := r.BasicAuth(); !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="x"`)
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		http.Redirect(w, r, other.URL+"/m", http.StatusTemporaryRedirect)
	}))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	o := hostileOpener(t, host, "p")
	_, b, _, err := o.FetchManifest(context.Background(), host, "a", Digest(body), nil)
	if err != nil || !bytes.Equal(b, body) {
		t.Fatalf("%q %v", b, err)
	}
	if leaked.Load() {
		t.Error("Authorization sent to the redirect target")
	}
}

func TestPushHostile(t *testing.T) {
	ctx := context.Background()
	var mode atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := mode.Load().(string)
		switch {
		case r.Method == http.MethodHead:
			http.NotFound(w, r)
		case r.Method == http.MethodPost && m == "no-location":
			w.WriteHeader(http.StatusAccepted)
		case r.Method == http.MethodPost:
			w.Header().Set("Location", "/upload/x?state=1")
			w.WriteHeader(http.StatusAccepted)
		case r.Method == http.MethodPut && m == "denied":
			http.Error(w, `{"errors":[{"code":"DENIED","message":"no"}]}`, http.StatusForbidden)
		case r.Method == http.MethodPut && m == "wrong-digest":
			w.Header().Set("Docker-Content-Digest", Digest([]byte("zzz")))
			w.WriteHeader(http.StatusCreated)
		case r.Method == http.MethodPut && r.URL.Query().Get("state") == "1" && r.URL.Query().Get("digest") != "":
			w.WriteHeader(http.StatusCreated)
		case r.Method == http.MethodPut:
			w.WriteHeader(http.StatusCreated)
		case strings.Contains(r.URL.Path, "/referrers/") && m == "html":
			w.Header().Set("Content-Type", "text/html")
			w.Write([]byte("<html>"))
		case strings.Contains(r.URL.Path, "/referrers/") && m == "garbage":
			w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
			w.Write([]byte(`{"manifests":[{"digest":"sha256:nothex"}]}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	o := hostileOpener(t, host, "p")
	data := []byte("blob")
	mode.Store("ok")
	if dg, err := o.PushBlob(ctx, host, "r", data); err != nil || dg != Digest(data) {
		t.Fatalf("push: %s %v", dg, err)
	}
	for m, want := range map[string]string{"no-location": "no usable Location", "denied": "403 Forbidden (DENIED)", "wrong-digest": "the registry stored digest"} {
		mode.Store(m)
		if _, err := o.PushBlob(ctx, host, "r", data); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", m, err)
		}
	}
	mode.Store("wrong-digest")
	if _, err := o.PushManifest(ctx, host, "r", "v1", "application/json", data); err == nil || !strings.Contains(err.Error(), "stored digest") {
		t.Errorf("manifest wrong digest: %v", err)
	}
	mode.Store("ok")
	if _, err := o.PushManifest(ctx, host, "r", "bad tag", "application/json", data); err == nil {
		t.Error("bad tag accepted")
	}
	if _, err := o.PushManifest(ctx, host, "r", "", "application/json", make([]byte, MaxManifest+1)); err == nil {
		t.Error("huge manifest accepted")
	}
	dg := Digest(data)
	for m, want := range map[string]bool{"ok": false, "html": false} {
		mode.Store(m)
		if _, ok, err := o.Referrers(ctx, host, "r", dg, ""); ok != want || err != nil {
			t.Errorf("referrers %s: %v %v", m, ok, err)
		}
	}
	mode.Store("garbage")
	if _, ok, err := o.Referrers(ctx, host, "r", dg, ""); !ok || err == nil || !strings.Contains(err.Error(), "bad descriptor") {
		t.Errorf("garbage referrers: %v %v", ok, err)
	}
}

// TestManifestRetries: manifest and config GETs retry what may pass
// (connection drops, 429/5xx, a body that breaks off or does not match its
// digest) and nothing else (404, 400); Retry-After is honoured.
func TestManifestRetries(t *testing.T) {
	ctx := context.Background()
	good := []byte(testManifest)
	dg := Digest(good)
	var fails, calls atomic.Int64
	var mode atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if fails.Add(-1) >= 0 {
			switch mode.Load().(string) {
			case "503":
				w.Header().Set("Retry-After", "0")
				http.Error(w, "busy", http.StatusServiceUnavailable)
			case "429":
				http.Error(w, "slow down", http.StatusTooManyRequests)
			case "wrong":
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Write(bytes.ToUpper(good))
			case "cut":
				w.Header().Set("Content-Length", "1000")
				w.Write(good[:10])
				if hj, ok := w.(http.Hijacker); ok {
					c, _, _ := hj.Hijack()
					c.Close()
				}
			case "drop":
				if hj, ok := w.(http.Hijacker); ok {
					c, _, _ := hj.Hijack()
					c.Close()
				}
			case "404":
				http.Error(w, "no", http.StatusNotFound)
			case "400":
				http.Error(w, "bad", http.StatusBadRequest)
			}
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Write(good)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	op := hostileOpener(t, host, "p")
	for _, m := range []string{"503", "429", "wrong", "cut", "drop"} {
		mode.Store(m)
		fails.Store(2)
		calls.Store(0)
		if _, b, _, err := op.FetchManifest(ctx, host, "r", dg, nil); err != nil || !bytes.Equal(b, good) {
			t.Fatalf("%s twice, then right: %v", m, err)
		}
		if calls.Load() != 3 {
			t.Fatalf("%s: %d requests, want 3", m, calls.Load())
		}
		fails.Store(2)
		calls.Store(0)
		if b, err := op.FetchBlob(ctx, host, "r", dg, 1<<20); err != nil || !bytes.Equal(b, good) {
			t.Fatalf("blob: %s twice, then right: %v", m, err)
		}
	}
	// Failing for good: Retries+1 attempts, then the error.
	mode.Store("503")
	fails.Store(1000)
	calls.Store(0)
	if _, _, _, err := op.FetchManifest(ctx, host, "r", dg, nil); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("always 503: %v", err)
	}
	if calls.Load() != 6 {
		t.Fatalf("always 503: %d requests, want 6 (5 retries)", calls.Load())
	}
	// Not retried.
	for _, m := range []string{"404", "400"} {
		mode.Store(m)
		fails.Store(1000)
		calls.Store(0)
		_, _, _, err := op.FetchManifest(ctx, host, "r", "latest", nil)
		if err == nil || calls.Load() != 1 {
			t.Fatalf("%s: %v after %d requests, want an error after 1", m, err, calls.Load())
		}
		if m == "404" && !errors.Is(err, ErrNotFound) {
			t.Fatalf("404: %v is not ErrNotFound", err)
		}
	}
	// A cancelled context stops the retries.
	mode.Store("503")
	fails.Store(1000)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, _, err := op.FetchManifest(cctx, host, "r", dg, nil); err == nil {
		t.Fatal("cancelled: no error")
	}
}
