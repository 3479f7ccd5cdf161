package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// apiServer is a running serve with the control API; ready when it has
// printed its "api" line.
type apiServer struct {
	*server
	api string // unix:PATH
	nbd string // socket path
}

func startAPIServer(t *testing.T, cmd *exec.Cmd, nbdSock string) *apiServer {
	t.Helper()
	s := &server{cmd: cmd, sock: nbdSock, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr = s.stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	go func() { s.done <- cmd.Wait() }()
	as := &apiServer{server: s, nbd: nbdSock}
	timeout := time.After(30 * time.Second)
	for as.api == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("server exited before its api line\n%s", s.stderr)
			}
			if a, ok := strings.CutPrefix(l, "api "); ok {
				as.api = a
			}
		case <-timeout:
			t.Fatalf("server did not print its api line\n%s", s.stderr)
		}
	}
	t.Cleanup(func() { s.stop(t) })
	return as
}

func (s *apiServer) export(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, binPath, append(append([]string{"export"}, args...), "--api", s.api)...)
}

func (s *apiServer) uri(name string) string {
	return "nbd+unix:///" + name + "?socket=" + s.nbd
}

// copyExport reads an export with nbdcopy and returns the file's sha256.
func copyExport(t *testing.T, uri string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "copy.img")
	run(t, "nbdcopy", uri, out)
	return fileSHA(t, out)
}

