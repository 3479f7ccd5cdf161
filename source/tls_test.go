package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRegistryTLSTrust: a registry whose certificate no trusted CA signed
// is refused (the system pool, used lazily by crypto/tls when no extra
// file is configured), and trusted through certs.d/HOST:PORT/ca.crt or
// --cert-dir; an https redirect target is verified the same way.
func TestRegistryTLSTrust(t *testing.T) {
	data := testBlob(t, 300<<10)
	dg := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	reg := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/lib/app/blobs/"+dg {
			w.WriteHeader(404)
			return
		}
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
	}))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "https://")
	spec := "oci://" + host + "/lib/app@" + dg
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: reg.Certificate().Raw})
	empty := t.TempDir()

	_, err := NewOpener(Options{certsRoot: empty}).Open(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted registry: %v", err)
	}

	etc := t.TempDir()
	d := filepath.Join(etc, "docker/certs.d", host)
	os.MkdirAll(d, 0o755)
	if err := os.WriteFile(filepath.Join(d, "ca.crt"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := NewOpener(Options{certsRoot: etc, Chunk: 64 << 10}).Open(context.Background(), spec)
	if err != nil {
		t.Fatalf("certs.d: %v", err)
	}
	checkEveryByte(t, b, data)
	b.Close()

	cd := t.TempDir()
	if err := os.WriteFile(filepath.Join(cd, "reg.crt"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err = NewOpener(Options{certsRoot: empty, CertDir: cd}).Open(context.Background(), spec)
	if err != nil {
		t.Fatalf("--cert-dir: %v", err)
	}
	b.Close()

	// A file that holds no certificate is an error at once.
	os.WriteFile(filepath.Join(cd, "junk.crt"), []byte("not pem"), 0o644)
	if _, err := NewOpener(Options{certsRoot: empty, CertDir: cd}).Open(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "no PEM") {
		t.Fatalf("junk cert file: %v", err)
	}

	// A plain-HTTP registry redirecting to the untrusted https server.
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, reg.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer plain.Close()
	ph := strings.TrimPrefix(plain.URL, "http://")
	_, err = NewOpener(Options{certsRoot: empty, Insecure: []string{ph}}).Open(context.Background(), "oci://"+ph+"/lib/app@"+dg)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("redirect to an untrusted https server: %v", err)
	}
}
