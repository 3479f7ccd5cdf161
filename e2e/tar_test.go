package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/internal/tartest"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// tarLayers are the layers of one tar test: the uncompressed tars (the
// devices fsck.erofs and the diffIDs see), the files given to merge
// (compressed or not) and the specs given to serve.
type tarLayers struct {
	tars, files, specs []string
}

// makeTarLayers writes tool's four layer tars and compresses layer i with
// comps[i] ("" leaves it plain).
func makeTarLayers(t *testing.T, dir, tool string, comps []string) tarLayers {
	t.Helper()
	var l tarLayers
	l.tars = tartest.Tars(t, dir, tool)
	for i, tp := range l.tars {
		f, spec := tp, tp
		if i < len(comps) && comps[i] != "" {
			f = tartest.Compress(t, tp, comps[i])
			spec = "zstd:" + f
			if comps[i] == "gzip" || comps[i] == "pigz" {
				spec = "gzip:" + f
			}
		}
		l.files = append(l.files, f)
		l.specs = append(l.specs, spec)
	}
	return l
}

func blobArgs(index string, specs []string) []string {
	a := []string{"--blob", index}
	for _, s := range specs {
		a = append(a, "--blob", s)
	}
	return a
}

// mergeTars runs `erofs-blockd merge -o index files...` and checks what it
// reports: one device per layer tagged with the layer's diffID.
func mergeTars(t *testing.T, index string, l tarLayers, extra ...string) string {
	t.Helper()
	out := run(t, binPath, append(append([]string{"merge", "-o", index}, extra...), l.files...)...)
	for i, tp := range l.tars {
		re := regexp.MustCompile(fmt.Sprintf(`device %d: (\S+) .*tag ([0-9a-f]+)`, i+1))
		m := re.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("merge output has no device %d line:\n%s", i+1, out)
		}
		if m[1] != l.files[i] || m[2] != tartest.DiffID(t, tp) {
			t.Errorf("device %d: %s tag %s; want %s tagged with its diffID %s", i+1, m[1], m[2], l.files[i], tartest.DiffID(t, tp))
		}
	}
	return out
}

// refFsck is fsck.erofs from the reference erofs-utils (next to refMkfs).
func refFsck(t *testing.T) string {
	return filepath.Join(filepath.Dir(refMkfs(t)), "fsck.erofs")
}

// tarCases: every tar writer, each with its own mixture of compressions
// (gnu: gzip, zstd, plain; gnu-pax the reverse; pigz and multi-frame zstd
// for the others), the dup layer on top.
var tarCases = []struct {
	tool  string
	comps []string
}{
	{"gnu", []string{"gzip", "zstd", "", ""}},
	{"gnu-pax", []string{"", "zstd", "gzip", "zstd-multi"}},
	{"bsdtar", []string{"pigz", "zstd-multi", "", "gzip"}},
	{"go", []string{"zstd-multi", "", "pigz", "zstd"}},
}

