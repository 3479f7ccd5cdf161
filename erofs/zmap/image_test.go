package zmap

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs/decompress"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// testImage is an image file read fully into memory plus the superblock
// fields the tests need.
type testImage struct {
	data      []byte
	bits      uint8
	metaBlk   int64
	incompat  uint32
	algs      uint16
	path      string
	srcRoot   string
	mkfsFlags []string
}

func loadImage(t testing.TB, path string) *testImage {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sb := data[1024:]
	if binary.LittleEndian.Uint32(sb) != 0xE0F5E1E2 {
		t.Fatalf("%s: bad magic", path)
	}
	im := &testImage{
		data:     data,
		bits:     sb[0x0C],
		metaBlk:  int64(binary.LittleEndian.Uint32(sb[0x28:])),
		incompat: binary.LittleEndian.Uint32(sb[0x50:]),
		path:     path,
	}
	if im.incompat&0x2 != 0 {
		im.algs = binary.LittleEndian.Uint16(sb[0x54:])
	} else {
		im.algs = 1
	}
	return im
}

var nidRE = regexp.MustCompile(`NID:\s*(\d+)`)

// nidOf asks dump.erofs for the nid of path.
func nidOf(t testing.TB, img, path string) int64 {
	t.Helper()
	out, err := exec.Command("dump.erofs", "--path="+path, img).CombinedOutput()
	if err != nil {
		t.Fatalf("dump.erofs --path=%s: %v\n%s", path, err, out)
	}
	m := nidRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("dump.erofs --path=%s: no NID in\n%s", path, out)
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

// inodeParams parses the inode at nid and returns its layout and Params.
func (im *testImage) inodeParams(t testing.TB, nid int64) (layout int, p Params) {
	t.Helper()
	iloc := im.metaBlk<<im.bits + nid*32
	b := im.data[iloc:]
	ifmt := binary.LittleEndian.Uint16(b)
	icount := int64(binary.LittleEndian.Uint16(b[2:]))
	var isize, size int64
	if ifmt&1 == 0 {
		isize, size = 32, int64(binary.LittleEndian.Uint32(b[8:]))
	} else {
		isize, size = 64, int64(binary.LittleEndian.Uint64(b[8:]))
	}
	var xsize int64
	if icount > 0 {
		xsize = 12 + 4*(icount-1)
	}
	layout = int(ifmt>>1) & 7
	p = Params{
		Meta:         bytes.NewReader(im.data),
		MetaSize:     int64(len(im.data)),
		HeaderOff:    (iloc + isize + xsize + 7) &^ 7,
		Compact:      layout == 3,
		Size:         size,
		BlkSzBits:    im.bits,
		ZeroPadding:  im.incompat&0x1 != 0,
		BigPcluster:  im.incompat&0x2 != 0,
		Ztailpacking: im.incompat&0x10 != 0,
		Fragments:    im.incompat&0x20 != 0,
		Is48Bit:      im.incompat&0x80 != 0,
		Algs:         im.algs,
	}
	return layout, p
}

// raw returns the bytes an extent's Decode needs.
func (im *testImage) raw(t testing.TB, e Extent) []byte {
	t.Helper()
	switch e.Kind {
	case Blocks, Inline:
		if e.PStart+e.PLen > int64(len(im.data)) {
			t.Fatalf("extent %+v past image end %d", e, len(im.data))
		}
		return im.data[e.PStart : e.PStart+e.PLen]
	case Hole:
		return nil
	}
	t.Fatalf("extent kind %v not expected from mkfs.erofs 1.5", e.Kind)
	return nil
}

type stats struct {
	mu      sync.Mutex
	files   int
	extents map[string]int
}

func (s *stats) add(k string, n int) {
	s.mu.Lock()
	if s.extents == nil {
		s.extents = map[string]int{}
	}
	s.extents[k] += n
	s.mu.Unlock()
}

// checkFile maps one compressed file, decodes it and compares it with src.
func checkFile(t *testing.T, im *testImage, p Params, src []byte, rng *rand.Rand, st *stats) {
	t.Helper()
	if p.Size != int64(len(src)) {
		t.Fatalf("i_size %d, source %d bytes", p.Size, len(src))
	}
	exts, err := Map(p)
	if err != nil {
		t.Fatalf("Map: %v", err)
	}
	got := make([]byte, 0, len(src))
	var next int64
	for _, e := range exts {
		if e.LStart != next || e.LLen <= 0 {
			t.Fatalf("extent %+v does not continue at %d", e, next)
		}
		next = e.LStart + e.LLen
		raw := im.raw(t, e)
		dst := make([]byte, e.LLen)
		if err := Decode(e, raw, dst, 0, p.ZeroPadding, p.BlkSzBits); err != nil {
			t.Fatalf("Decode %+v: %v", e, err)
		}
		got = append(got, dst...)
		st.add(e.Kind.String()+"/"+e.Alg.String(), 1)
		if e.Kind == Blocks && e.PLen > 1<<p.BlkSzBits {
			st.add("big-pcluster", 1)
		}
		// A random partial read of the same extent.
		off := rng.Int63n(e.LLen)
		n := rng.Int63n(e.LLen-off) + 1
		part := make([]byte, n)
		if err := Decode(e, raw, part, off, p.ZeroPadding, p.BlkSzBits); err != nil {
			t.Fatalf("Decode %+v [%d,+%d): %v", e, off, n, err)
		}
		if !bytes.Equal(part, src[e.LStart+off:e.LStart+off+n]) {
			t.Fatalf("partial read %+v [%d,+%d) differs", e, off, n)
		}
	}
	if next != p.Size {
		t.Fatalf("extents end at %d, size %d", next, p.Size)
	}
	if sha256.Sum256(got) != sha256.Sum256(src) {
		t.Fatalf("decoded content differs from source")
	}
	st.mu.Lock()
	st.files++
	st.mu.Unlock()
}

// regularFiles lists the regular files under root, relative with a leading /.
func regularFiles(t testing.TB, root string) []string {
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, "/"+filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func needTools(t testing.TB) {
	for _, tool := range []string{"mkfs.erofs", "dump.erofs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

var mkfsConfigs = [][]string{
	{"-zlz4"},
	{"-zlz4hc"},
	{"-zlz4hc,3", "-C65536"},
	{"-zlz4", "-C16384"},
	{"-zlz4hc,3", "-Eztailpacking"},
	{"-zlz4hc,3", "-C65536", "-Eztailpacking"},
	{"-zlz4", "-Elegacy-compress"},
	{"-zlz4hc,3", "-Eforce-inode-compact"},
	{"-zlz4hc,3", "-Eforce-inode-extended", "-Eztailpacking"},
	{"-zlz4hc,3", "-C131072", "-Eforce-inode-extended", "-Elegacy-compress"},
	{"-zlz4", "-C65536", "-Eztailpacking", "-Eforce-inode-compact"},
}

// buildSource makes the shared source tree: testtree plus a few files that
// stress the compressors (long, mixed compressible/incompressible content).
func buildSource(t testing.TB, dir string) {
	o := testtree.Full(7)
	o.Files = 40
	o.MaxSize = 400 << 10
	testtree.Build(t, dir, o)
	rng := rand.New(rand.NewSource(99))
	mixed := make([]byte, 0, 1<<20)
	for len(mixed) < 1<<20 {
		chunk := make([]byte, rng.Intn(20000)+1)
		if rng.Intn(2) == 0 {
			rng.Read(chunk)
		} else {
			for i := range chunk {
				chunk[i] = "abcab\n"[i%6]
			}
		}
		mixed = append(mixed, chunk...)
	}
	files := map[string][]byte{
		"big/mixed":    mixed,
		"big/zeros":    make([]byte, 1<<20+123),
		"big/text":     bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog 0123456789\n"), 10000),
		"big/tail4097": bytes.Repeat([]byte("x"), 4097),
	}
	if err := os.MkdirAll(filepath.Join(dir, "big"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestImages(t *testing.T) {
	needTools(t)
	src := t.TempDir()
	buildSource(t, src)
	files := regularFiles(t, src)
	var total stats
	configs := mkfsConfigs
	if testing.Short() {
		configs = configs[:2]
	}
	for ci, cfg := range configs {
		name := strings.Join(cfg, " ")
		t.Run(name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "img")
			out, err := testtree.MkfsErr(img, src, cfg...)
			if err != nil {
				if strings.Contains(string(out), "invalid") || strings.Contains(string(out), "unknown") {
					t.Skipf("mkfs.erofs %v unsupported: %s", cfg, out)
				}
				t.Fatalf("mkfs.erofs %v: %v\n%s", cfg, err, out)
			}
			im := loadImage(t, img)
			rng := rand.New(rand.NewSource(int64(ci)))
			var st stats
			for _, f := range files {
				nid := nidOf(t, img, f)
				layout, p := im.inodeParams(t, nid)
				if layout != 1 && layout != 3 {
					continue
				}
				data, err := os.ReadFile(filepath.Join(src, f))
				if err != nil {
					t.Fatal(err)
				}
				adv := binary.LittleEndian.Uint16(im.data[p.HeaderOff+4:])
				st.add(fmt.Sprintf("layout%d/advise0x%02x", layout, adv), 1)
				t.Run(f, func(t *testing.T) { checkFile(t, im, p, data, rng, &st) })
			}
			if st.files == 0 {
				t.Fatalf("no compressed files in the image")
			}
			t.Logf("%s: incompat 0x%x", name, im.incompat)
			t.Logf("%s: %d compressed files compared, extents %v", name, st.files, st.extents)
			total.mu.Lock()
			total.files += st.files
			total.mu.Unlock()
			for k, v := range st.extents {
				total.add(k, v)
			}
		})
	}
	t.Logf("total: %d compressed files compared, extents %v", total.files, total.extents)
}

// TestCorruptIndex flips index bytes of real images and requires Map and
// Decode to fail cleanly or succeed, never panic.
func TestCorruptIndex(t *testing.T) {
	needTools(t)
	if testing.Short() {
		t.Skip("slow: builds an image")
	}
	src := t.TempDir()
	buildSource(t, src)
	img := filepath.Join(t.TempDir(), "img")
	testtree.Mkfs(t, img, src, "-zlz4hc,3", "-C65536", "-Eztailpacking")
	im := loadImage(t, img)
	nid := nidOf(t, img, "/big/mixed")
	_, p := im.inodeParams(t, nid)
	if _, err := Map(p); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	data := im.data
	var errs int
	for i := 0; i < 3000; i++ {
		var undo [][2]int64
		for k := 0; k < 1+rng.Intn(3); k++ {
			off := p.HeaderOff + rng.Int63n(256)
			undo = append(undo, [2]int64{off, int64(data[off])})
			data[off] ^= byte(1 << rng.Intn(8))
		}
		q := p
		q.Meta = bytes.NewReader(data)
		exts, err := Map(q)
		if err != nil {
			var ze *Error
			if !errors.As(err, &ze) {
				t.Fatalf("error %v is not a *zmap.Error", err)
			}
			errs++
		}
		for k, e := range exts {
			if (e.Kind != Blocks && e.Kind != Inline) || (k > 4 && k < len(exts)-2) {
				continue
			}
			if e.PStart+e.PLen > int64(len(data)) {
				continue
			}
			dst := make([]byte, e.LLen)
			_ = Decode(e, data[e.PStart:e.PStart+e.PLen], dst, 0, p.ZeroPadding, p.BlkSzBits)
		}
		for j := len(undo) - 1; j >= 0; j-- {
			data[undo[j][0]] = byte(undo[j][1])
		}
	}
	t.Logf("%d of 3000 mutations rejected", errs)
	if errs == 0 {
		t.Fatal("no mutation was rejected")
	}
	_ = decompress.LZ4
}
