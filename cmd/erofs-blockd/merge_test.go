package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/merge/mergetest"
)

// TestMergeCommand: `merge` writes an index that `verify` finds clean and
// `ls` lists as the reference overlay of the layer trees.
func TestMergeCommand(t *testing.T) {
	dir := t.TempDir()
	trees, images := mergetest.Layers(t, dir, mergetest.Variants[1])
	ref := mergetest.Reference(t, dir, trees)
	idx := filepath.Join(dir, "index.erofs")
	var out, errb bytes.Buffer
	if code := run(append([]string{"merge", "--align", "64K", "-o", idx}, images...), &out, &errb); code != 0 {
		t.Fatalf("merge exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "3 layers") || !strings.Contains(out.String(), "serve it with") {
		t.Errorf("merge output:\n%s", out.String())
	}
	blobs := []string{"--blob", idx}
	for _, p := range images {
		blobs = append(blobs, "--blob", p)
	}
	out.Reset()
	if code := run(append([]string{"verify", "--content"}, blobs...), &out, &errb); code != 0 {
		t.Fatalf("verify exit %d:\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	if code := run(append([]string{"ls", "-R", "--sha256", "--xattrs", "--json"}, blobs...), &out, &errb); code != 0 {
		t.Fatalf("ls exit %d: %s", code, errb.String())
	}
	var got []testtree.Entry
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want, err := testtree.Manifest(ref, true)
	if err != nil {
		t.Fatal(err)
	}
	if d := testtree.Diff(want, got, 0); len(d) > 0 {
		t.Fatalf("ls of the index differs from the reference overlay:\n%s", strings.Join(d, "\n"))
	}
	errb.Reset()
	if code := run([]string{"merge", "-o", idx}, &out, &errb); code != exitUnusable || !strings.Contains(errb.String(), "no layers") {
		t.Errorf("merge without layers: exit %d %q", code, errb.String())
	}
}
