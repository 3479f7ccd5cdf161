package main

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// activationHelp is appended to `serve --help`.
const activationHelp = `
Socket activation (systemd, systemd-socket-activate): when LISTEN_PID is
this process and LISTEN_FDS is N, the listening sockets on fds 3..3+N-1 are
used as sd_listen_fds(3) describes; LISTEN_FDNAMES (colon-separated, as set
by FileDescriptorName=) names them. A socket named "api" serves the control
API (like --api); every other one (unix or tcp) serves NBD like a --listen
(tcp under the same --allow-remote/--tls policy). The variables are unset
once read. See contrib/systemd/README.md.

The API (--api unix:PATH, or an activated "api" socket) adds and removes
exports while serving: erofs-blockd export add|ls|rm. With it, serve may
start with no export at all.
`

// activatedSocket is one socket passed by the service manager.
type activatedSocket struct {
	name string // from LISTEN_FDNAMES ("" if none given)
	l    net.Listener
}

// activatedListeners returns the sockets passed with sd_listen_fds
// semantics: nothing unless LISTEN_PID is this process; fds from 3; the
// environment variables are unset after use, so children do not see them.
func activatedListeners() ([]activatedSocket, error) {
	pidS, fdsS := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	namesS := os.Getenv("LISTEN_FDNAMES")
	if fdsS == "" {
		return nil, nil
	}
	defer func() {
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
	}()
	if pid, err := strconv.Atoi(pidS); err != nil || pid != os.Getpid() {
		return nil, nil // meant for another process
	}
	n, err := strconv.Atoi(fdsS)
	if err != nil || n < 0 || n > 1024 {
		return nil, fmt.Errorf("socket activation: LISTEN_FDS=%q: want a small count", fdsS)
	}
	var names []string
	if namesS != "" {
		names = strings.Split(namesS, ":")
	}
	const first = 3 // SD_LISTEN_FDS_START
	var out []activatedSocket
	fail := func(err error) ([]activatedSocket, error) {
		for _, s := range out {
			s.l.Close()
		}
		return nil, err
	}
	for i := 0; i < n; i++ {
		fd := first + i
		name := ""
		if i < len(names) {
			name = names[i]
		}
		syscall.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), "LISTEN_FD_"+strconv.Itoa(fd))
		l, err := net.FileListener(f) // a dup; the original is closed below
		f.Close()
		if err != nil {
			return fail(fmt.Errorf("socket activation: fd %d (%q): not a listening stream socket: %w", fd, name, err))
		}
		out = append(out, activatedSocket{name: name, l: l})
	}
	return out, nil
}

// listenerURI is the NBD URI of an activated listener.
func listenerURI(l net.Listener) (string, string) {
	switch a := l.Addr().(type) {
	case *net.UnixAddr:
		q := strings.ReplaceAll(url.QueryEscape(a.Name), "%2F", "/")
		return "nbd+unix:///?socket=" + q, "unix:" + a.Name
	case *net.TCPAddr:
		host := a.IP.String()
		if a.IP.IsUnspecified() {
			host = "localhost"
		}
		return "nbd://" + net.JoinHostPort(host, strconv.Itoa(a.Port)), "tcp:" + a.String()
	}
	return "nbd://" + l.Addr().String(), l.Addr().Network() + ":" + l.Addr().String()
}

// activatedNBD applies --listen's exposure policy to an activated NBD
// listener (tcp beyond loopback only with --tls=require or
// --allow-remote) and returns it with its URI.
func activatedNBD(sec *securityFlags, l net.Listener) (net.Listener, string, error) {
	uri, spec := listenerURI(l)
	if kind, addr, _ := strings.Cut(spec, ":"); kind == "tcp" && !sec.allowRemote && !sec.require {
		if remote, why := isRemote(addr); remote {
			return nil, "", fmt.Errorf("activated socket %s: %s is reachable from other hosts; plaintext NBD has no authentication: use --tls=require or --allow-remote", spec, why)
		}
	}
	if sec.tlsConfig != nil {
		uri = strings.Replace(uri, "nbd", "nbds", 1)
	}
	return l, uri, nil
}
