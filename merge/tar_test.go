package merge

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/verify"
)

// tarEnt is one entry written with archive/tar.
type tarEnt struct {
	name, link string
	typ        byte
	data       []byte
	mode       int64
	uid        int
	pax        map[string]string
	major      int64
	minor      int64
}

func mkTar(t *testing.T, ents []tarEnt) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid,
			Size: int64(len(e.data)), ModTime: time.Unix(1700000000, 123456789), PAXRecords: e.pax,
			Devmajor: e.major, Devminor: e.minor, Format: tar.FormatPAX}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gz(t *testing.T, b []byte) []byte {
	var o bytes.Buffer
	w := gzip.NewWriter(&o)
	w.Write(b)
	w.Close()
	return o.Bytes()
}

func zst(t *testing.T, b []byte) []byte {
	e, _ := zstd.NewWriter(nil)
	return e.EncodeAll(b, nil)
}

func pat(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

func sha(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// TestTarLayers merges a plain, a gzip and a zstd tar layer and reads the
// result through package erofs with the uncompressed tars as devices.
func TestTarLayers(t *testing.T) {
	big := pat(3*4096+100, 1)
	l1 := mkTar(t, []tarEnt{
		{name: "./", typ: tar.TypeDir, mode: 0o755},
		{name: "./etc/", typ: tar.TypeDir, mode: 0o755},
		{name: "./etc/passwd", typ: tar.TypeReg, data: []byte("root:x:0:0\n")},
		{name: "./etc/gone", typ: tar.TypeReg, data: []byte("gone")},
		{name: "./opq/lower", typ: tar.TypeReg, data: []byte("lower")}, // implied parent
		{name: "./big", typ: tar.TypeReg, data: big, uid: 4000000},
		{name: "./hl", typ: tar.TypeLink, link: "./big"},
		{name: "./x", typ: tar.TypeReg, data: []byte("x"),
			pax: map[string]string{"SCHILY.xattr.user.k": "v\x00w"}},
		{name: "./null", typ: tar.TypeChar, major: 1, minor: 3, mode: 0o666},
		{name: "./fifo", typ: tar.TypeFifo},
	})
	l2 := mkTar(t, []tarEnt{
		{name: "etc/.wh.gone", typ: tar.TypeReg},
		{name: "opq/.wh..wh..opq", typ: tar.TypeReg},
		{name: "opq/upper", typ: tar.TypeReg, data: []byte("upper")},
		{name: "dup", typ: tar.TypeReg, data: []byte("first")},
		{name: "dup", typ: tar.TypeReg, data: []byte("second")},
		{name: "link", typ: tar.TypeSymlink, link: "etc/passwd"},
		{name: strings.Repeat("n", 120) + "/" + strings.Repeat("m", 200), typ: tar.TypeReg, data: []byte("long")},
	})
	l3 := mkTar(t, []tarEnt{
		{name: "big", typ: tar.TypeReg, data: []byte("replaced")},
		{name: "etc/passwd", typ: tar.TypeReg, data: []byte("root:x:0:0:new\n")},
		{name: "hl-lower", typ: tar.TypeLink, link: "x"}, // a file of layer 1
		{name: "link600", typ: tar.TypeSymlink, link: "x", mode: 0o600},
	})
	layers := []Layer{
		{Name: "l1.tar", R: bytes.NewReader(l1), Size: int64(len(l1))},
		{Name: "l2.tar.gz", R: bytes.NewReader(gz(t, l2)), Size: int64(len(gz(t, l2)))},
		{Name: "l3.tar.zst", R: bytes.NewReader(zst(t, l3)), Size: int64(len(zst(t, l3)))},
	}
	var out memWriter
	rep, err := Merge(&out, layers, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Stats.BlockSize != 512 {
		t.Fatalf("block size %d", rep.Stats.BlockSize)
	}
	for i, want := range [][]byte{l1, l2, l3} {
		in := rep.Info[i]
		if in.DiffID != "sha256:"+sha(want) || in.TarSize != int64(len(want)) {
			t.Errorf("layer %d: diffID %s size %d, want %s %d", i, in.DiffID, in.TarSize, sha(want), len(want))
		}
		if got := rep.Stats.Slots[i].TagString(); got != sha(want) {
			t.Errorf("slot %d tag %q", i, got)
		}
	}
	if rep.Info[1].Gzip == nil || rep.Info[2].Zstd == nil || rep.Info[0].Kind != KindTar {
		t.Errorf("info %+v", rep.Info)
	}
	var devs []erofs.Dev
	var vdevs []verify.Dev
	for _, b := range [][]byte{l1, l2, l3} {
		devs = append(devs, erofs.Dev{R: bytes.NewReader(b), Size: int64(len(b))})
		vdevs = append(vdevs, verify.Dev{R: bytes.NewReader(b), Size: int64(len(b))})
	}
	img, err := erofs.Open(bytes.NewReader(out.b), int64(len(out.b)), erofs.WithDevices(devs...))
	if err != nil {
		t.Fatal(err)
	}
	ents, err := img.List(erofs.ListOptions{Xattrs: true, Content: true})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]erofs.Entry{}
	for _, e := range ents {
		got[e.Path] = e
	}
	want := map[string]string{
		"/etc/passwd": sha([]byte("root:x:0:0:new\n")),
		"/big":        sha([]byte("replaced")),
		"/hl":         sha(big),
		"/x":          sha([]byte("x")),
		"/opq/upper":  sha([]byte("upper")),
		"/dup":        sha([]byte("second")),
		"/" + strings.Repeat("n", 120) + "/" + strings.Repeat("m", 200): sha([]byte("long")),
	}
	for p, h := range want {
		if got[p].SHA256 != h {
			t.Errorf("%s: sha %q want %q", p, got[p].SHA256, h)
		}
	}
	for _, p := range []string{"/etc/gone", "/opq/lower", "/etc/.wh.gone", "/opq/.wh..wh..opq"} {
		if _, ok := got[p]; ok {
			t.Errorf("%s present", p)
		}
	}
	if e := got["/hl"]; e.UID != 4000000 || e.Nlink != 1 {
		t.Errorf("/hl: uid %d nlink %d (big was replaced in layer 3, so the link is alone)", e.UID, e.Nlink)
	}
	if e, x := got["/hl-lower"], got["/x"]; e.Nid != x.Nid || e.Nlink != 2 || e.SHA256 != sha([]byte("x")) {
		t.Errorf("/hl-lower %+v, /x %+v: want one inode, two links", e, x)
	}
	if e := got["/link600"]; e.Mode&0o777 != 0o777 {
		t.Errorf("/link600 mode %o, want 0777 as extraction gives", e.Mode)
	}
	if e := got["/x"]; e.Xattrs["user.k"] == "" {
		t.Errorf("/x xattrs %v", e.Xattrs)
	}
	if e := got["/null"]; e.Type != "char" || e.Rdev != "1:3" {
		t.Errorf("/null %+v", e)
	}
	if e := got["/fifo"]; e.Type != "fifo" {
		t.Errorf("/fifo %+v", e)
	}
	if e := got["/link"]; e.Target != "etc/passwd" {
		t.Errorf("/link %+v", e)
	}
	if e := got["/opq"]; e.Type != "dir" || e.Mode&0o777 != 0o755 {
		t.Errorf("/opq (implied) %+v", e)
	}
	ino, _ := img.Lookup("hl")
	rs, _ := img.DataRanges(ino)
	if len(rs) == 0 || rs[0].Device != 1 || rs[0].Kind != erofs.KindChunk {
		t.Errorf("/hl not referenced in layer 1: %+v", rs)
	}
	rep2, err := verify.Devices(verify.Dev{R: bytes.NewReader(out.b), Size: int64(len(out.b))}, vdevs, verify.Options{Content: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rep2.OK() {
		var sb strings.Builder
		rep2.WriteText(&sb)
		t.Errorf("verify:\n%s", sb.String())
	}
	// Deterministic: the same layers give the same bytes.
	var again memWriter
	layers[1].R, layers[2].R = bytes.NewReader(gz(t, l2)), bytes.NewReader(zst(t, l3))
	if _, err := Merge(&again, layers, Options{}); err != nil || !bytes.Equal(again.b, out.b) {
		t.Errorf("second merge differs (err %v)", err)
	}
}

// TestTarRefusals: broken layers are refused naming the layer.
func TestTarRefusals(t *testing.T) {
	good := mkTar(t, []tarEnt{{name: "a", typ: tar.TypeReg, data: pat(5000, 2)}})
	flip := func(b []byte, i int) []byte { c := append([]byte{}, b...); c[i] ^= 0x55; return c }
	gzb := gz(t, good)
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"header.tar", flip(good, 10), "checksum"},
		{"data.tar.gz", flip(gzb, len(gzb)/2), "gzip"},
		{"trunc.tar.gz", gzb[:len(gzb)-9], "gzip"},
		{"link.tar", mkTar(t, []tarEnt{{name: "h", typ: tar.TypeLink, link: "missing"}}), "hard link"},
		{"junk", bytes.Repeat([]byte("junk"), 400), "nor a tar"},
	}
	for _, c := range cases {
		_, err := Merge(&memWriter{}, []Layer{{Name: c.name, R: bytes.NewReader(c.data), Size: int64(len(c.data))}}, Options{})
		if err == nil || !strings.Contains(err.Error(), c.name) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v", c.name, err)
		}
	}
	_, err := Merge(&memWriter{}, []Layer{{Name: "d", R: bytes.NewReader(good), Size: int64(len(good)), DiffID: "sha256:" + strings.Repeat("0", 64)}}, Options{})
	if err == nil || !strings.Contains(err.Error(), "diffID") {
		t.Errorf("wrong diffID: %v", err)
	}
	if errors.Is(err, ErrNotAddressable) {
		t.Error("diffID error wraps ErrNotAddressable")
	}
}

func TestDetect(t *testing.T) {
	tr := mkTar(t, []tarEnt{{name: "a", typ: tar.TypeReg, data: []byte("a")}})
	for name, c := range map[string]struct {
		b    []byte
		want Kind
	}{
		"tar": {tr, KindTar}, "gzip": {gz(t, tr), KindTarGzip}, "zstd": {zst(t, tr), KindTarZstd},
	} {
		k, err := Detect(bytes.NewReader(c.b), int64(len(c.b)))
		if err != nil || k != c.want {
			t.Errorf("%s: %v %v", name, k, err)
		}
	}
	if k, err := Detect(bytes.NewReader(nil), 0); err != nil || k != KindEROFS {
		t.Errorf("empty layer: %v %v (left to the EROFS parser's precise refusal)", k, err)
	}
}

type memWriter struct{ b []byte }

func (m *memWriter) WriteAt(p []byte, off int64) (int, error) {
	if n := off + int64(len(p)); n > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, n-int64(len(m.b)))...)
	}
	copy(m.b[off:], p)
	return len(p), nil
}