// TestTarMerge: for every tar writer, four layers (plain, gzip, pigz, zstd
// and multi-frame zstd, mixed differently per writer) are merged into an
// index whose devices are tagged with the diffIDs; `verify` over the
// decoded sources is clean; the kernel mount through serve (with
// --verify-digests) equals the reference tree (GNU tar extraction plus
// whiteouts): paths, types, modes, owners, sizes, contents, targets, rdevs,
// xattrs, mtimes to the nanosecond, hard link groups; `ls -R --sha256`
// equals the mount; fsck.erofs 1.9.4 accepts the index over the
// uncompressed tars and extracts the same tree.
func TestTarMerge(t *testing.T) {
	need(t, "nbdfuse", "tar", "bsdtar", "gzip", "pigz", "zstd")
	fsck := refFsck(t)
	for _, c := range tarCases {
		t.Run(c.tool, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			l := makeTarLayers(t, dir, c.tool, c.comps)
			ref := tartest.Reference(t, dir, l.tars)
			index := filepath.Join(dir, "index.erofs")
			out := mergeTars(t, index, l)
			t.Log(out)
			if m := regexp.MustCompile(`(\d+) copied`).FindStringSubmatch(out); m == nil || m[1] == "0" {
				t.Errorf("merge copied nothing, but %s has unaligned sparse segments:\n%s", tartest.DupSparse, out)
			}
			args := blobArgs(index, l.specs)
			if v := run(t, binPath, append([]string{"verify", "--content"}, args...)...); !strings.HasPrefix(v, "clean") {
				t.Fatalf("verify: %s", v)
			}
			s := serve(t, append([]string{"--verify-digests"}, args...)...)
			mnt := fuseMount(t, s.sock)
			n := tartest.Compare(t, ref, mnt, tartest.DiffOptions{})
			t.Logf("%d entries of the mount match the reference (incl. mtimes, hard link groups)", n)

			lo, err := exec.Command(binPath, append([]string{"ls", "-R", "--sha256", "--xattrs", "--json"}, args...)...).Output()
			var ls []testtree.Entry
			if err != nil || json.Unmarshal(lo, &ls) != nil {
				t.Fatalf("ls -R --sha256: %v %s", err, stderrOf(err))
			}
			mm, err := testtree.Manifest(mnt, true)
			if err != nil {
				t.Fatal(err)
			}
			if d := testtree.Diff(mm, ls, 20); len(d) > 0 {
				t.Errorf("ls -R --sha256 differs from the mount:\n%s", strings.Join(d, "\n"))
			}

			fargs := []string{"--xattrs"}
			for _, tp := range l.tars {
				fargs = append(fargs, "--device="+tp)
			}
			run(t, fsck, append(fargs, index)...)
			x := filepath.Join(dir, "fsck-extract")
			run(t, fsck, append(fargs, "--extract="+x, index)...)
			// fsck.erofs 1.9.4 --extract stops a chunk-based file at its
			// last data chunk (its own --blobdev images too): a file that
			// ends in a hole comes out short. Extend those to their size;
			// the contents are still compared.
			for _, p := range sparsePaths() {
				if st, err := os.Stat(filepath.Join(ref, p)); err == nil {
					if xs, err := os.Stat(filepath.Join(x, p)); err == nil && xs.Size() < st.Size() {
						os.Truncate(filepath.Join(x, p), st.Size())
						unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(x, p), []unix.Timespec{unix.NsecToTimespec(xs.ModTime().UnixNano()), unix.NsecToTimespec(xs.ModTime().UnixNano())}, 0)
					}
				}
			}
			tartest.Compare(t, ref, x, tartest.DiffOptions{})
		})
	}
}

