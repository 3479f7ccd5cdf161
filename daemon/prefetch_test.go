package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/multiblob"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/nbd"
	"github.com/erofs-blockd/erofs-blockd/source"
)

type nopObs struct{}

func (nopObs) ConnOpen(string)                          {}
func (nopObs) ConnClose(string, error)                  {}
func (nopObs) RequestStart(string, nbd.Command, uint32) {}
func (nopObs) RequestDone(nbd.RequestInfo)              {}

// TestTraceRoundTrip: reads are recorded once per 64 KiB granule, in first
// access order, merged into runs, and read back as written.
func TestTraceRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "trace")
	tr, err := NewTracer(p, nopObs{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []nbd.RequestInfo{
		{Export: "a", Command: nbd.CmdRead, Offset: 1 << 20, Length: 4096},
		{Export: "a", Command: nbd.CmdRead, Offset: 1<<20 + 8192, Length: 4096}, // same granule
		{Export: `we"ird`, Command: nbd.CmdRead, Offset: 0, Length: 200 << 10},
		{Export: "a", Command: nbd.CmdRead, Offset: 1<<20 - 4096, Length: 128 << 10}, // one new granule before, one after
		{Export: "a", Command: nbd.CmdRead, Offset: 5 << 20, Length: 4096, Errno: 5}, // failed: not recorded
		{Export: "a", Command: nbd.CmdCache, Offset: 9 << 20, Length: 4096},          // not a read
	} {
		tr.RequestDone(r)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := readTrace(p)
	if err != nil {
		t.Fatal(err)
	}
	want := []traceEntry{
		{"a", 1 << 20, 64 << 10},
		{`we"ird`, 0, 256 << 10},
		{"a", 1<<20 - 64<<10, 64 << 10},
		{"a", 1<<20 + 64<<10, 64 << 10},
	}
	if len(got) != len(want) {
		t.Fatalf("trace %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("entry %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestPrefetchAllFetchesEverything: --prefetch all brings every byte of a
// remote blob in, at the rate asked for at most.
func TestPrefetchAllFetchesEverything(t *testing.T) {
	data := make([]byte, 3<<20+5)
	rand.Read(data)
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "bytes=0-0" {
			served.Add(1)
		}
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	d, err := New(Config{Source: source.Options{Chunk: 256 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.mu.Lock()
	o, err := d.open(srv.URL + "/b")
	d.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	st := d.PrefetchAll(context.Background(), 1<<20, 64<<20, 2)
	if st.Err != nil || st.Bytes != int64(len(data)) {
		t.Fatalf("prefetch: %+v", st)
	}
	bs := o.f.(interface{ Stats() source.Stats }).Stats()
	if bs.Bytes != uint64(len(data)) {
		t.Fatalf("fetched %d bytes of %d", bs.Bytes, len(data))
	}
}

func TestTraceRuns(t *testing.T) {
	const u = 100
	in := []traceEntry{
		{"a", 250, 10},  // piece 2
		{"a", 0, 150},   // pieces 0, 1
		{"b", 200, 1},   // b piece 2
		{"a", 310, 100}, // pieces 3, 4
		{"a", 260, 5},   // piece 2 again
		{"a", 900, 0},   // empty
		{"a", 1000, 50}, // piece 10
	}
	got := traceRuns(in, u, 2)
	want := []traceEntry{
		{"a", 200, 200}, // 2, 3 (max 2 pieces)
		{"a", 0, 200},   // 0, 1
		{"b", 200, 100},
		{"a", 400, 100}, // 4
		{"a", 1000, 100},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

// TestTraceBlobSpace: trace ranges are cut at the inputs' boundaries and
// counted in each input's own fetch chunks (a blob starting at an offset
// that is not a multiple of the chunk), holes dropped, and turned back
// into device ranges inside each input's extent.
func TestTraceBlobSpace(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.Mkdir(tree, 0o755)
	testtree.Build(t, tree, testtree.Options{Seed: 5, Files: 40, MaxSize: 200 << 10})
	p, b := filepath.Join(dir, "p.erofs"), filepath.Join(dir, "b.blob")
	testtree.Mkfs(t, p, tree, "--blobdev="+b, "--chunksize=4096")
	res, err := multiblob.Split(p, b, filepath.Join(dir, "mb"), multiblob.Options{N: 3, Layout: multiblob.LayoutAligned, Align: 12 << 10})
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ex, err := d.Add(Spec{Name: "x", Blobs: append([]string{res.Primary}, res.Blobs...)})
	if err != nil {
		t.Fatal(err)
	}
	m := ex.Flat.Map()
	const unit = 64 << 10
	byName := map[string]*Export{"x": ex}
	in := []traceEntry{{"x", 0, m.Size()}, {"other", 5, 7}}
	got := fromBlobSpace(traceRuns(toBlobSpace(in, byName), unit, 1), byName)
	var covered int64
	for _, e := range got {
		if e.export == "other" {
			continue
		}
		ext, devOff, _, ok := m.Lookup(e.off)
		if !ok {
			t.Fatalf("range %+v starts in a hole", e)
		}
		start, end := int64(ext.Start)<<m.BlockBits(), int64(ext.End())<<m.BlockBits()
		if devOff%unit != 0 || e.off+e.len > end || e.len > unit || e.off < start {
			t.Fatalf("range %+v: input %d at %d-%d, offset %d in it", e, ext.Dev, start, end, devOff)
		}
		covered += e.len
	}
	var want int64
	for i := 0; i < m.Devices(); i++ {
		want += int64(m.Device(i).Blocks) << m.BlockBits()
	}
	if covered != want {
		t.Fatalf("ranges cover %d bytes, the inputs %d", covered, want)
	}
	if got[len(got)-1] != (traceEntry{"other", 0, unit}) { // in device space, as before
		t.Fatalf("unknown export's range: %+v", got[len(got)-1])
	}
}
