package ociimage

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestUmociLayout resolves layouts made by umoci (init, new, unpack,
// repack, config): the diffID of each layer is the sha256 of its
// decompressed blob.
func TestUmociLayout(t *testing.T) {
	need(t, "umoci")
	dir := t.TempDir()
	l, b := filepath.Join(dir, "layout"), filepath.Join(dir, "bundle")
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("umoci", args...).CombinedOutput(); err != nil {
			t.Fatalf("umoci %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("init", "--layout", l)
	run("new", "--image", l+":t")
	run("unpack", "--rootless", "--image", l+":t", b)
	os.WriteFile(filepath.Join(b, "rootfs", "hello"), []byte("hello from umoci\n"), 0o644)
	run("repack", "--image", l+":t", b)
	b2 := filepath.Join(dir, "bundle2")
	run("unpack", "--rootless", "--image", l+":t", b2)
	os.WriteFile(filepath.Join(b2, "rootfs", "second"), []byte("second layer\n"), 0o644)
	run("repack", "--image", l+":t", b2)
	run("config", "--image", l+":t", "--os", "linux", "--architecture", "arm64", "--tag", "arm")
	r := NewResolver(nil)
	img, err := r.Resolve(context.Background(), "oci-layout:"+l+":t", "")
	if err != nil {
		t.Fatal(err)
	}
	if want := normalize(Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}).String(); img.Platform != want {
		t.Errorf("platform %s, want %s", img.Platform, want)
	}
	if len(img.Layers) != 2 {
		t.Fatalf("%d layers", len(img.Layers))
	}
	for i, ly := range img.Layers {
		if ly.Kind != KindTarGzip {
			t.Errorf("layer %d: kind %s (%s)", i, ly.Kind, ly.MediaType)
		}
		f, err := os.Open(ly.Spec)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		io.Copy(h, zr)
		f.Close()
		if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); got != ly.DiffID {
			t.Errorf("layer %d: diffID %s, decompressed blob %s", i, ly.DiffID, got)
		}
	}
	arm, err := r.Resolve(context.Background(), "oci-layout:"+l+":arm", "")
	if err != nil || arm.Platform != "linux/arm64/v8" || len(arm.Layers) != 2 || arm.Layers[1].DiffID != img.Layers[1].DiffID {
		t.Errorf("umoci config --architecture arm64: %v %+v", err, arm)
	}
}