func sparsePaths() []string {
	p := []string{tartest.DupSparse}
	for k := range tartest.SparseFiles {
		p = append(p, k)
	}
	return p
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// TestTarNoCopy: --no-copy merges GNU tar layers whose sparse maps are
// 4 KiB-aligned (everything is referenced in place) and refuses the dup
// layer's unaligned sparse file, naming the layer and the file.
func TestTarNoCopy(t *testing.T) {
	need(t, "tar", "gzip", "zstd")
	dir := t.TempDir()
	l := makeTarLayers(t, dir, "gnu", []string{"gzip", "", "zstd", ""})
	index := filepath.Join(dir, "index.erofs")
	first := tarLayers{tars: l.tars[:3], files: l.files[:3], specs: l.specs[:3]}
	out := mergeTars(t, index, first, "--no-copy")
	if !strings.Contains(out, " 0 copied") {
		t.Errorf("--no-copy merge reports copies:\n%s", out)
	}
	ref := tartest.Reference(t, dir, l.tars[:3])
	s := serve(t, blobArgs(index, first.specs)...)
	tartest.Compare(t, ref, fuseMount(t, s.sock), tartest.DiffOptions{})

	bad := filepath.Join(dir, "refused.erofs")
	o, err := exec.Command(binPath, append([]string{"merge", "--no-copy", "-o", bad}, l.files...)...).CombinedOutput()
	if err == nil || !strings.Contains(string(o), l.files[3]) || !strings.Contains(string(o), tartest.DupSparse) {
		t.Errorf("merge --no-copy with an unaligned sparse file: %v %s; want a refusal naming %s and %s", err, o, l.files[3], tartest.DupSparse)
	}
	if _, err := os.Stat(bad); err == nil {
		t.Errorf("a refused merge left %s behind", bad)
	}
}

// TestTarDigests: with --verify-digests, layers given in the wrong order
// are refused by serve with a message that names the file and the order;
// a plain tar changed after merge is refused too.
func TestTarDigests(t *testing.T) {
	need(t, "tar", "gzip", "zstd")
	dir := t.TempDir()
	l := makeTarLayers(t, dir, "gnu-pax", []string{"gzip", "zstd", "", ""})
	index := filepath.Join(dir, "index.erofs")
	mergeTars(t, index, l)
	// verify takes no --verify-digests (it checks the image, not the blobs).
	swapped := []string{l.specs[1], l.specs[0], l.specs[2], l.specs[3]}
	out, code := runTimeout(t, 60*time.Second, binPath, append([]string{"serve", "--listen", "unix:" + filepath.Join(dir, "s.sock"), "--verify-digests"}, blobArgs(index, swapped)...)...)
	if code == 0 || !strings.Contains(out, l.files[1]) || !strings.Contains(out, "order") {
		t.Errorf("serve with layers 1 and 2 swapped: exit %d, output %q; want a refusal naming %s (given as device 1) and the order",
			code, out, l.files[1])
	}
	// A plain layer whose content changed after merge (same size).
	changed := filepath.Join(dir, "changed.tar")
	blocks := tartest.HeaderBlocks(t, l.tars[2])
	tartest.CopyFlip(t, l.tars[2], changed, blocks[len(blocks)/2]+512+3) // data after a header
	specs := []string{l.specs[0], l.specs[1], changed, l.specs[3]}
	out, code = runTimeout(t, 60*time.Second, binPath, append([]string{"serve", "--listen", "unix:" + filepath.Join(dir, "s2.sock"), "--verify-digests"}, blobArgs(index, specs)...)...)
	if code == 0 || !strings.Contains(out, changed) {
		t.Errorf("serve --verify-digests with a changed plain layer: exit %d, output %q; want a refusal naming %s", code, out, changed)
	}
}

// runTimeout runs a command that is expected to end by itself and returns
// its combined output and exit code (-1: killed at the timeout).
func runTimeout(t *testing.T, d time.Duration, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		return b.String(), -1
	}
	return b.String(), cmd.ProcessState.ExitCode()
}

