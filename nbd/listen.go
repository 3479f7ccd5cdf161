package nbd

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"
)

// Listen opens a listener from a spec, "unix:/path" or "tcp:HOST:PORT", and
// returns it with the NBD URI clients use to reach it
// (nbd+unix:///?socket=/path or nbd://host:port). A unix socket gets mode
// 0600; a stale socket file nobody answers on is replaced.
func Listen(spec string) (net.Listener, string, error) {
	kind, addr, ok := strings.Cut(spec, ":")
	if !ok || addr == "" {
		return nil, "", fmt.Errorf("nbd: listen %q: want unix:/path or tcp:host:port", spec)
	}
	switch kind {
	case "unix":
		l, err := net.Listen("unix", addr)
		if err != nil && errors.Is(err, syscall.EADDRINUSE) {
			if fi, serr := os.Lstat(addr); serr == nil && fi.Mode()&os.ModeSocket != 0 {
				if c, derr := net.DialTimeout("unix", addr, time.Second); derr == nil {
					c.Close()
					return nil, "", fmt.Errorf("nbd: listen %q: socket in use by another server", spec)
				}
				os.Remove(addr)
				l, err = net.Listen("unix", addr)
			}
		}
		if err != nil {
			return nil, "", fmt.Errorf("nbd: listen %q: %w", spec, err)
		}
		if err := os.Chmod(addr, 0o600); err != nil {
			l.Close()
			return nil, "", fmt.Errorf("nbd: listen %q: chmod socket: %w", spec, err)
		}
		u := url.URL{Scheme: "nbd+unix", Path: "/", RawQuery: "socket=" + escapePath(addr)}
		return l, u.String(), nil
	case "tcp":
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, "", fmt.Errorf("nbd: listen %q: %w", spec, err)
		}
		host, _, _ := net.SplitHostPort(addr)
		_, port, _ := net.SplitHostPort(l.Addr().String())
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "localhost"
		}
		return l, "nbd://" + net.JoinHostPort(host, port), nil
	}
	return nil, "", fmt.Errorf("nbd: listen %q: unknown network %q (want unix or tcp)", spec, kind)
}

// escapePath escapes a socket path for a URI query, keeping '/' readable.
func escapePath(p string) string {
	return strings.ReplaceAll(url.QueryEscape(p), "%2F", "/")
}
