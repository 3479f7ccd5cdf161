package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/erofs-blockd/erofs-blockd/nbd"
	"github.com/erofs-blockd/erofs-blockd/nbd/kernel"
	"github.com/spf13/pflag"
)

// securityFlags are serve's flags for TLS, listener exposure, the
// handshake deadline and reattaching a kernel device after a restart.
// See SECURITY.md.
type securityFlags struct {
	tlsMode          string
	tlsCert, tlsKey  string
	tlsCA            string
	socketMode       string
	allowRemote      bool
	handshakeTimeout time.Duration
	reattach         bool

	// resolved
	tlsConfig *tls.Config
	require   bool
	mode      os.FileMode
}

func (s *securityFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&s.tlsMode, "tls", "", "NBD_OPT_STARTTLS on network listeners: off, on (clients choose), require (plaintext refused); default require when --tls-cert is given, else off")
	fs.StringVar(&s.tlsCert, "tls-cert", "", "server certificate `FILE` (PEM, may include the chain)")
	fs.StringVar(&s.tlsKey, "tls-key", "", "server private key `FILE` (PEM)")
	fs.StringVar(&s.tlsCA, "tls-ca", "", "CA certificates `FILE` (PEM): when given, clients must present a certificate signed by one of them")
	fs.StringVar(&s.socketMode, "socket-mode", "0600", "permission bits of unix sockets (octal)")
	fs.BoolVar(&s.allowRemote, "allow-remote", false, "allow a tcp listener on a non-loopback address without --tls=require")
	fs.DurationVar(&s.handshakeTimeout, "handshake-timeout", 30*time.Second, "time a client has to finish option negotiation")
	fs.BoolVar(&s.reattach, "reattach", false, "reattach to a /dev/nbdX left by a previous server (netlink NBD_CMD_RECONFIGURE, same --backend-id) instead of configuring it anew")
}

// resolve checks the flags and loads the certificates.
func (s *securityFlags) resolve() error {
	m, err := strconv.ParseUint(s.socketMode, 8, 32)
	if err != nil || m&^0o777 != 0 {
		return fmt.Errorf("--socket-mode %q: want octal permission bits such as 0600 or 0660", s.socketMode)
	}
	s.mode = os.FileMode(m)
	if s.mode&0o600 != 0o600 {
		return fmt.Errorf("--socket-mode %q: the owner needs read and write (0600)", s.socketMode)
	}
	if s.handshakeTimeout <= 0 {
		return fmt.Errorf("--handshake-timeout %v: must be positive", s.handshakeTimeout)
	}
	mode := s.tlsMode
	if mode == "" {
		mode = "off"
		if s.tlsCert != "" {
			mode = "require"
		}
	}
	switch mode {
	case "off":
		if s.tlsCert != "" || s.tlsKey != "" || s.tlsCA != "" {
			return errors.New("--tls=off with --tls-cert/--tls-key/--tls-ca: drop the certificates or choose --tls=on|require")
		}
		return nil
	case "on", "require":
	default:
		return fmt.Errorf("--tls %q: want off, on or require", s.tlsMode)
	}
	if s.tlsCert == "" || s.tlsKey == "" {
		return fmt.Errorf("--tls=%s needs --tls-cert and --tls-key", mode)
	}
	cert, err := tls.LoadX509KeyPair(s.tlsCert, s.tlsKey)
	if err != nil {
		return fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if s.tlsCA != "" {
		pem, err := os.ReadFile(s.tlsCA)
		if err != nil {
			return fmt.Errorf("--tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--tls-ca %s: no PEM certificates", s.tlsCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	s.tlsConfig, s.require = cfg, mode == "require"
	return nil
}

// apply sets the server options these flags control.
func (s *securityFlags) apply(cfg *nbd.Config) {
	cfg.TLS, cfg.TLSRequire = s.tlsConfig, s.require
	cfg.HandshakeTimeout = s.handshakeTimeout
}

// listen opens one --listen spec under the exposure policy: unix sockets
// with --socket-mode; tcp on a non-loopback address only with
// --tls=require or --allow-remote. The URI uses nbds when TLS is on.
func (s *securityFlags) listen(spec string) (net.Listener, string, error) {
	if kind, addr, ok := strings.Cut(spec, ":"); ok && kind == "tcp" && !s.allowRemote && !s.require {
		if remote, why := isRemote(addr); remote {
			return nil, "", fmt.Errorf("--listen %s: %s is reachable from other hosts; plaintext NBD has no authentication: use --tls=require (with --tls-cert/--tls-key, and --tls-ca to authenticate clients) or --allow-remote", spec, why)
		}
	}
	l, uri, err := nbd.ListenWith(spec, nbd.ListenOptions{SocketMode: s.mode})
	if err != nil {
		return nil, "", err
	}
	if s.tlsConfig != nil {
		uri = strings.Replace(uri, "nbd", "nbds", 1)
	}
	return l, uri, nil
}

// isRemote reports whether a tcp HOST:PORT listens beyond loopback.
func isRemote(addr string) (bool, string) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, "" // net.Listen reports it
	}
	if host == "" {
		return true, "an empty host (all interfaces)"
	}
	if host == "localhost" {
		return false, ""
	}
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsLoopback() {
			return false, ""
		}
		if ip.IsUnspecified() {
			return true, host + " (all interfaces)"
		}
		return true, host
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return true, host + " (unresolved)"
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return true, fmt.Sprintf("%s (%s)", host, ip)
		}
	}
	return false, ""
}

// attach configures /dev/nbdX, or with --reattach hands new connections to
// a device a previous server left attached (its connections died).
func (s *securityFlags) attach(ctx context.Context, cfg kernel.Config, serve func(net.Conn)) (*kernel.Device, error) {
	if s.reattach {
		return kernel.Reattach(ctx, cfg, serve)
	}
	return kernel.Attach(ctx, cfg, serve)
}

// attachVerb is the word serve prints for the kernel device.
func (s *securityFlags) attachVerb() string {
	if s.reattach {
		return "reattached"
	}
	return "attached"
}