// TestTarCorrupt: damaged layers. At merge time a flipped byte in a tar
// header, in gzip data, in zstd data, and truncated layers fail the merge
// (non-zero exit, the message names the layer, no index left behind).
// After merge, a layer damaged in place (its size and mtime kept, so the
// indexes merge kept for serve still match) gives EIO on reads of the
// damaged data and never wrong bytes; a truncated layer is refused or
// gives EIO.
func TestTarCorrupt(t *testing.T) {
	need(t, "nbdfuse", "tar", "gzip", "zstd")
	dir := t.TempDir()
	l := makeTarLayers(t, dir, "gnu", []string{"gzip", "zstd-multi", "", "zstd"})
	bad := filepath.Join(dir, "bad")
	os.Mkdir(bad, 0o755)
	hdrs := tartest.HeaderBlocks(t, l.tars[2])
	gz, zst := l.files[0], l.files[1]
	gzSize, zstSize := fileSize(t, gz), fileSize(t, zst)
	cases := []struct {
		name string
		make func(dst string)
		slot int
	}{
		{"tar-header.tar", func(d string) { tartest.CopyFlip(t, l.tars[2], d, hdrs[len(hdrs)/2]+20) }, 2}, // in the name field
		{"tar-header-size.tar", func(d string) { tartest.CopyFlip(t, l.tars[2], d, hdrs[1]+124+5) }, 2},   // in the size field
		{"gzip-data.tar.gz", func(d string) { tartest.CopyFlip(t, gz, d, gzSize/2) }, 0},
		{"gzip-trailer.tar.gz", func(d string) { tartest.CopyFlip(t, gz, d, -6) }, 0}, // the CRC32
		{"zstd-data.tar.zst", func(d string) { tartest.CopyFlip(t, zst, d, zstSize/2) }, 1},
		{"truncated.tar", func(d string) { tartest.CopyTruncate(t, l.tars[2], d, hdrs[len(hdrs)/2]+700) }, 2},
		{"truncated.tar.gz", func(d string) { tartest.CopyTruncate(t, gz, d, gzSize*2/3) }, 0},
		{"truncated.tar.zst", func(d string) { tartest.CopyTruncate(t, zst, d, zstSize*2/3) }, 1},
	}
	for _, c := range cases {
		p := filepath.Join(bad, c.name)
		c.make(p)
		files := append([]string{}, l.files...)
		files[c.slot] = p
		idx := filepath.Join(bad, c.name+".erofs")
		out, code := runTimeout(t, 60*time.Second, binPath, append([]string{"merge", "-o", idx}, files...)...)
		if code == 0 || !strings.Contains(out, p) {
			t.Errorf("merge with %s: exit %d, output %q; want an error naming %s", c.name, code, out, p)
		} else {
			t.Logf("merge with %s: %s", c.name, strings.TrimSpace(out))
		}
		if _, err := os.Stat(idx); err == nil {
			t.Errorf("a failed merge left %s behind", idx)
		}
	}

	// After merge: damage in place, keeping size and mtime.
	index := filepath.Join(dir, "index.erofs")
	mergeTars(t, index, l)
	ref := tartest.Reference(t, dir, l.tars)
	for _, c := range []struct {
		name string
		slot int
	}{{"gzip", 0}, {"zstd-multi", 1}, {"zstd", 3}} {
		t.Run(c.name, func(t *testing.T) {
			f := l.files[c.slot]
			orig, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := os.Stat(f)
			t.Cleanup(func() {
				os.WriteFile(f, orig, 0o644)
				os.Chtimes(f, st.ModTime(), st.ModTime())
			})
			damaged := append([]byte{}, orig...)
			for off := len(damaged) / 10; off < len(damaged)*9/10; off += 4096 {
				damaged[off] ^= 0x55
			}
			if err := os.WriteFile(f, damaged, 0o644); err != nil {
				t.Fatal(err)
			}
			os.Chtimes(f, st.ModTime(), st.ModTime())
			readAllChecked(t, index, l.specs, ref)
		})
	}
	t.Run("truncated", func(t *testing.T) {
		short := filepath.Join(dir, "short.tar")
		tartest.CopyTruncate(t, l.tars[2], short, fileSize(t, l.tars[2])/2)
		specs := append([]string{}, l.specs...)
		specs[2] = short
		out, code := runTimeout(t, 60*time.Second, binPath, append([]string{"serve", "--listen", "unix:" + filepath.Join(dir, "t.sock")}, blobArgs(index, specs)...)...)
		if code == 0 || !strings.Contains(out, short) {
			t.Errorf("serve with a truncated layer: exit %d, output %q; want a refusal naming %s", code, out, short)
		}
	})
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// readAllChecked serves the index over specs, or accepts a refusal that
// names a problem, and reads every regular file of the mount: each read
// gives the reference's bytes or fails with EIO, and at least one fails.
func readAllChecked(t *testing.T, index string, specs []string, ref string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command(binPath, append([]string{"serve", "--listen", "unix:" + sock}, blobArgs(index, specs)...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 256)
	n, _ := stdout.Read(line)
	if !bytes.HasPrefix(line[:n], []byte("serving ")) {
		cmd.Wait()
		t.Logf("serve refused the damaged layer: %s", stderr.String())
		if stderr.Len() == 0 {
			t.Error("serve exited without a message")
		}
		return
	}
	s := &server{cmd: cmd, sock: sock, stderr: &stderr, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() { s.stop(t) })
	mnt := fuseMount(t, sock)
	eio, good := 0, 0
	filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(mnt, p)
		got, err := os.ReadFile(p)
		if err != nil {
			if !errors.Is(err, syscall.EIO) {
				t.Errorf("%s: %v, want EIO", rel, err)
			}
			eio++
			return nil
		}
		want, err := os.ReadFile(filepath.Join(ref, rel))
		if err != nil {
			t.Errorf("%s: %v", rel, err)
		} else if !bytes.Equal(got, want) {
			t.Errorf("%s: wrong bytes read from a damaged layer", rel)
		} else {
			good++
		}
		return nil
	})
	t.Logf("%d files read right, %d gave EIO", good, eio)
	if eio == 0 {
		t.Error("no read failed although a layer is damaged")
	}
}
