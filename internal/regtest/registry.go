package regtest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RegistryBinary is Debian's docker-registry (distribution 2.8).
var RegistryBinary = "/usr/bin/docker-registry"

// RegistryOptions configure StartRegistry.
type RegistryOptions struct {
	// Dir holds the configuration, storage and log (required).
	Dir string
	// TLS, if set, makes the registry serve https with a certificate from it.
	TLS *CA
	// Users enables htpasswd auth with these user → password pairs
	// (bcrypt, written with htpasswd -B).
	Users map[string]string
	// Token enables token auth against this token server (Users is then
	// ignored).
	Token *TokenServer
}

// Registry is a running docker-registry.
type Registry struct {
	Addr string // 127.0.0.1:PORT
	URL  string // http(s)://127.0.0.1:PORT
	Log  string // its log file (access lines included)
	conf string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartRegistry writes a configuration under opt.Dir and starts the
// registry on a free port.
func StartRegistry(opt RegistryOptions) (*Registry, error) {
	if err := os.MkdirAll(filepath.Join(opt.Dir, "storage"), 0o755); err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	r := &Registry{Addr: fmt.Sprintf("127.0.0.1:%d", port), Log: filepath.Join(opt.Dir, "registry.log"), conf: filepath.Join(opt.Dir, "config.yml")}
	var c strings.Builder
	fmt.Fprintf(&c, "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\n")
	fmt.Fprintf(&c, "storage:\n  filesystem:\n    rootdirectory: %s\n  maintenance:\n    uploadpurging:\n      enabled: false\n", filepath.Join(opt.Dir, "storage"))
	fmt.Fprintf(&c, "http:\n  addr: %s\n  secret: regtest-secret\n", r.Addr)
	r.URL = "http://" + r.Addr
	if opt.TLS != nil {
		cf, kf, err := opt.TLS.Issue(opt.Dir, "registry")
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&c, "  tls:\n    certificate: %s\n    key: %s\n", cf, kf)
		r.URL = "https://" + r.Addr
	}
	switch {
	case opt.Token != nil:
		fmt.Fprintf(&c, "auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n",
			opt.Token.Realm, opt.Token.Service, opt.Token.Issuer, opt.Token.Bundle)
	case len(opt.Users) > 0:
		hp := filepath.Join(opt.Dir, "htpasswd")
		var lines []byte
		for u, p := range opt.Users {
			out, err := exec.Command("htpasswd", "-Bbn", u, p).Output()
			if err != nil {
				return nil, fmt.Errorf("htpasswd: %v", err)
			}
			lines = append(lines, []byte(strings.TrimSpace(string(out))+"\n")...)
		}
		if err := os.WriteFile(hp, lines, 0o600); err != nil {
			return nil, err
		}
		fmt.Fprintf(&c, "auth:\n  htpasswd:\n    realm: regtest\n    path: %s\n", hp)
	}
	if err := os.WriteFile(r.conf, []byte(c.String()), 0o600); err != nil {
		return nil, err
	}
	if err := r.Start(); err != nil {
		return nil, err
	}
	return r, nil
}

// Start (re)starts the registry process on its port with its storage and
// waits until it listens.
func (r *Registry) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return fmt.Errorf("registry %s already running", r.Addr)
	}
	logf, err := os.OpenFile(r.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(RegistryBinary, "serve", r.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with the test
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	r.cmd, r.done = cmd, done
	if err := waitListening(r.Addr, done, 20*time.Second); err != nil {
		r.kill()
		b, _ := os.ReadFile(r.Log)
		return fmt.Errorf("docker-registry: %v\n%s", err, tail(b, 2000))
	}
	return nil
}

// Kill stops the registry with SIGKILL (connections die mid-transfer) and
// waits for it to exit. Start brings it back.
func (r *Registry) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kill()
}

func (r *Registry) kill() {
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
	r.cmd = nil
}

// Close stops the registry.
func (r *Registry) Close() { r.Kill() }

// AccessEntry is one `msg="response completed"` line of the registry log.
type AccessEntry struct {
	Method, URI string
	Status      int
	Written     int64 // body bytes sent
}

var kvRE = regexp.MustCompile(`([a-z][a-z0-9_.]*)=("(?:[^"\\]|\\.)*"|\S*)`)

// Access parses the registry log's completed responses.
func (r *Registry) Access() ([]AccessEntry, error) {
	f, err := os.Open(r.Log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []AccessEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, `msg="response completed"`) {
			continue
		}
		var e AccessEntry
		for _, m := range kvRE.FindAllStringSubmatch(l, -1) {
			v := m[2]
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			switch m[1] {
			case "http.request.method":
				e.Method = v
			case "http.request.uri":
				e.URI = v
			case "http.response.status":
				e.Status, _ = strconv.Atoi(v)
			case "http.response.written":
				e.Written, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// BlobBytes sums the body bytes the registry sent for GETs of blobs whose
// URI contains match ("" = every blob), and counts those responses.
func (r *Registry) BlobBytes(match string) (bytes int64, responses int, err error) {
	es, err := r.Access()
	if err != nil {
		return 0, 0, err
	}
	for _, e := range es {
		if e.Method == "GET" && strings.Contains(e.URI, "/blobs/sha256:") && strings.Contains(e.URI, match) {
			bytes += e.Written
			responses++
		}
	}
	return bytes, responses, nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
