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

// TestInspectBlobdev: the Debian 1.5 all-zero slot is shown as it is on
// disk and with the blocks/uniaddr serve would compute.
func TestInspectBlobdev(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.Mkdir(src, 0o755)
	testtree.Build(t, src, testtree.Options{Seed: 1, Files: 10})
	img, blob := filepath.Join(dir, "p.erofs"), filepath.Join(dir, "d.blob")
	testtree.Mkfs(t, img, src, "--blobdev="+blob, "--chunksize=4096")
	var out, errb bytes.Buffer
	if code := run([]string{"inspect", "--json", "--blob", img, "--blob", blob}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var o inspectOut
	if err := json.Unmarshal(out.Bytes(), &o); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(blob)
	d := o.Devices
	if len(d) != 1 || d[0].Blocks != 0 || d[0].UniAddr != 0 || !d[0].Composed ||
		d[0].CompUniAddr != o.Blocks || d[0].CompBlocks != uint64(st.Size()/4096) || d[0].TagKind != "empty" {
		t.Fatalf("devices: %+v (primary blocks %d)", d, o.Blocks)
	}
	if o.Summary == nil || o.Summary.Files == 0 || !strings.Contains(strings.Join(o.Features, " "), "device_table") {
		t.Fatalf("summary/features: %+v %v", o.Summary, o.Features)
	}
	out.Reset()
	if code := run([]string{"inspect", img}, &out, &errb); code != 0 || !strings.Contains(out.String(), "0 of 1 device files given") {
		t.Fatalf("inspect without the blob: %d\n%s", code, out.String())
	}
}
