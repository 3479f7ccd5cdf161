package nbd

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Listen opens a listener from a spec, "unix:/path" or "tcp:HOST:PORT", and
// returns it with the NBD URI clients use to reach it
// (nbd+unix:///?socket=/path or nbd://host:port). A unix socket gets mode
// 0600; a stale socket file nobody answers on is replaced.
func Listen(spec string) (net.Listener, string, error) {
	return ListenWith(spec, ListenOptions{})
}

// ListenOptions tune ListenWith.
type ListenOptions struct {
	// SocketMode is the permission of a unix socket (0: 0600). The socket
	// is created inside a private (0700) directory next to the final path,
	// given its mode there and renamed into place, so it is never reachable
	// with looser permissions, whatever the umask.
	SocketMode os.FileMode
}

// ListenWith is Listen with options.
func ListenWith(spec string, o ListenOptions) (net.Listener, string, error) {
	kind, addr, ok := strings.Cut(spec, ":")
	if !ok || addr == "" {
		return nil, "", fmt.Errorf("nbd: listen %q: want unix:/path or tcp:host:port", spec)
	}
	switch kind {
	case "unix":
		mode := o.SocketMode.Perm()
		if mode == 0 {
			mode = 0o600
		}
		l, err := listenUnix(addr, mode)
		if err != nil {
			return nil, "", fmt.Errorf("nbd: listen %q: %w", spec, err)
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

// maxUnixPath is the usable length of sockaddr_un.sun_path on Linux.
const maxUnixPath = 107

// listenUnix creates the socket at path with mode: in a fresh 0700
// directory beside path, chmod, then rename over path. A path in use by a
// live server is refused; a stale socket is replaced; anything else that is
// not a socket is left alone.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, derr := net.DialTimeout("unix", path, time.Second); derr == nil {
			c.Close()
			return nil, errors.New("socket in use by another server")
		}
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".nbd")
	if err != nil {
		return nil, fmt.Errorf("private directory for the socket: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) > maxUnixPath {
		if len(path) > maxUnixPath {
			return nil, fmt.Errorf("socket path longer than %d bytes", maxUnixPath)
		}
		// No room for the private directory in sun_path: create the socket
		// in place with a umask-free chmod (a short window, documented).
		l, err := net.Listen("unix", path)
		if err != nil && errors.Is(err, syscall.EADDRINUSE) {
			os.Remove(path)
			l, err = net.Listen("unix", path)
		}
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(path, mode); err != nil {
			l.Close()
			return nil, fmt.Errorf("chmod socket: %w", err)
		}
		return l, nil
	}
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, err
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, mode); err != nil {
		ul.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ul.Close()
		return nil, fmt.Errorf("move socket into place: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ul.Close()
		return nil, err
	}
	return &unixListener{UnixListener: ul, path: path, fi: fi}, nil
}

// unixListener removes its socket file on Close, if the file at path is
// still the socket it created.
type unixListener struct {
	*net.UnixListener
	path string
	fi   os.FileInfo
	once sync.Once
}

// Addr is the final socket path (the socket was bound in a private
// directory and renamed).
func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.fi) {
			os.Remove(l.path)
		}
	})
	return err
}

// escapePath escapes a socket path for a URI query, keeping '/' readable.
func escapePath(p string) string {
	return strings.ReplaceAll(url.QueryEscape(p), "%2F", "/")
}
