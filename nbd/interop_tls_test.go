package nbd

import (
	"bytes"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInteropTLS runs nbdinfo and nbdcopy (GnuTLS via libnbd) over
// STARTTLS against a server that requires TLS.
func TestInteropTLS(t *testing.T) {
	srvCfg, _ := selfSigned(t)
	dir := t.TempDir()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvCfg.Certificates[0].Certificate[0]})
	if err := os.WriteFile(filepath.Join(dir, "ca-cert.pem"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	dev := interopDevice()
	uri := startInterop(t, Config{TLS: srvCfg, TLSRequire: true}, Export{Device: dev})
	tlsURI := strings.Replace(uri, "nbd+unix://", "nbds+unix://", 1) + "&tls-certificates=" + dir + "&tls-hostname=nbd-test"
	out := run(t, "nbdinfo", "--json", tlsURI)
	if !bytes.Contains(out, []byte(`"is_read_only": true`)) || !bytes.Contains(out, []byte(`"export-size": 7405568`)) {
		t.Fatalf("nbdinfo over TLS: %s", out)
	}
	dst := filepath.Join(t.TempDir(), "out.raw")
	run(t, "nbdcopy", tlsURI, dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, dev.data) {
		t.Fatal("nbdcopy over TLS: output differs")
	}
	// Plain connections are refused by a server that requires TLS.
	if _, err := runErr("nbdinfo", uri); err == nil {
		t.Fatal("plain nbdinfo succeeded against TLS-required server")
	}
}

// TestInteropTLSInline: small READs answered on the reader goroutine
// (a blockdev.NoWaitReader device) come out right over TLS, where the
// reader does not poll the socket itself: nbdcopy with 4 KiB requests.
func TestInteropTLSInline(t *testing.T) {
	srvCfg, _ := selfSigned(t)
	dir := t.TempDir()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvCfg.Certificates[0].Certificate[0]})
	if err := os.WriteFile(filepath.Join(dir, "ca-cert.pem"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	dev := &nowaitDev{memDev: interopDevice().memDev}
	uri := startInterop(t, Config{TLS: srvCfg, TLSRequire: true}, Export{Device: dev})
	tlsURI := strings.Replace(uri, "nbd+unix://", "nbds+unix://", 1) + "&tls-certificates=" + dir + "&tls-hostname=nbd-test"
	dst := filepath.Join(t.TempDir(), "out.raw")
	run(t, "nbdcopy", "--request-size=4096", tlsURI, dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, dev.data) {
		t.Fatal("nbdcopy over TLS: output differs")
	}
	if dev.inline.Load() == 0 || dev.blocked.Load() == 0 {
		t.Fatalf("inline %d, would block %d: want both paths used", dev.inline.Load(), dev.blocked.Load())
	}
}
