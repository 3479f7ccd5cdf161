package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// pki is a throwaway CA with helpers to issue certificates.
type pki struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var serial int64 = 100

func newCA(t *testing.T, name string) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &pki{cert: c, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a leaf certificate and key signed by ca to certFile/keyFile.
func (ca *pki) issue(t *testing.T, cn string, server bool, certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
}

// clientDir makes a libnbd tls-certificates directory: ca-cert.pem (to
// verify the server) and, if client is non-nil, client-cert.pem and
// client-key.pem issued by client.
func clientDir(t *testing.T, serverCA, client *pki) string {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ca-cert.pem"), serverCA.pem, 0o600)
	if client != nil {
		client.issue(t, "client", false, filepath.Join(dir, "client-cert.pem"), filepath.Join(dir, "client-key.pem"))
	}
	return dir
}

func nbdinfo(uri string) (string, error) {
	out, err := exec.Command("nbdinfo", "--json", uri).CombinedOutput()
	return string(out), err
}

// tlsURI turns a served nbd+unix URI into the nbds+unix one libnbd needs.
func tlsURI(uri, certDir string) string {
	uri = strings.Replace(uri, "nbd+unix://", "nbds+unix://", 1)
	return uri + "&tls-certificates=" + certDir + "&tls-hostname=localhost"
}

// TestServeTLS: `serve --tls-cert --tls-key [--tls-ca]` with certificates
// made here, against libnbd's nbdinfo/nbdcopy (GnuTLS): TLS is required by
// default (plaintext refused), --tls=on lets clients choose, and --tls-ca
// makes client certificates mandatory and verified (missing or foreign
// ones refused).
func TestServeTLS(t *testing.T) {
	need(t, "nbdinfo", "nbdcopy")
	im := layouts(t, testtree.Options{Seed: 43, Files: 8, MaxSize: 100 << 10})[1]
	flat := composeFile(t, im)
	want, _ := os.ReadFile(flat)
	ca, rogue := newCA(t, "erofs-blockd test CA"), newCA(t, "rogue CA")
	sdir := t.TempDir()
	cert, key := filepath.Join(sdir, "server.pem"), filepath.Join(sdir, "server.key")
	ca.issue(t, "localhost", true, cert, key)
	caFile := filepath.Join(sdir, "ca.pem")
	os.WriteFile(caFile, ca.pem, 0o600)
	size := `"export-size": ` + strconv.Itoa(len(want))

	t.Run("require", func(t *testing.T) {
		srv := serve(t, append(im.blobArgs(), "--tls-cert", cert, "--tls-key", key)...)
		if !strings.HasPrefix(srv.uri, "nbds+unix://") {
			t.Errorf("printed URI %q, want nbds+unix://", srv.uri)
		}
		plain := strings.Replace(srv.uri, "nbds+unix://", "nbd+unix://", 1)
		dir := clientDir(t, ca, nil)
		out, err := nbdinfo(tlsURI(plain, dir))
		if err != nil || !strings.Contains(out, size) || !strings.Contains(out, `"is_read_only": true`) {
			t.Fatalf("nbdinfo over TLS: %v\n%s", err, out)
		}
		dst := filepath.Join(t.TempDir(), "copy")
		run(t, "nbdcopy", tlsURI(plain, dir), dst)
		if got, _ := os.ReadFile(dst); !bytes.Equal(got, want) {
			t.Fatal("nbdcopy over TLS: bytes differ from compose -o")
		}
		if out, err := nbdinfo(plain); err == nil {
			t.Fatalf("plaintext client served by a TLS-required server:\n%s", out)
		}
		// Raw: every option but STARTTLS gets NBD_REP_ERR_TLS_REQD.
		c := dialT(t, srv.sock)
		c.opt(optList, nil)
		if _, ty, _, err := c.optReply(); err != nil || ty != repErrTLSReqd {
			t.Fatalf("LIST before TLS: type %#x err %v", ty, err)
		}
	})

	t.Run("optional", func(t *testing.T) {
		srv := serve(t, append(im.blobArgs(), "--tls=on", "--tls-cert", cert, "--tls-key", key)...)
		plain := strings.Replace(srv.uri, "nbds+unix://", "nbd+unix://", 1)
		if out, err := nbdinfo(plain); err != nil || !strings.Contains(out, size) {
			t.Fatalf("plaintext with --tls=on: %v\n%s", err, out)
		}
		if out, err := nbdinfo(tlsURI(plain, clientDir(t, ca, nil))); err != nil || !strings.Contains(out, size) {
			t.Fatalf("TLS with --tls=on: %v\n%s", err, out)
		}
	})

	t.Run("client-certs", func(t *testing.T) {
		srv := serve(t, append(im.blobArgs(), "--tls-cert", cert, "--tls-key", key, "--tls-ca", caFile)...)
		plain := strings.Replace(srv.uri, "nbds+unix://", "nbd+unix://", 1)
		if out, err := nbdinfo(tlsURI(plain, clientDir(t, ca, ca))); err != nil || !strings.Contains(out, size) {
			t.Fatalf("client with a certificate from --tls-ca: %v\n%s", err, out)
		}
		if out, err := nbdinfo(tlsURI(plain, clientDir(t, ca, nil))); err == nil {
			t.Fatalf("client without a certificate accepted:\n%s", out)
		}
		if out, err := nbdinfo(tlsURI(plain, clientDir(t, ca, rogue))); err == nil {
			t.Fatalf("client with a certificate from another CA accepted:\n%s", out)
		}
	})

	t.Run("tcp", func(t *testing.T) {
		port := freePort(t)
		serve(t, append(im.blobArgs(), "--tls-cert", cert, "--tls-key", key, "--listen", "tcp:127.0.0.1:"+port)...)
		waitTCP(t, port)
		uri := "nbds://localhost:" + port + "?tls-certificates=" + clientDir(t, ca, nil)
		if out, err := nbdinfo(uri); err != nil || !strings.Contains(out, size) {
			t.Fatalf("nbds:// over TCP: %v\n%s", err, out)
		}
		// libnbd verifies the server over TCP: a client that does not trust
		// the server's CA gives up.
		if out, err := nbdinfo("nbds://localhost:" + port + "?tls-certificates=" + clientDir(t, rogue, nil)); err == nil {
			t.Fatalf("client accepted a server certificate from an untrusted CA:\n%s", out)
		}
	})

	t.Run("flags", func(t *testing.T) {
		for _, bad := range [][]string{
			{"--tls=require"}, // no certificate
			{"--tls=maybe", "--tls-cert", cert, "--tls-key", key},
			{"--tls=off", "--tls-cert", cert, "--tls-key", key},
			{"--tls-cert", cert, "--tls-key", cert},                 // not a key
			{"--tls-cert", cert, "--tls-key", key, "--tls-ca", key}, // not a certificate
		} {
			out, err := exec.Command(binPath, append(append([]string{"serve"}, im.blobArgs()...), append(bad, "--listen", "unix:"+filepath.Join(t.TempDir(), "s"))...)...).CombinedOutput()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
				t.Errorf("serve %v: %v, want exit status 2\n%s", bad, err, out)
			} else {
				t.Logf("%v: %s", bad, strings.TrimSpace(string(out)))
			}
		}
	})
}

