package merge

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/merge/mergetest"
)

// TestReferenceSanity: the reference overlay applied what the layers say.
func TestReferenceSanity(t *testing.T) {
	dir := t.TempDir()
	trees, err := mergetest.WriteLayers(filepath.Join(dir, "trees"))
	if err != nil {
		t.Fatal(err)
	}
	ref := mergetest.Reference(t, dir, trees)
	m, err := testtree.Manifest(ref, true)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]testtree.Entry{}
	for _, e := range m {
		have[e.Path] = e
	}
	for _, p := range mergetest.Present {
		if _, ok := have[p]; !ok {
			t.Errorf("reference lacks %s", p)
		}
	}
	for _, p := range mergetest.Absent {
		if _, ok := have[p]; ok {
			t.Errorf("reference has %s", p)
		}
	}
	if e := have["/hl/a"]; e.Nlink != 2 {
		t.Errorf("/hl/a nlink %d, want 2 (b was replaced)", e.Nlink)
	}
	if e := have["/data"]; e.Mode != 0o750 || len(e.Xattrs) != 0 || have["/emptydir"].Mode != 0o755 || have["/opq2"].Xattrs != nil {
		t.Errorf("/data: %+v", e)
	}
	if e := have["/opq2"]; e.Xattrs["trusted.overlay.opaque"] != "" {
		t.Errorf("/opq2 keeps the opaque xattr")
	}
}

// mergeBytes merges in-memory layers; it must never panic.
func mergeBytes(layers [][]byte, opt Options) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("PANIC: %v", r)
		}
	}()
	var ls []Layer
	for i, b := range layers {
		ls = append(ls, Layer{Name: fmt.Sprintf("layer%d.erofs", i+1), R: bytes.NewReader(b), Size: int64(len(b))})
	}
	var out discard
	_, err = Merge(&out, ls, opt)
	return err
}

type discard struct{}

func (discard) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }

// TestCorruptLayers: damaged layers give an error naming the layer, never
// a panic; specific damage gives a specific message.
func TestCorruptLayers(t *testing.T) {
	dir := t.TempDir()
	_, images := mergetest.Layers(t, dir, mergetest.Variants[2]) // plain, lz4hc, lz4
	var good [][]byte
	for _, p := range images {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		good = append(good, b)
	}
	if err := mergeBytes(good, Options{}); err != nil {
		t.Fatal(err)
	}
	clone := func() [][]byte {
		out := make([][]byte, len(good))
		for i, b := range good {
			out[i] = append([]byte(nil), b...)
		}
		return out
	}
	named := []struct {
		name string
		mut  func(ls [][]byte) [][]byte
		want string
	}{
		{"empty file", func(ls [][]byte) [][]byte { ls[1] = nil; return ls }, "layer2.erofs: not a usable EROFS image"},
		{"zeros", func(ls [][]byte) [][]byte { ls[0] = make([]byte, 8192); return ls }, "layer1.erofs: not a usable EROFS image"},
		{"truncated", func(ls [][]byte) [][]byte { ls[0] = ls[0][:len(ls[0])/2]; return ls }, "layer1.erofs"},
		{"bad crc", func(ls [][]byte) [][]byte { ls[2][1024+0x30] ^= 1; return ls }, "layer3.erofs"},
		{"no layers", func(ls [][]byte) [][]byte { return nil }, "no layers"},
	}
	for _, c := range named {
		err := mergeBytes(c.mut(clone()), Options{})
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "PANIC") {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	// Random damage to metadata blocks (the first blocks hold the
	// superblock, inodes and directories): errors are fine, panics not.
	rng := rand.New(rand.NewSource(1))
	fails := 0
	const rounds = 400
	for i := 0; i < rounds; i++ {
		ls := clone()
		k := rng.Intn(len(ls))
		b := ls[k]
		meta := min(len(b), 3*4096)
		for j := 0; j < 1+rng.Intn(8); j++ {
			off := 1024 + 0x80 + rng.Intn(meta-1024-0x80) // keep the sb CRC region mostly intact
			if rng.Intn(4) == 0 {
				off = rng.Intn(meta)
			}
			b[off] ^= byte(1 + rng.Intn(255))
		}
		err := mergeBytes(ls, Options{NoCopy: i%2 == 0})
		if err != nil {
			fails++
			if strings.Contains(err.Error(), "PANIC") {
				t.Fatalf("round %d: %v", i, err)
			}
			if !strings.Contains(err.Error(), "merge:") && !strings.Contains(err.Error(), "erofs build:") {
				t.Errorf("round %d: error without context: %v", i, err)
			}
		}
	}
	t.Logf("%d of %d damaged layer sets refused", fails, rounds)
}
