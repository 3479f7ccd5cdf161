package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/tartest"
)

// TestTarIndexMkfs: tar index images made by mkfs.erofs 1.9.4 --tar=i over
// one GNU tar (pax, xattrs; without --sparse: mkfs.erofs 1.9.4 reads
// neither GNU sparse format) are served over the tar: plain (--blob img
// --blob layer.tar), --ungzip without --gzinfo (gzip:layer.tar.gz, the
// index built by serve) and with --gzinfo (gzip,zinfo=Z:layer.tar.gz).
// Each kernel mount equals the extracted tar, mtimes and hard link groups
// included, and `erofs-blockd merge` of the same tar mounts the same tree.
func TestTarIndexMkfs(t *testing.T) {
	need(t, "nbdfuse", "tar", "gzip")
	mkfs := refMkfs(t)
	dir := t.TempDir()
	tree := tartest.WriteTrees(t, filepath.Join(dir, "trees"))[0]
	layer := filepath.Join(dir, "layer.tar")
	run(t, "tar", "--format=pax", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--sort=name", "-C", tree, "-cf", layer, ".")
	ref := filepath.Join(dir, "extracted")
	tartest.Extract(t, layer, ref)
	// One compressed copy per case, so no case sees an index another kept.
	gz := func(name string) string {
		p := filepath.Join(dir, name+".tar")
		data, err := os.ReadFile(layer)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(p, data, 0o644)
		return tartest.Compress(t, p, "gzip")
	}
	mk := func(img string, args ...string) {
		t.Helper()
		a := append([]string{"--quiet", "--tar=i"}, args...)
		if out, err := exec.Command(mkfs, a...).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.erofs %s: %v\n%s", strings.Join(a, " "), err, out)
		}
	}
	ungz, zinfoGz := gz("ungzip"), gz("gzinfo")
	zinfo := filepath.Join(dir, "mkfs.zinfo")
	cases := []struct {
		name  string
		mkfs  []string // after --tar=i, then the image, then the input
		input string
		blob  string
	}{
		{"plain", nil, layer, layer},
		{"ungzip", []string{"--ungzip"}, ungz, "gzip:" + ungz},
		{"gzinfo", []string{"--ungzip", "--gzinfo=" + zinfo}, zinfoGz, "gzip,zinfo=" + zinfo + ":" + zinfoGz},
	}
	var first []tartest.Entry // the plain index's mount
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := filepath.Join(dir, c.name+".erofs")
			mk(img, append(c.mkfs, img, c.input)...)
			if c.name == "gzinfo" {
				if st, err := os.Stat(zinfo); err != nil || st.Size() == 0 {
					t.Fatalf("mkfs.erofs wrote no zinfo: %v", err)
				}
			}
			s := serve(t, "--blob", img, "--blob", c.blob)
			mnt := fuseMount(t, s.sock)
			n := tartest.Compare(t, ref, mnt, tartest.DiffOptions{})
			t.Logf("%d entries match the extracted tar", n)
			if first == nil {
				m, err := tartest.Manifest(mnt)
				if err != nil {
					t.Fatal(err)
				}
				first = m
			}
		})
	}
	if first == nil {
		t.Fatal("no mkfs.erofs index mounted")
	}
	t.Run("merge", func(t *testing.T) {
		index := filepath.Join(dir, "merged.erofs")
		mergeTars(t, index, tarLayers{tars: []string{layer}, files: []string{layer}, specs: []string{layer}})
		s := serve(t, "--blob", index, "--blob", layer)
		mnt := fuseMount(t, s.sock)
		got, err := tartest.Manifest(mnt)
		if err != nil {
			t.Fatal(err)
		}
		if d := tartest.Diff(first, got, tartest.DiffOptions{}); len(d) > 0 {
			t.Errorf("the merged index's mount differs from mkfs.erofs --tar=i's:\n%s", strings.Join(d, "\n"))
		}
	})
}
