package source

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/diskcache"
)

// TestFileLease: with the disk cache as store, a range inside one stored
// chunk is lent as the chunk file's bytes (the ones the blob holds there),
// before and after a restart; ranges across chunks or not stored are not.
func TestFileLease(t *testing.T) {
	data := testBlob(t, 3<<16+777)
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("Range") != "bytes=0-0" {
			served.Add(1)
		}
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	dir := t.TempDir()
	open := func() (*diskcache.Cache, *remote) {
		c, err := diskcache.Open(dir, 1<<30, diskcache.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		b, err := NewOpener(Options{Chunk: 64 << 10, Store: c}).Open(context.Background(), srv.URL+"/b")
		if err != nil {
			t.Fatal(err)
		}
		return c, b.(*remote)
	}
	lent := func(r *remote, off, n int64) bool {
		t.Helper()
		f, foff, release, ok := r.FileLease(off, n)
		if !ok {
			return false
		}
		defer release()
		got := make([]byte, n)
		if _, err := f.ReadAt(got, foff); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data[off:off+n]) {
			t.Fatalf("lease of [%d, +%d): wrong bytes", off, n)
		}
		return true
	}
	c, r := open()
	if lent(r, 0, 4096) {
		t.Fatal("lent a chunk that was never fetched")
	}
	checkEveryByte(t, r, data)
	for _, tc := range []struct {
		off, n int64
		want   bool
	}{
		{0, 64 << 10, true},
		{100, 5000, true},
		{3 << 16, 777, true}, // the short last chunk
		{3<<16 + 700, 77, true},
		{64<<10 - 1, 2, false},   // across chunks
		{3<<16 + 700, 78, false}, // past the end
		{-1, 10, false},
	} {
		if got := lent(r, tc.off, tc.n); got != tc.want {
			t.Fatalf("lease [%d, +%d): %v, want %v", tc.off, tc.n, got, tc.want)
		}
	}
	c.Close()
	cold := served.Load()
	c, r = open()
	defer c.Close()
	for off := int64(0); off < int64(len(data)); off += 64 << 10 {
		if !lent(r, off, min(64<<10, int64(len(data))-off)) {
			t.Fatalf("chunk at %d not lent after a restart", off)
		}
	}
	if served.Load() != cold {
		t.Fatal("a lease fetched")
	}
	if r.Stats().StoreHits == 0 {
		t.Fatal("leases not counted")
	}
}
