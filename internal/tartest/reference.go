package tartest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/merge/mergetest"
)

// Extract extracts a tar with GNU tar as root, keeping owners, modes,
// xattrs, devices and mtimes, into dir (created).
func Extract(t testing.TB, tarPath, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", tarPath, "-C", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("tar -xpf %s: %v\n%s", tarPath, err, out)
	}
	if err := dirTimes(tarPath, dir); err != nil {
		t.Fatal(err)
	}
}

// dirTimes sets the mtime of every directory the tar has an entry for to
// the last such entry's. GNU tar restores a directory's times when the
// archive leaves it, so files that come later (bsdtar writes directories
// before their files; a layer may name a directory twice) would leave
// the extraction time instead.
func dirTimes(tarPath, dir string) error {
	f, err := os.Open(tarPath)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	times := map[string]time.Time{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", tarPath, err)
		}
		if h.Typeflag == tar.TypeDir {
			times[strings.TrimPrefix(path.Clean("/"+h.Name), "/")] = h.ModTime
		}
	}
	for p, mt := range times {
		ts := unix.NsecToTimespec(mt.UnixNano())
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, p), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

// Reference extracts each tar (uncompressed, lowest first) with GNU tar
// into dir/x1, dir/x2, ..., applies them in order with OCI whiteouts into
// dir/ref (Apply) and returns dir/ref.
func Reference(t testing.TB, dir string, tars []string) string {
	t.Helper()
	ref := filepath.Join(dir, "ref")
	if err := os.MkdirAll(ref, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, tp := range tars {
		x := filepath.Join(dir, fmt.Sprintf("x%d", i+1))
		Extract(t, tp, x)
		if err := Apply(ref, x); err != nil {
			t.Fatalf("applying %s: %v", tp, err)
		}
	}
	return ref
}

// Apply overlays the extracted layer at src onto dst as a runtime
// unpacking a layer would (merge/mergetest.Apply's rules: entries replace
// what is below, directories merge unless opaque by .wh..wh..opq or
// trusted.overlay.opaque=y, .wh.NAME and 0:0 character devices delete,
// neither whiteouts nor the opaque marker appear in dst, hard links within
// the layer stay links) and, unlike mergetest.Apply, keeps mtimes: a
// directory present in both takes the upper one's metadata.
func Apply(dst, src string) error { return mergetest.ApplyKeepTimes(dst, src) }

func getxattr(p, name string) ([]byte, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// Compress compresses tarPath with the real binary of kind (one of
// Compressions) next to it and returns the new file's path:
//   - "gzip": gzip -n (one member), TAR.gz;
//   - "pigz": pigz -n -b 32 (32 KiB independent blocks, sync flushes), TAR.pigz.gz;
//   - "zstd": zstd (one frame with a content checksum), TAR.zst;
//   - "zstd-multi": the tar cut in 64 KiB pieces, each its own zstd frame,
//     with a skippable frame after the first, TAR.multi.zst.
//
// Each output is decompressed again with the same tool and compared.
func Compress(t testing.TB, tarPath, kind string) string {
	t.Helper()
	var out string
	var decomp []string
	switch kind {
	case "gzip":
		out, decomp = tarPath+".gz", []string{"gzip", "-dc"}
		pipe(t, tarPath, out, "gzip", "-n", "-c")
	case "pigz":
		out, decomp = tarPath+".pigz.gz", []string{"pigz", "-dc"}
		pipe(t, tarPath, out, "pigz", "-n", "-c", "-p", "2", "-b", "32")
	case "zstd":
		out, decomp = tarPath+".zst", []string{"zstd", "-dcq"}
		pipe(t, tarPath, out, "zstd", "-q", "-c", "--check")
	case "zstd-multi":
		out, decomp = tarPath+".multi.zst", []string{"zstd", "-dcq"}
		data, err := os.ReadFile(tarPath)
		if err != nil {
			t.Fatal(err)
		}
		var all bytes.Buffer
		for i := 0; i < len(data); i += 64 << 10 {
			piece := data[i:min(i+64<<10, len(data))]
			cmd := exec.Command("zstd", "-q", "-c", "--check")
			cmd.Stdin = bytes.NewReader(piece)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			frame, err := cmd.Output()
			if err != nil {
				t.Fatalf("zstd: %v %s", err, stderr.String())
			}
			all.Write(frame)
			if i == 0 {
				skip := make([]byte, 8+13)
				binary.LittleEndian.PutUint32(skip, 0x184D2A5E)
				binary.LittleEndian.PutUint32(skip[4:], 13)
				copy(skip[8:], "tartest frame")
				all.Write(skip)
			}
		}
		if err := os.WriteFile(out, all.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("tartest: unknown compression %q", kind)
	}
	got, err := exec.Command(decomp[0], append(decomp[1:], out)...).Output()
	if err != nil {
		t.Fatalf("%v %s: %v", decomp, out, err)
	}
	want, err := os.ReadFile(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("%s does not decompress to %s", out, tarPath)
	}
	return out
}

func pipe(t testing.TB, in, out string, name string, args ...string) {
	t.Helper()
	src, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdin, cmd.Stdout = src, dst
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if e := dst.Close(); err == nil {
		err = e
	}
	if err != nil {
		t.Fatalf("%s %v: %v %s", name, args, err, stderr.String())
	}
}

// DiffID is the sha256 hex of a file (for an uncompressed tar: its diffID).
func DiffID(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// CopyFlip copies src to dst with the byte at off inverted (off < 0
// counts from the end).
func CopyFlip(t testing.TB, src, dst string, off int64) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += int64(len(b))
	}
	b[off] ^= 0xff
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// CopyTruncate copies the first n bytes of src to dst.
func CopyTruncate(t testing.TB, src, dst string, n int64) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b[:n], 0o644); err != nil {
		t.Fatal(err)
	}
}
