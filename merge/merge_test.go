package merge

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/erofs/build"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/merge/mergetest"
	"github.com/erofs-blockd/erofs-blockd/verify"
)

type openLayers struct {
	layers []Layer
	files  []*os.File
}

func open(t testing.TB, paths []string) *openLayers {
	t.Helper()
	o := &openLayers{}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		o.files = append(o.files, f)
		o.layers = append(o.layers, Layer{Name: filepath.Base(p), R: f, Size: st.Size()})
	}
	t.Cleanup(func() {
		for _, f := range o.files {
			f.Close()
		}
	})
	return o
}

// listIndex lists the merged image read through package erofs with the
// layers as its devices, in testtree.Entry terms.
func listIndex(t *testing.T, index string, o *openLayers) []testtree.Entry {
	t.Helper()
	f, err := os.Open(index)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	var devs []erofs.Dev
	var vdevs []verify.Dev
	for _, l := range o.layers {
		devs = append(devs, erofs.Dev{R: l.R, Size: l.Size})
		vdevs = append(vdevs, verify.Dev{R: l.R, Size: l.Size})
	}
	img, err := erofs.Open(f, st.Size(), erofs.WithDevices(devs...))
	if err != nil {
		t.Fatal(err)
	}
	ents, err := img.List(erofs.ListOptions{Xattrs: true, Content: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(ents)
	var got []testtree.Entry
	json.Unmarshal(b, &got)
	rep, err := verify.Devices(verify.Dev{R: f, Size: st.Size()}, vdevs, verify.Options{Content: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		var sb strings.Builder
		rep.WriteText(&sb)
		t.Fatalf("verify of the index:\n%s", sb.String())
	}
	return got
}

// TestMergeMatchesReference: for every way of building the layers, the
// index read with package erofs equals the reference overlay of the trees.
func TestMergeMatchesReference(t *testing.T) {
	for _, v := range mergetest.Variants {
		t.Run(v.Name, func(t *testing.T) {
			dir := t.TempDir()
			trees, images := mergetest.Layers(t, dir, v)
			ref := mergetest.Reference(t, dir, trees)
			want, err := testtree.Manifest(ref, true)
			if err != nil {
				t.Fatal(err)
			}
			o := open(t, images)
			index := filepath.Join(dir, "index.erofs")
			out, err := os.Create(index)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := Merge(out, o.layers, Options{})
			out.Close()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v %+v", *rep, *rep.Stats)
			got := listIndex(t, index, o)
			if d := testtree.Diff(want, got, 0); len(d) > 0 {
				t.Fatalf("index differs from the reference overlay:\n%s", strings.Join(d, "\n"))
			}
			if v.Addressable && rep.Copied != 0 {
				t.Errorf("%d files copied from -Enoinline_data layers", rep.Copied)
			}
			if !v.Addressable && rep.Copied == 0 {
				t.Errorf("nothing copied from %s layers", v.Name)
			}
			// --no-copy: fine for addressable layers, a clear refusal otherwise.
			_, _, err = Plan(o.layers, Options{NoCopy: true})
			switch {
			case v.Addressable && err != nil:
				t.Errorf("NoCopy: %v", err)
			case !v.Addressable && (err == nil || !errors.Is(err, ErrNotAddressable) || !strings.Contains(err.Error(), "-Enoinline_data") || !strings.Contains(err.Error(), "/")):
				t.Errorf("NoCopy: %v", err)
			}
			if err != nil {
				t.Logf("NoCopy refusal: %v", err)
			}
		})
	}
}

// TestHook: the hook sees every regular file once (hard links included)
// and can add xattrs to it (where fingerprints would go).
func TestHook(t *testing.T) {
	dir := t.TempDir()
	_, images := mergetest.Layers(t, dir, mergetest.Variants[0])
	o := open(t, images)
	seen := map[*File]bool{}
	img, rep, err := Plan(o.layers, Options{Hook: func(p string, f *File) error {
		if seen[f] {
			t.Errorf("%s: hook called twice", p)
		}
		seen[f] = true
		f.Inode.Xattrs = append(f.Inode.Xattrs, build.Xattr{Name: "user.hooked", Value: []byte(p)})
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != rep.Files || rep.Files == 0 || img.Root == nil {
		t.Fatalf("hook saw %d files, report %d", len(seen), rep.Files)
	}
}

func TestChunks(t *testing.T) {
	const bs = 4096
	// One flat extent: one chunk covering the file.
	cb, cs := chunks([]segment{{logical: 0, length: 5*bs + 1, phys: 10 * bs}}, 5*bs+1, 2, bs)
	if cb != 3 || len(cs) != 1 || cs[0].Device != 2 || cs[0].Block != 10 {
		t.Fatalf("flat: %d %+v", cb, cs)
	}
	// Extent, hole at block 4, tail copied at block 6.
	segs := []segment{{logical: 0, length: 4 * bs, phys: 8 * bs}, {logical: 4 * bs, length: 2 * bs, hole: true}, {logical: 6 * bs, length: 10, data: []byte("0123456789")}}
	cb, cs = chunks(segs, 6*bs+10, 1, bs)
	if cb != 1 || len(cs) != 4 || cs[1].Block != 10 || !cs[2].Hole || string(cs[3].Data) != "0123456789" {
		t.Fatalf("mixed: %d %+v", cb, cs)
	}
}
