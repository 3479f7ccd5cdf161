package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/multiblob"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "erofs-blockd-e2e")
	if err != nil {
		panic(err)
	}
	binPath = filepath.Join(dir, "erofs-blockd")
	cmd := exec.Command("go", "build", "-o", binPath, "../cmd/erofs-blockd")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building erofs-blockd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: run scripts/deps.sh", tool)
		}
	}
}

// image is a set of files naming one composed device plus its source tree.
type image struct {
	name  string
	tree  string
	blobs []string // primary first
}

func (im image) blobArgs() []string {
	var a []string
	for _, b := range im.blobs {
		a = append(a, "--blob", b)
	}
	return a
}

// layouts builds the three layouts every e2e test covers: Debian 1.5
// --blobdev (all-zero slot), contiguous multi-blob, aligned multi-blob with holes.
func layouts(t *testing.T, opt testtree.Options) []image {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.Mkdir(tree, 0o755)
	testtree.Build(t, tree, opt)
	p, b := filepath.Join(dir, "p.erofs"), filepath.Join(dir, "data.blob")
	testtree.Mkfs(t, p, tree, "--blobdev="+b, "--chunksize=4096")
	out := []image{{name: "debian-blobdev", tree: tree, blobs: []string{p, b}}}
	for _, l := range []string{multiblob.LayoutContiguous, multiblob.LayoutAligned} {
		res, err := multiblob.Split(p, b, filepath.Join(dir, l), multiblob.Options{N: 3, Layout: l})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, image{name: l, tree: tree, blobs: append([]string{res.Primary}, res.Blobs...)})
	}
	return out
}

// server is a running `erofs-blockd serve`.
type server struct {
	cmd    *exec.Cmd
	sock   string
	uri    string
	stderr *bytes.Buffer
	done   chan error
}

// serve starts the server on a unix socket and waits for its URI line.
func serve(t *testing.T, args ...string) *server {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	s := &server{sock: sock, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	s.cmd = exec.Command(binPath, append([]string{"serve", "--listen", "unix:" + sock}, args...)...)
	s.cmd.Stderr = s.stderr
	stdout, _ := s.cmd.StdoutPipe()
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	go func() { s.done <- s.cmd.Wait() }()
	select {
	case l, ok := <-lines:
		if !ok || !strings.HasPrefix(l, "serving ") {
			t.Fatalf("server did not start: %q\n%s", l, s.stderr)
		}
		s.uri = strings.Fields(l)[1]
	case <-time.After(30 * time.Second):
		t.Fatalf("server did not print its URI\n%s", s.stderr)
	}
	t.Cleanup(func() { s.stop(t) })
	return s
}

// stop sends SIGTERM and checks a clean exit.
func (s *server) stop(t *testing.T) {
	if s.cmd.ProcessState != nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("server exit: %v\n%s", err, s.stderr)
		}
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		t.Errorf("server did not exit within 10 s of SIGINT\n%s", s.stderr)
	}
	s.cmd.ProcessState = &os.ProcessState{}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// composeFile runs `erofs-blockd compose` and returns the output path.
func composeFile(t *testing.T, im image) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "flat.img")
	run(t, binPath, append(append([]string{"compose"}, im.blobArgs()...), "-o", out)...)
	return out
}

// fuseMount exposes the NBD export as a file with nbdfuse and mounts it with
// the kernel's EROFS driver. It returns the mount point.
func fuseMount(t *testing.T, sock string) string {
	t.Helper()
	need(t, "nbdfuse")
	dir := t.TempDir()
	fdir, mnt := filepath.Join(dir, "fuse"), filepath.Join(dir, "mnt")
	os.Mkdir(fdir, 0o755)
	os.Mkdir(mnt, 0o755)
	fuse := exec.Command("nbdfuse", "-r", fdir, "--unix", sock)
	var ferr bytes.Buffer
	fuse.Stderr = &ferr
	if err := fuse.Start(); err != nil {
		t.Fatal(err)
	}
	fdone := make(chan error, 1)
	go func() { fdone <- fuse.Wait() }()
	dev := filepath.Join(fdir, "nbd")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if st, err := os.Stat(dev); err == nil && st.Size() > 0 {
			break
		}
		if time.Now().After(deadline) {
			fuse.Process.Kill()
			t.Fatalf("nbdfuse did not expose %s\n%s", dev, ferr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := exec.Command("mount", "-t", "erofs", "-o", "ro", dev, mnt).CombinedOutput(); err != nil {
		exec.Command("umount", fdir).Run()
		t.Fatalf("mount -t erofs %s: %v\n%s", dev, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", mnt, err, out)
		}
		exec.Command("umount", fdir).Run()
		select {
		case <-fdone:
		case <-time.After(10 * time.Second):
			fuse.Process.Kill()
		}
	})
	return mnt
}

func compareTree(t *testing.T, src, mnt string) {
	t.Helper()
	n := testtree.CompareTrees(t, src, mnt)
	t.Logf("%d entries match (types, modes, owners, sizes, targets, rdevs, sha256, xattrs)", n)
}
