package regtest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func need(t *testing.T, bins ...string) {
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (scripts/deps.sh)", b)
		}
	}
}

// get fetches u with an optional Range and Authorization.
func get(t *testing.T, c *http.Client, u, rng, auth string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestServers(t *testing.T) {
	need(t, RegistryBinary, NginxBinary, "htpasswd")
	dir := t.TempDir()
	ca, err := NewCA("regtest CA")
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 10000)
	users := map[string]string{"alice": "wonderland"}
	c := Client(ca)

	t.Run("htpasswd", func(t *testing.T) {
		reg, err := StartRegistry(RegistryOptions{Dir: filepath.Join(dir, "h"), TLS: ca, Users: users})
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Close()
		p := &Pusher{URL: reg.URL, User: "alice", Pass: "wonderland", Client: c}
		dg, err := p.Push("a/b", data)
		if err != nil {
			t.Fatal(err)
		}
		u := reg.URL + "/v2/a/b/blobs/" + dg
		if resp, _ := get(t, c, u, "bytes=0-9", ""); resp.StatusCode != 401 {
			t.Fatalf("anonymous: %s", resp.Status)
		}
		req, _ := http.NewRequest("GET", "/", nil)
		req.SetBasicAuth("alice", "wonderland")
		resp, b := get(t, c, u, "bytes=16-31", req.Header.Get("Authorization"))
		if resp.StatusCode != 206 || !bytes.Equal(b, data[16:32]) {
			t.Fatalf("ranged GET: %s %q", resp.Status, b)
		}
		n, responses, err := reg.BlobBytes(dg)
		if err != nil || n != 16 || responses != 1 {
			t.Fatalf("access log: %d bytes in %d responses, %v", n, responses, err)
		}
		// A restart keeps the storage.
		reg.Kill()
		if err := reg.Start(); err != nil {
			t.Fatal(err)
		}
		if resp, b := get(t, c, u, "bytes=0-3", req.Header.Get("Authorization")); resp.StatusCode != 206 || string(b) != "0123" {
			t.Fatalf("after restart: %s", resp.Status)
		}
	})

	t.Run("token", func(t *testing.T) {
		ts, err := StartTokenServer(filepath.Join(dir), ca, users)
		if err != nil {
			t.Fatal(err)
		}
		defer ts.Close()
		reg, err := StartRegistry(RegistryOptions{Dir: filepath.Join(dir, "t"), TLS: ca, Token: ts})
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Close()
		p := &Pusher{URL: reg.URL, User: "alice", Pass: "wonderland", Client: c}
		dg, err := p.Push("x/y", data)
		if err != nil {
			b, _ := os.ReadFile(reg.Log)
			t.Fatalf("%v\n%s", err, tail(b, 3000))
		}
		resp, b := get(t, c, reg.URL+"/v2/x/y/blobs/"+dg, "bytes=1-2", p.auth)
		if resp.StatusCode != 206 || string(b) != "12" {
			t.Fatalf("ranged GET with the token: %s", resp.Status)
		}
		if ts.Issued() < 1 {
			t.Fatal("no token issued")
		}
		// A token past its lifetime is refused by the registry.
		ts.SetExpiry(time.Hour, 0)
		if err := p.answer(fmt.Sprintf(`Bearer realm="%s",service="%s"`, ts.Realm, ts.Service), "repository:x/y:pull"); err != nil {
			t.Fatal(err)
		}
		if resp, _ := get(t, c, reg.URL+"/v2/x/y/blobs/"+dg, "bytes=1-2", p.auth); resp.StatusCode != 401 {
			t.Fatalf("expired token: %s", resp.Status)
		}
	})

	t.Run("nginx+proxy", func(t *testing.T) {
		root := filepath.Join(dir, "www")
		os.Mkdir(root, 0o755)
		os.WriteFile(filepath.Join(root, "blob"), data, 0o644)
		n, err := StartNginx(filepath.Join(dir, "nginx"), root, ca)
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		for _, base := range []string{n.HTTP, n.HTTPS} {
			resp, b := get(t, c, base+"/blob", "bytes=2-5", "")
			if resp.StatusCode != 206 || string(b) != "2345" || resp.Header.Get("ETag") == "" {
				t.Fatalf("%s: %s %q", base, resp.Status, b)
			}
		}
		px, err := StartProxy(ProxyOptions{Upstream: n.HTTPS, UpstreamCA: ca, TLS: ca, Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer px.Close()
		px.SetFault(FaultWrongRange, 1)
		if resp, b := get(t, c, px.URL+"/blob", "bytes=2-5", ""); resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 3-6/%d", len(data)) || string(b) != "3456" {
			t.Fatalf("wrong-range: %s %q", resp.Header.Get("Content-Range"), b)
		}
		px.SetFault(Fault503, 1)
		if resp, _ := get(t, c, px.URL+"/blob", "bytes=2-5", ""); resp.StatusCode != 503 {
			t.Fatalf("503: %s", resp.Status)
		}
		for _, f := range []Fault{FaultReset, FaultShortBody} {
			px.SetFault(f, 1)
			req, _ := http.NewRequest("GET", px.URL+"/blob", nil)
			req.Header.Set("Range", "bytes=0-9999")
			resp, err := c.Do(req)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			if err == nil {
				t.Fatalf("%s: body read without error", f)
			}
			t.Logf("%s: %v", f, err)
		}
		px.SetFault(FaultNone, 0)
		if resp, b := get(t, c, px.URL+"/blob", "bytes=2-5", ""); resp.StatusCode != 206 || string(b) != "2345" {
			t.Fatalf("no fault: %s %q", resp.Status, b)
		}
		px.SetLatency(50 * time.Millisecond)
		t0 := time.Now()
		if resp, _ := get(t, c, px.URL+"/blob", "bytes=2-5", ""); resp.StatusCode != 206 || time.Since(t0) < 50*time.Millisecond {
			t.Fatalf("latency: %s after %v", resp.Status, time.Since(t0))
		}
		px.SetLatency(0)
		es, err := n.Access()
		if err != nil || len(es) < 4 || es[0].Range != "bytes=2-5" || es[0].Status != "206" {
			t.Fatalf("nginx access log: %v %+v", err, es)
		}
		if !strings.HasPrefix(px.URL, "https://127.0.0.1:") {
			t.Fatal(px.URL)
		}
	})
}

func TestStack(t *testing.T) {
	need(t, RegistryBinary, "htpasswd")
	dir := t.TempDir()
	st, err := StartStack(dir, StackOptions{Token: true, Proxy: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f := filepath.Join(dir, "blob")
	os.WriteFile(f, []byte("stack blob"), 0o644)
	spec, err := st.Push("bench/x", f)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(spec, "oci://"+st.Proxy.Addr+"/bench/x@sha256:") || len(st.Args()) != 4 {
		t.Fatalf("spec %s args %v", spec, st.Args())
	}
}