func dialT(t *testing.T, sock string) *rawClient {
	t.Helper()
	c, err := dialRaw("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	c.c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := c.greet(); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitTCP waits until something listens on 127.0.0.1:port (serve prints
// its unix listener first; the TCP one may open a moment later).
func waitTCP(t *testing.T, port string) {
	t.Helper()
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			c.Close()
			return
		}
		if i > 200 {
			t.Fatalf("nothing listens on port %s: %v", port, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	return p
}

// TestServeExposure: unix sockets are created 0600 (or --socket-mode), and
// a plaintext TCP listener beyond loopback is refused unless --allow-remote
// or --tls=require.
func TestServeExposure(t *testing.T) {
	im := layouts(t, testtree.Options{Seed: 47, Files: 4, MaxSize: 10 << 10})[0]
	srv := serve(t, im.blobArgs()...)
	if fi, err := os.Stat(srv.sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v %v, want 0600", fi.Mode(), err)
	}
	srv2 := serve(t, append(im.blobArgs(), "--socket-mode", "0660")...)
	if fi, err := os.Stat(srv2.sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v %v, want 0660", fi.Mode(), err)
	}
	for _, addr := range []string{"tcp:0.0.0.0:0", "tcp::0", "tcp:[::]:0"} {
		out, err := exec.Command(binPath, append(append([]string{"serve"}, im.blobArgs()...), "--listen", addr)...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "--allow-remote") {
			t.Fatalf("serve --listen %s without TLS: %v\n%s", addr, err, out)
		}
	}
	t.Logf("refused: %s", strings.TrimSpace(func() string {
		out, _ := exec.Command(binPath, append(append([]string{"serve"}, im.blobArgs()...), "--listen", "tcp:0.0.0.0:0")...).CombinedOutput()
		return string(out)
	}()))
	port := freePort(t)
	serve(t, append(im.blobArgs(), "--listen", "tcp:0.0.0.0:"+port, "--allow-remote")...)
	waitTCP(t, port)
	c, err := dialRaw("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.greet(); err != nil {
		t.Fatalf("--allow-remote listener: %v", err)
	}
}
