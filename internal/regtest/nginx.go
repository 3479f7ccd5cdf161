package regtest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// NginxBinary is nginx (Debian's nginx-light will do).
var NginxBinary = "/usr/sbin/nginx"

// Nginx is a running nginx serving a directory (Range, ETag and
// Last-Modified as nginx does for static files).
type Nginx struct {
	HTTP  string // http://127.0.0.1:PORT
	HTTPS string // https://localhost:PORT (certificate from the CA)
	Log   string // access log: METHOD URI STATUS BYTES "AUTHORIZATION" "RANGE"
	cmd   *exec.Cmd
	done  chan struct{}
}

// StartNginx serves root over http and https (certificate from ca) with
// its configuration, pid, logs and temp files under dir.
func StartNginx(dir, root string, ca *CA) (*Nginx, error) {
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, err
	}
	cf, kf, err := ca.Issue(dir, "nginx")
	if err != nil {
		return nil, err
	}
	p1, err := FreePort()
	if err != nil {
		return nil, err
	}
	p2, err := FreePort()
	if err != nil {
		return nil, err
	}
	n := &Nginx{HTTP: fmt.Sprintf("http://127.0.0.1:%d", p1), HTTPS: fmt.Sprintf("https://localhost:%d", p2),
		Log: filepath.Join(dir, "access.log"), done: make(chan struct{})}
	tmp := filepath.Join(dir, "tmp")
	// One process, no workers: it runs as the caller (root or not, it can
	// read the caller's private temp dirs) and dies with the test.
	conf := fmt.Sprintf(`master_process off;
pid %s/nginx.pid;
error_log %s/error.log warn;
events { worker_connections 256; }
http {
	default_type application/octet-stream;
	log_format regtest '$request_method $request_uri $status $body_bytes_sent "$http_authorization" "$http_range"';
	access_log %s regtest;
	client_body_temp_path %s/body;
	proxy_temp_path %s/proxy;
	fastcgi_temp_path %s/fastcgi;
	uwsgi_temp_path %s/uwsgi;
	scgi_temp_path %s/scgi;
	sendfile on;
	keepalive_requests 100000;
	server {
		listen 127.0.0.1:%d;
		root %s;
	}
	server {
		listen 127.0.0.1:%d ssl;
		ssl_certificate %s;
		ssl_certificate_key %s;
		root %s;
	}
}
`, dir, dir, n.Log, tmp, tmp, tmp, tmp, tmp, p1, root, p2, cf, kf, root)
	cpath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cpath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	n.cmd = exec.Command(NginxBinary, "-p", dir, "-c", cpath, "-e", filepath.Join(dir, "error.log"), "-g", "daemon off;")
	out, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		return nil, err
	}
	n.cmd.Stdout, n.cmd.Stderr = out, out
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := n.cmd.Start(); err != nil {
		out.Close()
		return nil, err
	}
	go func() { n.cmd.Wait(); out.Close(); close(n.done) }()
	for _, p := range []int{p1, p2} {
		if err := waitListening(fmt.Sprintf("127.0.0.1:%d", p), n.done, 20*time.Second); err != nil {
			n.Close()
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			e, _ := os.ReadFile(filepath.Join(dir, "stderr"))
			return nil, fmt.Errorf("nginx: %v\n%s%s", err, e, tail(b, 2000))
		}
	}
	return n, nil
}

// Close stops nginx and waits for it.
func (n *Nginx) Close() {
	select {
	case <-n.done:
		return
	default:
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
	}
}

// NginxEntry is one access-log line.
type NginxEntry struct {
	Method, URI, Status, Authorization, Range string
	Bytes                                     int64
}

// Access parses the access log (nginx writes it as requests complete).
func (n *Nginx) Access() ([]NginxEntry, error) {
	f, err := os.Open(n.Log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []NginxEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e NginxEntry
		l := sc.Text()
		quoted := strings.Split(l, `"`)
		if len(quoted) < 5 {
			continue
		}
		if _, err := fmt.Sscan(quoted[0], &e.Method, &e.URI, &e.Status, &e.Bytes); err != nil {
			continue
		}
		e.Authorization, e.Range = quoted[1], quoted[3]
		if e.Authorization == "-" {
			e.Authorization = ""
		}
		out = append(out, e)
	}
	return out, sc.Err()
}
