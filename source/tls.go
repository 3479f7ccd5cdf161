package source

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
)

// tlsConfig trusts the system pool (Go honours SSL_CERT_FILE and
// SSL_CERT_DIR) plus, as containers/image and dockerd do,
// /etc/containers/certs.d/HOST:PORT/*.crt, /etc/docker/certs.d/HOST:PORT/ca.crt,
// and every *.crt in Options.CertDir.
//
// Without such files RootCAs stays nil: crypto/tls then loads the system
// pool itself when a handshake first needs it (parsing it takes 25-50 ms,
// which a plain-HTTP registry never pays; NewOpener warms it in the
// background for the others).
func (o *Opener) tlsConfig(hostport string) (*tls.Config, error) {
	root := o.opt.certsRoot
	if root == "" {
		root = "/etc"
	}
	var files []string
	if m, _ := filepath.Glob(filepath.Join(root, "containers/certs.d", hostport, "*.crt")); m != nil {
		files = append(files, m...)
	}
	files = append(files, filepath.Join(root, "docker/certs.d", hostport, "ca.crt"))
	if o.opt.CertDir != "" {
		m, err := filepath.Glob(filepath.Join(o.opt.CertDir, "*.crt"))
		if err != nil {
			return nil, err
		}
		if len(m) == 0 {
			if _, err := os.Stat(o.opt.CertDir); err != nil {
				return nil, fmt.Errorf("--cert-dir: %w", err)
			}
		}
		files = append(files, m...)
	}
	var pool *x509.CertPool
	for _, f := range files {
		b, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if pool == nil {
			if pool, err = x509.SystemCertPool(); err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("%s: no PEM certificates", f)
		}
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// warmSystemPool loads the system trust store in the background, so the
// first handshake finds it parsed.
func warmSystemPool() { go x509.SystemCertPool() }
