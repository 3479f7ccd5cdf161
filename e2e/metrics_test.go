package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// daemon is a running `erofs-blockd serve` with its stdout lines up to the
// metrics line.
type daemon struct {
	*server
	lines   []string
	metrics string // http://HOST:PORT/metrics
}

// serveDaemon starts serve with --metrics-listen and collects the "serving"
// lines.
func serveDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	s := &server{sock: sock, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	s.cmd = exec.Command(binPath, append([]string{"serve", "--listen", "unix:" + sock, "--metrics-listen", "127.0.0.1:0"}, args...)...)
	s.cmd.Stderr = s.stderr
	stdout, _ := s.cmd.StdoutPipe()
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{server: s}
	got := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			l := sc.Text()
			if u, ok := strings.CutPrefix(l, "metrics "); ok {
				d.metrics = u
				got <- nil
				io.Copy(io.Discard, stdout)
				return
			}
			d.lines = append(d.lines, l)
		}
		got <- fmt.Errorf("stdout closed")
	}()
	go func() { s.done <- s.cmd.Wait() }()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("server did not start: %v\n%s", err, s.stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("server did not print its metrics URL\n%s", s.stderr)
	}
	s.uri = strings.Fields(d.lines[0])[1]
	t.Cleanup(func() { s.stop(t) })
	return d
}

// uriFor returns the URI line of export name.
func (d *daemon) uriFor(t *testing.T, name string) string {
	t.Helper()
	for _, l := range d.lines {
		f := strings.Fields(l)
		if len(f) >= 2 && strings.Contains(f[1], ":///"+name+"?") {
			return f[1]
		}
	}
	t.Fatalf("no URI for export %q in %q", name, d.lines)
	return ""
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %v %s", url, err, resp.Status)
	}
	return string(b)
}

// metricValue returns the value of the sample whose name and labels match
// exactly (labels as written in the exposition, e.g. `{command="read",export="a"}`).
func metricValue(t *testing.T, expo, series string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(expo)
	if m == nil {
		t.Fatalf("series %s not in exposition", series)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestMetrics reads an export with nbdcopy while scraping /metrics with a
// real HTTP client, checks the counters against what nbdcopy did, and runs
// promtool check metrics on the exposition.
func TestMetrics(t *testing.T) {
	need(t, "nbdcopy", "promtool", "mkfs.erofs")
	im := layouts(t, testtree.Options{Seed: 5, Files: 40, MaxSize: 200 << 10})[1] // contiguous multi-blob
	d := serveDaemon(t, append(im.blobArgs(), append([]string{"--name", "img", "--cache-size", "64M"}, slowBackend...)...)...)
	size, err := strconv.ParseInt(strings.Trim(strings.Fields(d.lines[0])[2], "("), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	before := scrape(t, d.metrics)
	if v := metricValue(t, before, `erofs_blockd_build_info{goversion="`+runtimeVersion(before)+`",version="(devel)"}`); v != 1 {
		t.Fatalf("build_info %v", v)
	}

	// Scrape in a loop while nbdcopy reads; counters must never go down.
	ctx, cancel := context.WithCancel(context.Background())
	scrapes := make(chan int, 1)
	go func() {
		n, last := 0, -1.0
		for ctx.Err() == nil {
			e, err := get(d.metrics)
			if err != nil {
				t.Errorf("scrape during the copy: %v", err)
				break
			}
			if v, ok := tryValue(e, `erofs_blockd_nbd_requests_total{command="read",export="img"}`); ok {
				if v < last {
					t.Errorf("read requests went down: %v -> %v", last, v)
				}
				last = v
			}
			n++
			time.Sleep(5 * time.Millisecond)
		}
		scrapes <- n
	}()
	const reqSize = 65536
	out := filepath.Join(t.TempDir(), "copy.img")
	run(t, "nbdcopy", "--no-extents", "--request-size="+strconv.Itoa(reqSize), "--connections=1", d.uri, out)
	cancel()
	if n := <-scrapes; n < 1 {
		t.Fatal("no scrape ran during the copy")
	}
	if fileSHA(t, out) != fileSHA(t, composeFile(t, im)) {
		t.Fatal("nbdcopy output differs from compose -o")
	}

	after := scrape(t, d.metrics)
	reads := metricValue(t, after, `erofs_blockd_nbd_requests_total{command="read",export="img"}`)
	wantReads := float64((size + reqSize - 1) / reqSize)
	if reads != wantReads {
		t.Errorf("read requests %v, want %v (%d bytes in %d-byte requests)", reads, wantReads, size, reqSize)
	}
	if v := metricValue(t, after, `erofs_blockd_nbd_request_bytes_total{command="read",export="img"}`); v != float64(size) {
		t.Errorf("read bytes %v, want %d", v, size)
	}
	if v := metricValue(t, after, `erofs_blockd_nbd_request_errors_total{command="read",export="img"}`); v != 0 {
		t.Errorf("read errors %v", v)
	}
	if v := metricValue(t, after, `erofs_blockd_nbd_request_duration_seconds_count{command="read",export="img"}`); v != reads {
		t.Errorf("latency count %v, want %v", v, reads)
	}
	if v := metricValue(t, after, `erofs_blockd_nbd_requests_in_flight{command="read",export="img"}`); v != 0 {
		t.Errorf("in flight %v after the copy", v)
	}
	if v := metricValue(t, after, `erofs_blockd_nbd_connections`); v != 0 {
		t.Errorf("open connections %v after nbdcopy exited", v)
	}
	if v := metricValue(t, after, `erofs_blockd_nbd_connections_total`); v < 1 {
		t.Errorf("connections_total %v", v)
	}
	// Every data byte came from a backend once: a cold cache, no re-reads.
	var backend float64
	for _, b := range im.blobs {
		backend += metricValue(t, after, `erofs_blockd_backend_read_bytes_total{blob="`+b+`"}`) -
			metricValue(t, before, `erofs_blockd_backend_read_bytes_total{blob="`+b+`"}`)
	}
	var blobBytes int64
	for _, b := range im.blobs {
		st, _ := os.Stat(b)
		blobBytes += st.Size()
	}
	// (The startup check already cached some metadata pages.)
	if backend < 0.9*float64(blobBytes) || backend > float64(blobBytes) {
		t.Errorf("backend bytes during the copy %v, want at most the %d bytes of the inputs and not much less", backend, blobBytes)
	}
	if v := metricValue(t, after, `erofs_blockd_cache_misses_total`); v == 0 {
		t.Error("no cache misses counted")
	}
	if v := metricValue(t, after, `erofs_blockd_cache_resident_bytes`); v <= 0 {
		t.Error("cache holds nothing")
	}

	// The exposition is valid.
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(after)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

func get(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

func runtimeVersion(expo string) string {
	m := regexp.MustCompile(`erofs_blockd_build_info\{goversion="([^"]+)"`).FindStringSubmatch(expo)
	if m == nil {
		return "?"
	}
	return m[1]
}

func tryValue(expo, series string) (float64, bool) {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(expo)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}
