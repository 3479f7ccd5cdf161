package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// TestLsMatchesSourceTree: `erofs-blockd ls -R --sha256 --xattrs --json`
// lists exactly the source tree (paths, types, modes, owners, sizes, symlink
// targets, rdevs, contents, nlinks, xattrs) for every mkfs.erofs 1.5 variant.
func TestLsMatchesSourceTree(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.Mkdir(src, 0o755)
	o := testtree.Full(42)
	o.BigDir = 3000
	testtree.Build(t, src, o)
	want, err := testtree.Manifest(src, true)
	if err != nil {
		t.Fatal(err)
	}
	variants := []struct {
		name string
		args []string
		blob bool
	}{
		{"plain", nil, false},
		{"lz4", []string{"-zlz4"}, false},
		{"lz4hc", []string{"-zlz4hc"}, false},
		{"noinline", []string{"-Enoinline_data"}, false},
		{"chunk64k", []string{"--chunksize=65536"}, false},
		{"blobdev", []string{"--chunksize=4096"}, true},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			img := filepath.Join(dir, v.name+".erofs")
			args := v.args
			lsArgs := []string{"ls", "-R", "--sha256", "--xattrs", "--json"}
			if v.blob {
				blob := filepath.Join(dir, v.name+".blob")
				args = append(args, "--blobdev="+blob)
				lsArgs = append(lsArgs, "--blob", img, "--blob", blob)
			} else {
				lsArgs = append(lsArgs, img)
			}
			testtree.Mkfs(t, img, src, args...)
			var out, errb bytes.Buffer
			if code := run(lsArgs, &out, &errb); code != 0 {
				t.Fatalf("ls exit %d: %s", code, errb.String())
			}
			var got []testtree.Entry
			if err := json.Unmarshal(out.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if d := testtree.Diff(want, got, 0); len(d) > 0 {
				t.Fatalf("listing differs from source:\n%s", strings.Join(d, "\n"))
			}
		})
	}
	// Text output: one line per path with the digest.
	var out, errb bytes.Buffer
	if code := run([]string{"ls", "-R", "--sha256", filepath.Join(dir, "plain.erofs"), "a/b/c"}, &out, &errb); code != 0 {
		t.Fatalf("ls text: %d %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "/a/b/c/exec.sh") || strings.Contains(out.String(), "/docs") {
		t.Fatalf("ls of a subtree:\n%s", out.String())
	}
}
