package gzran

import (
	"archive/tar"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// refMkfs is erofs-utils 1.9.x's mkfs.erofs (EROFS_UTILS_BIN overrides the
// directory; scripts/erofs-utils.sh builds it).
func refMkfs(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("EROFS_UTILS_BIN")
	if dir == "" {
		dir = "/opt/erofs-utils-1.9.4/bin"
	}
	p := filepath.Join(dir, "mkfs.erofs")
	out, err := exec.Command(p, "--version").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("erofs-utils) 1.9.")) {
		t.Fatalf("%s: erofs-utils 1.9.x needed (run scripts/erofs-utils.sh): %v %s", p, err, out)
	}
	return p
}

func testTar(t *testing.T) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	files := []struct {
		name string
		data []byte
	}{
		{"etc/hosts", []byte("127.0.0.1 localhost\n")},
		{"usr/lib/big.bin", testData(9<<20, 7)},
		{"usr/share/doc/README", bytes.Repeat([]byte("documentation line\n"), 20000)},
		{"usr/lib/more.bin", testData(5<<20, 8)},
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(f.data)
	}
	tw.Close()
	return buf.Bytes()
}

// TestMkfsErofsZinfo serves a tar.gz through the zinfo mkfs.erofs --gzinfo
// wrote for it, and compares that zinfo with ours.
func TestMkfsErofsZinfo(t *testing.T) {
	mkfs := refMkfs(t)
	tarData := testTar(t)
	for _, c := range []struct {
		name string
		gz   []byte
	}{
		{"gzip-6", tool(t, tarData, "gzip", "-6", "-c")},
		{"pigz", tool(t, tarData, "pigz", "-c", "-p", "2")},
		// members as (e)stargz concatenates them
		{"multi", append(append(tool(t, tarData[:5<<20], "gzip", "-c"), kGzip(t, tarData[5<<20:11<<20], 5)...), tool(t, tarData[11<<20:], "gzip", "-1", "-c")...)},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			layer := filepath.Join(dir, "layer.tar.gz")
			zpath := filepath.Join(dir, "Z.zinfo")
			if err := os.WriteFile(layer, c.gz, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(mkfs, "--tar=i", "--ungzip", "--gzinfo="+zpath, filepath.Join(dir, "out.erofs"), layer).CombinedOutput()
			if err != nil {
				t.Fatalf("mkfs.erofs: %v\n%s", err, out)
			}
			zb, err := os.ReadFile(zpath)
			if err != nil {
				t.Fatal(err)
			}
			theirs, err := ReadZinfo(bytes.NewReader(zb))
			if err != nil {
				t.Fatal(err)
			}
			if theirs.Span != DefaultSpan || len(theirs.Points) < 3 {
				t.Fatalf("mkfs.erofs zinfo: span %d, %d points", theirs.Span, len(theirs.Points))
			}
			r, err := NewReader(bytes.NewReader(c.gz), int64(len(c.gz)), theirs, Options{})
			if err != nil {
				t.Fatal(err)
			}
			checkReads(t, r, theirs, tarData, 3)

			// Completed (one checked pass), their zinfo gets span CRCs, and
			// a damaged layer or window is caught.
			done, _ := ReadZinfo(bytes.NewReader(zb))
			if err := Complete(bytes.NewReader(c.gz), done); err != nil {
				t.Fatalf("Complete: %v", err)
			}
			if done.Size != int64(len(tarData)) || len(done.SpanCRC) != len(done.Points) {
				t.Fatalf("Complete: size %d, %d CRCs for %d points", done.Size, len(done.SpanCRC), len(done.Points))
			}
			rc, err := NewReader(bytes.NewReader(c.gz), int64(len(c.gz)), done, Options{})
			if err != nil {
				t.Fatal(err)
			}
			checkReads(t, rc, done, tarData, 5)
			bad := append([]byte{}, c.gz...)
			bad[len(bad)/2] ^= 0x40
			if err := Complete(bytes.NewReader(bad), mustZinfo(t, zb)); err == nil {
				t.Fatal("Complete accepted a damaged stream")
			}
			worse := mustZinfo(t, zb)
			wi := 1
			for worse.Points[wi].Out == 5<<20 || worse.Points[wi].Out == 11<<20 { // member starts are exempt
				wi++
			}
			worse.Points[wi].Window[100] ^= 1
			if err := Complete(bytes.NewReader(c.gz), worse); err == nil {
				t.Fatal("Complete accepted a wrong window")
			}
			// A layer damaged after Complete: its spans fail their CRC.
			rb, err := NewReader(bytes.NewReader(bad), int64(len(bad)), done, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := rb.ReadAt(make([]byte, len(tarData)), 0); err == nil {
				t.Fatal("read of a layer damaged after Complete succeeded")
			}

			ours, err := Build(bytes.NewReader(c.gz), DefaultSpan)
			if err != nil {
				t.Fatal(err)
			}
			var zw bytes.Buffer
			if err := ours.WriteZinfo(&zw); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(zw.Bytes()[4:12], zb[4:12]) {
				t.Fatalf("span field %x, mkfs.erofs %x", zw.Bytes()[4:12], zb[4:12])
			}
			// Points at the same output offset must be the same point, with
			// the same window where ours has history (ours is empty at a
			// member start, theirs holds whatever preceded it).
			byOut := map[int64]Point{}
			for _, p := range theirs.Points {
				byOut[p.Out] = p
			}
			same := 0
			for _, p := range ours.Points {
				q, ok := byOut[p.Out]
				if !ok {
					continue
				}
				same++
				if p.In != q.In || p.Bits != q.Bits {
					t.Fatalf("point at out %d: ours in %d bits %d, mkfs.erofs in %d bits %d", p.Out, p.In, p.Bits, q.In, q.Bits)
				}
				if len(q.Window) < len(p.Window) || !bytes.Equal(p.Window, q.Window[len(q.Window)-len(p.Window):]) {
					t.Fatalf("point at out %d: windows differ", p.Out)
				}
			}
			if same == 0 || ours.Points[0].In != theirs.Points[0].In {
				t.Fatalf("no common points (ours %d, mkfs.erofs %d); first in %d vs %d", len(ours.Points), len(theirs.Points), ours.Points[0].In, theirs.Points[0].In)
			}
			t.Logf("ours %d points, mkfs.erofs %d, %d at the same offsets", len(ours.Points), len(theirs.Points), same)
			// our zinfo serves the same bytes and carries the meta
			zx, err := ReadZinfo(&zw)
			if err != nil {
				t.Fatal(err)
			}
			if err := zx.UnmarshalMeta(ours.MarshalMeta()); err != nil {
				t.Fatal(err)
			}
			r2, err := NewReader(bytes.NewReader(c.gz), int64(len(c.gz)), zx, Options{})
			if err != nil {
				t.Fatal(err)
			}
			checkReads(t, r2, zx, tarData, 4)
			// their zinfo does not take our meta unless the points agree
			if len(ours.Points) != len(theirs.Points) || same != len(ours.Points) {
				if err := theirs.UnmarshalMeta(ours.MarshalMeta()); err == nil {
					t.Fatal("meta of our index accepted for mkfs.erofs's different points")
				}
			}
		})
	}
}

func mustZinfo(t *testing.T, zb []byte) *Index {
	t.Helper()
	ix, err := ReadZinfo(bytes.NewReader(zb))
	if err != nil {
		t.Fatal(err)
	}
	return ix
}