// TestAPIExports: serve starts with no export; two are added with
// `export add`, listed by nbdinfo, read by nbdcopy and compared with
// `compose`; one is removed while nbdcopy reads the other.
func TestAPIExports(t *testing.T) {
	need(t, "mkfs.erofs", "nbdinfo", "nbdcopy")
	ims := layouts(t, testtree.Options{Seed: 14, Files: 50, MaxSize: 400 << 10, Symlinks: true, Dup: true})
	one, two := ims[0], ims[1]
	dir := t.TempDir()
	nbdSock, apiSock := filepath.Join(dir, "nbd.sock"), filepath.Join(dir, "api.sock")
	s := startAPIServer(t, exec.Command(binPath, "serve", "--api", "unix:"+apiSock, "--listen", "unix:"+nbdSock), nbdSock)
	if st, err := os.Stat(apiSock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("api socket: %v %v", st.Mode(), err)
	}
	if out := s.export(t, "ls"); strings.Count(out, "\n") != 1 {
		t.Fatalf("export ls of an empty server:\n%s", out)
	}
	// Relative paths are made absolute by the client.
	rel, err := filepath.Rel(mustGetwd(t), one.blobs[0])
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"add", "one", "--blob", rel}
	for _, b := range one.blobs[1:] {
		args = append(args, "--blob", b)
	}
	if out := s.export(t, args...); !strings.HasPrefix(out, "added one (") {
		t.Fatalf("export add one: %s", out)
	}
	s.export(t, append([]string{"add", "two", "--description", "the second"}, two.blobArgs()...)...)

	list := run(t, "nbdinfo", "--list", s.uri(""))
	for _, want := range []string{`export="one"`, `export="two"`, "the second"} {
		if !strings.Contains(list, want) {
			t.Fatalf("nbdinfo --list lacks %s:\n%s", want, list)
		}
	}
	refOne, refTwo := fileSHA(t, composeFile(t, one)), fileSHA(t, composeFile(t, two))
	if got := copyExport(t, s.uri("one")); got != refOne {
		t.Fatalf("one: sha256 %s, compose %s", got, refOne)
	}
	if got := copyExport(t, s.uri("")); got != refOne {
		t.Fatalf("default export (one): sha256 %s, compose %s", got, refOne)
	}

	// Remove one while nbdcopy reads two.
	out := filepath.Join(t.TempDir(), "two.img")
	cp := exec.Command("nbdcopy", "--connections=2", s.uri("two"), out)
	var cpErr bytes.Buffer
	cp.Stderr = &cpErr
	if err := cp.Start(); err != nil {
		t.Fatal(err)
	}
	if o := s.export(t, "rm", "one"); o != "removed one\n" {
		t.Fatalf("export rm one: %q", o)
	}
	if err := cp.Wait(); err != nil {
		t.Fatalf("nbdcopy two while one was removed: %v\n%s", err, cpErr.String())
	}
	if got := fileSHA(t, out); got != refTwo {
		t.Fatalf("two: sha256 %s, compose %s", got, refTwo)
	}
	if o, err := exec.Command("nbdinfo", s.uri("one")).CombinedOutput(); err == nil {
		t.Fatalf("one still served after rm:\n%s", o)
	}

	ls := s.export(t, "ls")
	if strings.Contains(ls, "one") || !strings.Contains(ls, "two") {
		t.Fatalf("export ls:\n%s", ls)
	}
	var j struct {
		Exports []struct {
			Name  string   `json:"name"`
			Size  int64    `json:"size"`
			Blobs []string `json:"blobs"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(s.export(t, "ls", "--json")), &j); err != nil || len(j.Exports) != 1 || j.Exports[0].Name != "two" || len(j.Exports[0].Blobs) != len(two.blobs) {
		t.Fatalf("export ls --json: %+v %v", j, err)
	}

	// Refusals: the daemon's reason, exit 2.
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"rm", "one"}, `no such export "one"`},
		{append([]string{"add", "two"}, two.blobArgs()...), "exists"},
		{[]string{"add", "bad", "--blob", filepath.Join(dir, "missing.erofs")}, "missing.erofs"},
		{[]string{"add", "no blobs"}, "export name"},
		{[]string{"add", "x"}, "--image REF or --blob"},
	} {
		cmd := exec.Command(binPath, append(append([]string{"export"}, c.args...), "--api", s.api)...)
		o, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(o), c.msg) {
			t.Errorf("export %v: %v\n%s", c.args, err, o)
		}
	}
	// EROFS_BLOCKD_API, and an unreachable API.
	cmd := exec.Command(binPath, "export", "ls")
	cmd.Env = append(os.Environ(), "EROFS_BLOCKD_API="+s.api)
	if o, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(o), "two") {
		t.Errorf("EROFS_BLOCKD_API: %v\n%s", err, o)
	}
	o, err := exec.Command(binPath, "export", "ls", "--api", "unix:"+filepath.Join(dir, "none.sock")).CombinedOutput()
	if err == nil || !strings.Contains(string(o), "cannot reach") {
		t.Errorf("unreachable API: %v\n%s", err, o)
	}
}

// TestSocketActivation: serve gets its NBD and API sockets as systemd
// passes them (fds 3 and 4, LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES), here
// through `sh -c 'LISTEN_PID=$$ exec ...'` as systemd-socket-activate
// would, and both work.
func TestSocketActivation(t *testing.T) {
	need(t, "mkfs.erofs", "nbdcopy")
	im := layouts(t, testtree.Options{Seed: 15, Files: 30, MaxSize: 200 << 10})[2]
	dir := t.TempDir()
	nbdSock, apiSock := filepath.Join(dir, "nbd.sock"), filepath.Join(dir, "api.sock")
	var files []*os.File
	for _, p := range []string{nbdSock, apiSock} {
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		f, err := l.(*net.UnixListener).File()
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		files = append(files, f)
	}
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=nbd:api exec "$0" serve`, binPath)
	cmd.ExtraFiles = files // fds 3 and 4
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "LISTEN_") {
			env = append(env, e)
		}
	}
	cmd.Env = env
	s := startAPIServer(t, cmd, nbdSock)
	for _, f := range files {
		f.Close()
	}
	if s.api != "unix:"+apiSock {
		t.Fatalf("api on %s, want unix:%s", s.api, apiSock)
	}
	s.export(t, append([]string{"add", "img"}, im.blobArgs()...)...)
	if got, want := copyExport(t, s.uri("img")), fileSHA(t, composeFile(t, im)); got != want {
		t.Fatalf("img over the activated socket: sha256 %s, compose %s", got, want)
	}
	if !strings.Contains(s.export(t, "ls"), "img") {
		t.Fatal("export ls lacks img")
	}
	s.stop(t)
	// The sockets are systemd's: serve leaves the files alone.
	for _, p := range []string{nbdSock, apiSock} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("activated socket %s removed: %v", p, err)
		}
	}
}

func mustGetwd(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}
