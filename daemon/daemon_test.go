package daemon

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/source"
)

func TestDefaultDescriptionBounded(t *testing.T) {
	var blobs []string
	for i := 0; i < 1000; i++ {
		blobs = append(blobs, "/var/lib/images/some/long/path/layer-blob-number.erofs")
	}
	if d := DefaultDescription(blobs); len(d) > 4096 || !strings.Contains(d, "999 blobs") {
		t.Fatalf("description %d bytes: %.80s", len(d), d)
	}
	if d := DefaultDescription([]string{"p", "b"}); d != "erofs-blockd: p + b" {
		t.Fatal(d)
	}
	if d := DefaultDescription([]string{"https://u:secret@h/x?X-Amz-Signature=abc"}); strings.Contains(d, "secret") || strings.Contains(d, "abc") {
		t.Fatalf("credentials in the description: %s", d)
	}
}

func TestSpecs(t *testing.T) {
	if _, err := ParseExport("noequals", ""); err == nil {
		t.Fatal("NAME=... not required")
	}
	sp, err := ParseExport("a=p.erofs,oci://r:5000/x@sha256:"+strings.Repeat("0", 64), "d")
	if err != nil || sp.Name != "a" || len(sp.Blobs) != 2 || sp.Domain != "d" {
		t.Fatalf("%+v %v", sp, err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.json")
	os.WriteFile(cfg, []byte(`{"exports":[{"name":"x","blobs":["p.erofs","https://h/b"]}]}`), 0o644)
	specs, err := LoadConfig(cfg)
	if err != nil || specs[0].Blobs[0] != filepath.Join(dir, "p.erofs") || specs[0].Blobs[1] != "https://h/b" {
		t.Fatalf("%+v %v", specs, err)
	}
	os.WriteFile(cfg, []byte(`{"exports":[{"name":"x","blob":["p"]}]}`), 0o644)
	if _, err := LoadConfig(cfg); err == nil {
		t.Fatal("unknown field accepted")
	}
	for _, bad := range [][]Spec{
		{{Name: "a"}},
		{{Name: "a", Blobs: []string{""}}},
		{{Name: "a", Blobs: []string{"p"}}, {Name: "a", Blobs: []string{"q"}}},
	} {
		if err := CheckSpecs(bad); err == nil {
			t.Fatalf("%+v accepted", bad)
		}
	}
}

// TestRemoteSourceMetrics opens a blob over HTTP through the daemon and
// checks that its requests, bytes, failures and latency reach the metrics.
func TestRemoteSourceMetrics(t *testing.T) {
	data := make([]byte, 6<<20)
	rand.Read(data)
	var fail atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() && r.Header.Get("Range") != "bytes=0-0" {
			w.WriteHeader(503)
			return
		}
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	d, err := New(Config{Source: source.Options{Retries: 2, RetryBase: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.mu.Lock()
	o, err := d.open(srv.URL + "/blob?sig=secret")
	d.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2<<20)
	if _, err := o.be.ReadAt(buf, 512<<10); err != nil || !bytes.Equal(buf, data[512<<10:512<<10+len(buf)]) {
		t.Fatalf("read: %v", err)
	}
	fail.Store(true)
	if _, err := o.be.ReadAt(buf[:100], 6<<20-100); err == nil {
		t.Fatal("read of a failing server succeeded")
	}
	reg := d.Metrics().Registry()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	for _, want := range []string{"erofs_blockd_source_requests_total", "erofs_blockd_source_fetched_bytes_total",
		"erofs_blockd_source_retries_total", "erofs_blockd_source_read_failures_total",
		"erofs_blockd_source_request_errors_total", "erofs_blockd_source_requests_in_flight",
		"erofs_blockd_source_request_duration_seconds"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("%s missing from %v", want, names)
		}
	}
	name := o.be.Name
	if strings.Contains(name, "secret") {
		t.Fatalf("source label carries the signature: %s", name)
	}
	expo := gatherText(t, d)
	bytesFetched := value(t, expo, "erofs_blockd_source_fetched_bytes_total", name)
	if bytesFetched < float64(len(buf)) || bytesFetched > float64(5<<20) {
		t.Fatalf("fetched bytes %v for a %d-byte read", bytesFetched, len(buf))
	}
	if f := value(t, expo, "erofs_blockd_source_read_failures_total", name); f != 1 {
		t.Fatalf("read failures %v, want 1", f)
	}
	if r := value(t, expo, "erofs_blockd_source_retries_total", name); r != 2 {
		t.Fatalf("retries %v, want 2", r)
	}
	if strings.Contains(expo, "secret") {
		t.Fatal("metrics carry the URL's signature")
	}
	if !strings.Contains(expo, fmt.Sprintf(`erofs_blockd_source_request_duration_seconds_count{source=%q}`, name)) {
		t.Fatalf("no latency histogram for %s", name)
	}
}

func gatherText(t *testing.T, d *Daemon) string {
	rec := httptest.NewRecorder()
	d.Metrics().Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func value(t *testing.T, expo, metric, src string) float64 {
	t.Helper()
	prefix := fmt.Sprintf("%s{source=%q} ", metric, src)
	for _, l := range strings.Split(expo, "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	t.Fatalf("%s missing:\n%s", prefix, expo)
	return 0
}

func TestParseExportImage(t *testing.T) {
	sp, err := ParseExport("app=image:oci://reg:5000/app:1.2,platform=linux/arm64", "d")
	if err != nil || sp.Image != "oci://reg:5000/app:1.2" || sp.Platform != "linux/arm64" || len(sp.Blobs) != 0 || sp.Domain != "d" {
		t.Fatalf("%+v %v", sp, err)
	}
	if sp, err := ParseExport("l=image:oci-layout:/srv/l:v1", ""); err != nil || sp.Image != "oci-layout:/srv/l:v1" {
		t.Fatalf("%+v %v", sp, err)
	}
	for _, bad := range []string{"a=image:", "a=image:oci://r/x:1,foo=bar", "a=image:oci://r/x:1,platform=a,platform=b"} {
		if _, err := ParseExport(bad, ""); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := CheckSpecs([]Spec{{Name: "x", Image: "oci://r/x:1", Blobs: []string{"b"}}}); err == nil {
		t.Error("image and blobs accepted")
	}
}
