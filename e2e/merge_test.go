package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/merge/mergetest"
)

// TestMergeHostMount: layers built by mkfs.erofs 1.5 (-Enoinline_data,
// defaults with inline tails, lz4/lz4hc) from overlapping trees are merged
// with `erofs-blockd merge`; the index is clean for `verify --content`,
// and the kernel sees the reference overlay of the trees both through
// `serve` + nbdfuse (flatdev) and in multi-device mode (-o device=).
func TestMergeHostMount(t *testing.T) {
	need(t, "nbdfuse", "mkfs.erofs", "losetup")
	for _, v := range mergetest.Variants {
		t.Run(v.Name, func(t *testing.T) {
			dir := t.TempDir()
			trees, images := mergetest.Layers(t, dir, v)
			ref := mergetest.Reference(t, dir, trees)
			index := filepath.Join(dir, "index.erofs")
			args := []string{"merge", "-o", index}
			if v.Addressable {
				// Nothing needs copying; 512 KiB-aligned uniaddrs leave holes.
				args = append(args, "--no-copy", "--align", "512K")
			}
			t.Log(run(t, binPath, append(args, images...)...))
			im := image{name: v.Name, tree: ref, blobs: append([]string{index}, images...)}
			if out := run(t, binPath, append([]string{"verify", "--content"}, im.blobArgs()...)...); !strings.HasPrefix(out, "clean") {
				t.Fatalf("verify: %s", out)
			}
			s := serve(t, im.blobArgs()...)
			compareTree(t, ref, fuseMount(t, s.sock))
			compareTree(t, ref, multiDeviceMount(t, index, images, true))
			compareTree(t, ref, multiDeviceMount(t, index, images, false))
		})
	}
}

// TestMergeRefusals: the CLI's clear refusals (exit 2).
func TestMergeRefusals(t *testing.T) {
	need(t, "mkfs.erofs")
	dir := t.TempDir()
	_, images := mergetest.Layers(t, dir, mergetest.Variants[1]) // inline tails
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, make([]byte, 8192), 0o644)
	idx := filepath.Join(dir, "idx.erofs")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--no-copy", "-o", idx, images[0]}, "-Enoinline_data"},
		{[]string{"-o", idx, images[0], junk}, "junk: not a usable EROFS image"},
		{[]string{"-o", images[0], images[0]}, "layers are never modified"},
		{[]string{images[0]}, "no output"},
		{[]string{"-o", idx}, "no layers"},
		{[]string{"--align", "1000", "-o", idx, images[0]}, "not a multiple"},
	}
	for _, c := range cases {
		out, err := exec.Command(binPath, append([]string{"merge"}, c.args...)...).CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), c.want) {
			t.Errorf("merge %v: exit %v, output %q; want exit 2 and %q", c.args, err, out, c.want)
		}
	}
	if _, err := os.Stat(idx); err == nil {
		t.Errorf("a refused merge left %s behind", idx)
	}
}

// multiDeviceMount mounts index with its layers as extra devices, the
// kernel's non-flat multi-device mode: with files, a file-backed mount
// with device= file paths (kernels >= 6.12 open device= files when the
// primary is file-backed; skipped if refused), otherwise every image
// through a read-only loop device.
func multiDeviceMount(t *testing.T, index string, layers []string, files bool) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	opts := func(devs []string) string {
		var o []string
		for _, d := range devs {
			o = append(o, "device="+d)
		}
		return strings.Join(o, ",")
	}
	if files {
		if err := unix.Mount(index, mnt, "erofs", unix.MS_RDONLY, opts(layers)); err == nil {
			t.Log("multi-device mount with file-backed devices")
			t.Cleanup(func() { umount(t, mnt) })
			return mnt
		} else {
			t.Logf("file-backed multi-device mount: %v; using loop devices", err)
		}
	}
	var loops []string
	t.Cleanup(func() {
		for _, l := range loops {
			if out, err := exec.Command("losetup", "-d", l).CombinedOutput(); err != nil {
				t.Errorf("losetup -d %s: %v %s", l, err, out)
			}
		}
	})
	for _, f := range append([]string{index}, layers...) {
		out, err := exec.Command("losetup", "-f", "--show", "-r", f).CombinedOutput()
		if err != nil {
			t.Fatalf("losetup %s: %v %s", f, err, out)
		}
		loops = append(loops, strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("mount", "-t", "erofs", "-o", "ro,"+opts(loops[1:]), loops[0], mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount -t erofs -o %s %s: %v\n%s", opts(loops[1:]), loops[0], err, out)
	}
	t.Logf("multi-device mount with loop devices %s", strings.Join(loops, " "))
	t.Cleanup(func() { umount(t, mnt) }) // runs before the loop cleanup
	return mnt
}

func umount(t *testing.T, mnt string) {
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Errorf("umount %s: %v %s", mnt, err, out)
	}
}
