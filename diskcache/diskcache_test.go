package diskcache

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var quiet = slog.New(slog.DiscardHandler)

func open(t testing.TB, dir string, maxBytes int64) *Cache {
	t.Helper()
	c, err := Open(dir, maxBytes, Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// content is the deterministic content of chunk idx of key.
func content(key string, idx int64, n int) []byte {
	b := make([]byte, n)
	seed := hashKey(key)
	r := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:]), uint64(idx)))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// expect checks that chunk idx of key is a hit with want, or (want nil) a miss.
func expect(t *testing.T, c *Cache, key string, idx int64, want []byte) {
	t.Helper()
	p := make([]byte, 1<<20)
	n, ok := c.Get(key, idx, p)
	switch {
	case want == nil && ok:
		t.Fatalf("%s/%d: hit, want a miss", key, idx)
	case want != nil && !ok:
		t.Fatalf("%s/%d: miss, want a hit", key, idx)
	case want != nil && !bytes.Equal(p[:n], want):
		t.Fatalf("%s/%d: wrong bytes (%d, want %d)", key, idx, n, len(want))
	}
}

// expectMissOrRight: whatever happened, never wrong bytes.
func expectMissOrRight(t *testing.T, c *Cache, key string, idx int64, want []byte) bool {
	t.Helper()
	p := make([]byte, 1<<20)
	n, ok := c.Get(key, idx, p)
	if ok && !bytes.Equal(p[:n], want) {
		t.Fatalf("%s/%d: WRONG BYTES (%d, want %d)", key, idx, n, len(want))
	}
	return ok
}

// diskBytes sums the chunk records and tmp files on disk.
func diskBytes(t testing.TB, dir string) (chunks, tmp int64, nchunks int) {
	t.Helper()
	filepath.WalkDir(filepath.Join(dir, "chunks"), func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				chunks += info.Size()
				nchunks++
			}
		}
		return nil
	})
	ents, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	for _, d := range ents {
		if info, err := d.Info(); err == nil {
			tmp += info.Size()
		}
	}
	return
}

func TestRoundTrip(t *testing.T) {
	c := open(t, t.TempDir(), 1<<20)
	const key = "oci:sha256:0123"
	sizes := []int{4096, 1, 0, 65536, 1000}
	for i, n := range sizes {
		c.Put(key, int64(i), content(key, int64(i), n))
	}
	for i, n := range sizes {
		expect(t, c, key, int64(i), content(key, int64(i), n))
	}
	expect(t, c, key, 99, nil)
	expect(t, c, "http:other", 0, nil)
	expect(t, c, key, -1, nil)
	// p too small for the chunk: a miss, and the chunk stays.
	if _, ok := c.Get(key, 3, make([]byte, 100)); ok {
		t.Fatal("hit into a too-small buffer")
	}
	expect(t, c, key, 3, content(key, 3, 65536))
	// A second Put (same content) is harmless.
	c.Put(key, 0, content(key, 0, 4096))
	expect(t, c, key, 0, content(key, 0, 4096))
	s := c.Stats()
	var want int64
	for _, n := range sizes {
		want += recordSize(len(key), n)
	}
	if s.Bytes != want || s.Entries != int64(len(sizes)) || s.CheckFailures != 0 || s.WriteErrors != 0 {
		t.Fatalf("stats %+v, want %d bytes in %d entries", s, want, len(sizes))
	}
	if s.Hits != uint64(len(sizes)+2) || s.Misses != 4 {
		t.Fatalf("hits %d misses %d", s.Hits, s.Misses)
	}
	if chunks, tmp, n := diskBytes(t, c.dir); chunks != want || tmp != 0 || n != len(sizes) {
		t.Fatalf("on disk: %d bytes in %d files, %d in tmp", chunks, n, tmp)
	}
	// Long keys are refused, not truncated.
	long := strings.Repeat("k", MaxKey+1)
	c.Put(long, 0, []byte("x"))
	expect(t, c, long, 0, nil)
}

func TestRestart(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, 1<<20)
	keys := []string{"oci:sha256:aa", "http:bb", "\x00weird/../key\n"}
	for _, k := range keys {
		for i := range int64(10) {
			c.Put(k, i, content(k, i, 3000+int(i)))
		}
	}
	c.PutMeta("http:bb", []byte("size=123 etag=\"x\""))
	before := c.Stats()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	expect(t, c, keys[0], 0, nil) // closed: a miss

	c = open(t, dir, 1<<20)
	if s := c.Stats(); s.Bytes != before.Bytes || s.Entries != before.Entries {
		t.Fatalf("after restart %+v, before %+v", s, before)
	}
	for _, k := range keys {
		for i := range int64(10) {
			expect(t, c, k, i, content(k, i, 3000+int(i)))
		}
	}
	if v, ok := c.GetMeta("http:bb"); !ok || string(v) != "size=123 etag=\"x\"" {
		t.Fatalf("meta after restart: %q %v", v, ok)
	}
}

// corruptions damage the record of chunk (key, 1) at path; other is the
// record of (key, 2) and stranger that of ("other", 1).
var corruptions = []struct {
	name string
	fn   func(t *testing.T, path, other, stranger string)
}{
	{"flip data byte", func(t *testing.T, p, _, _ string) { flip(t, p, -10) }},
	{"flip crc", func(t *testing.T, p, _, _ string) { flip(t, p, -1) }},
	{"flip magic", func(t *testing.T, p, _, _ string) { flip(t, p, 0) }},
	{"flip version", func(t *testing.T, p, _, _ string) { flip(t, p, 4) }},
	{"flip key length", func(t *testing.T, p, _, _ string) { flip(t, p, 6) }},
	{"flip index", func(t *testing.T, p, _, _ string) { flip(t, p, 8) }},
	{"flip data length", func(t *testing.T, p, _, _ string) { flip(t, p, 16) }},
	{"flip key byte", func(t *testing.T, p, _, _ string) { flip(t, p, hdrFixed+1) }},
	{"truncated by one", func(t *testing.T, p, _, _ string) { truncate(t, p, -1) }},
	{"truncated to half", func(t *testing.T, p, _, _ string) { truncate(t, p, -2000) }},
	{"truncated to header", func(t *testing.T, p, _, _ string) { truncate(t, p, hdrFixed+10) }},
	{"zero length", func(t *testing.T, p, _, _ string) { truncate(t, p, 0) }},
	{"garbage appended", func(t *testing.T, p, _, _ string) {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte("garbage"))
		f.Close()
	}},
	{"all zeros", func(t *testing.T, p, _, _ string) {
		info, _ := os.Stat(p)
		os.WriteFile(p, make([]byte, info.Size()), 0o600)
	}},
	{"other chunk's file renamed over it", func(t *testing.T, p, other, _ string) {
		if err := os.Rename(other, p); err != nil {
			t.Fatal(err)
		}
	}},
	{"other blob's file copied over it", func(t *testing.T, p, _, stranger string) {
		b, err := os.ReadFile(stranger)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(p, b, 0o600)
	}},
	{"deleted", func(t *testing.T, p, _, _ string) { os.Remove(p) }},
	{"directory deleted", func(t *testing.T, p, _, _ string) { os.RemoveAll(filepath.Dir(p)) }},
}

func flip(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += int64(len(b))
	}
	b[off] ^= 0x40
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func truncate(t *testing.T, path string, size int64) {
	t.Helper()
	if size < 0 {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		size += info.Size()
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

func TestCorruption(t *testing.T) {
	const key, stranger = "oci:sha256:feed", "other"
	// trusted-*: every record was checked (and trusted, state.go) before
	// the damage, which must be noticed by the file's changed stamp.
	for _, mode := range []string{"live", "restart", "trusted-live", "trusted-restart"} {
		for _, tc := range corruptions {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				dir := t.TempDir()
				c := open(t, dir, 1<<20)
				for i := range int64(4) {
					c.Put(key, i, content(key, i, 4000))
				}
				// The same length as (key, 1): only the header tells them apart.
				c.Put(stranger, 1, content(stranger, 1, 4000+len(key)-len(stranger)))
				path := c.chunkPath(ckey{hashKey(key), 1})
				other := c.chunkPath(ckey{hashKey(key), 2})
				trusted := strings.HasPrefix(mode, "trusted-")
				if trusted {
					trust(t, c, key, 4, 4000)
					expect(t, c, stranger, 1, content(stranger, 1, 4000+len(key)-len(stranger)))
				}
				restart := strings.HasSuffix(mode, "restart")
				if restart {
					c.Close()
				}
				tc.fn(t, path, other, c.chunkPath(ckey{hashKey(stranger), 1}))
				if restart {
					c = open(t, dir, 1<<20)
				}
				before := c.Stats().CheckFailures
				if expectMissOrRight(t, c, key, 1, content(key, 1, 4000)) {
					t.Fatal("a damaged chunk was a hit")
				}
				// Detectable damage is counted (zero-length files at Open,
				// the rest at Get); a file that vanished while closed is
				// simply not in the index.
				s := c.Stats()
				if s.CheckFailures == 0 && !(restart && strings.HasPrefix(tc.name, "deleted") || strings.HasPrefix(tc.name, "directory")) {
					t.Fatalf("damage not counted: %+v", s)
				}
				if !restart && s.CheckFailures != before+1 {
					t.Fatalf("CheckFailures %d -> %d", before, s.CheckFailures)
				}
				// The damaged file is gone, the index agrees, a refetch stores it again.
				if _, err := os.Stat(path); err == nil && !strings.HasPrefix(tc.name, "other chunk") {
					t.Fatal("damaged file kept")
				}
				expect(t, c, key, 1, nil)
				c.Put(key, 1, content(key, 1, 4000))
				expect(t, c, key, 1, content(key, 1, 4000))
				// The neighbours are right or misses (renamed away / directory gone).
				for _, i := range []int64{0, 2, 3} {
					expectMissOrRight(t, c, key, i, content(key, i, 4000))
				}
				expectMissOrRight(t, c, stranger, 1, content(stranger, 1, 4000+len(key)-len(stranger)))
				if chunks, _, _ := diskBytes(t, dir); chunks != c.Stats().Bytes {
					t.Fatalf("index says %d bytes, disk holds %d", c.Stats().Bytes, chunks)
				}
			})
		}
	}
}

// TestCrashLeftovers: what a kill -9 (or a power cut without fsync) leaves
// behind is removed at Open or is a miss.
func TestCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, 1<<20)
	const key = "http:abc"
	for i := range int64(3) {
		c.Put(key, i, content(key, i, 5000))
	}
	c.Close()

	full := encodeRecord(record{kind: kindChunk, key: key, idx: 7, data: content(key, 7, 5000)})
	h := hashKey(key)
	sub := filepath.Join(dir, "chunks", fmt.Sprintf("%02x", h[0]))
	write := func(path string, b []byte) {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A partial tmp file, garbage tmp files, a tmp directory.
	write(filepath.Join(dir, "tmp", "123-1"), full[:len(full)/2])
	write(filepath.Join(dir, "tmp", "junk"), []byte("junk"))
	os.MkdirAll(filepath.Join(dir, "tmp", "d", "e"), 0o700)
	// A partial record under a final name (the rename reached the disk,
	// the data did not), and an empty one.
	write(filepath.Join(sub, chunkName(ckey{h, 7})), full[:len(full)-100])
	write(filepath.Join(sub, chunkName(ckey{h, 8})), nil)
	// Names that are not ours, and a record in the wrong directory.
	write(filepath.Join(sub, "x.tmp"), full)
	write(filepath.Join(sub, chunkName(ckey{h, 1})+".tmp"), full)
	write(filepath.Join(sub, hex32(h)+"-007"), full)
	wrong := fmt.Sprintf("%02x", h[0]^1)
	os.MkdirAll(filepath.Join(dir, "chunks", wrong), 0o700)
	write(filepath.Join(dir, "chunks", wrong, chunkName(ckey{h, 9})), full)

	c = open(t, dir, 1<<20)
	if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) != 0 {
		t.Fatalf("tmp not emptied: %v", ents)
	}
	for _, name := range []string{"x.tmp", chunkName(ckey{h, 1}) + ".tmp", hex32(h) + "-007", chunkName(ckey{h, 8})} {
		if _, err := os.Stat(filepath.Join(sub, name)); err == nil {
			t.Fatalf("%s kept", name)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "chunks", wrong, chunkName(ckey{h, 9}))); err == nil {
		t.Fatal("misplaced file kept")
	}
	if s := c.Stats(); s.CheckFailures != 1 { // the empty one
		t.Fatalf("CheckFailures %d, want 1", s.CheckFailures)
	}
	expect(t, c, key, 7, nil) // partial: a miss, counted
	if s := c.Stats(); s.CheckFailures != 2 {
		t.Fatalf("CheckFailures %d, want 2", s.CheckFailures)
	}
	expect(t, c, key, 8, nil)
	expect(t, c, key, 9, nil)
	for i := range int64(3) {
		expect(t, c, key, i, content(key, i, 5000))
	}
	if chunks, _, n := diskBytes(t, dir); chunks != c.Stats().Bytes || n != 3 {
		t.Fatalf("disk %d bytes in %d files, index %+v", chunks, n, c.Stats())
	}
}

func hex32(h hkey) string { return chunkName(ckey{h, 0})[:32] }

// TestIndexLost: the index is the directory, so losing "it" means losing
// directories or the whole tree: misses, never wrong bytes, and the cache
// keeps working.
func TestIndexLost(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, 1<<20)
	for i := range int64(50) {
		c.Put("k", i, content("k", i, 1000))
	}
	os.RemoveAll(filepath.Join(dir, "chunks"))
	for i := range int64(50) {
		expect(t, c, "k", i, nil)
	}
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 || s.CheckFailures != 50 {
		t.Fatalf("%+v", s)
	}
	c.Put("k", 1, content("k", 1, 1000)) // recreates its directory
	expect(t, c, "k", 1, content("k", 1, 1000))
	c.Close()
	os.RemoveAll(filepath.Join(dir, "chunks"))
	os.RemoveAll(filepath.Join(dir, "tmp"))
	os.RemoveAll(filepath.Join(dir, "meta"))
	c = open(t, dir, 1<<20)
	expect(t, c, "k", 1, nil)
	c.Put("k", 1, content("k", 1, 1000))
	expect(t, c, "k", 1, content("k", 1, 1000))
}

func TestMeta(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, 1<<20)
	if _, ok := c.GetMeta("a"); ok {
		t.Fatal("hit on empty cache")
	}
	c.PutMeta("a", []byte("one"))
	c.PutMeta("b", nil)
	c.PutMeta("a", []byte("two")) // replaces
	if v, ok := c.GetMeta("a"); !ok || string(v) != "two" {
		t.Fatalf("%q %v", v, ok)
	}
	if v, ok := c.GetMeta("b"); !ok || len(v) != 0 {
		t.Fatalf("%q %v", v, ok)
	}
	c.PutMeta("big", make([]byte, MaxMeta+1))
	if _, ok := c.GetMeta("big"); ok {
		t.Fatal("oversized meta stored")
	}
	// Metadata does not count against the chunk budget.
	if s := c.Stats(); s.Bytes != 0 {
		t.Fatalf("%+v", s)
	}
	pa, pb := c.metaPath(hashKey("a")), c.metaPath(hashKey("b"))
	damage := []func(){
		func() { flip(t, pa, -1) },
		func() { flip(t, pa, hdrFixed) },
		func() { truncate(t, pa, -1) },
		func() { truncate(t, pa, 0) },
		func() { b, _ := os.ReadFile(pb); os.WriteFile(pa, b, 0o600) }, // b's record under a's name
		func() { // a chunk record under a's name
			os.WriteFile(pa, encodeRecord(record{kind: kindChunk, key: "a", data: []byte("two")}), 0o600)
		},
	}
	for i, d := range damage {
		c.PutMeta("a", []byte("two"))
		d()
		before := c.Stats().CheckFailures
		if v, ok := c.GetMeta("a"); ok {
			t.Fatalf("damage %d: hit %q", i, v)
		}
		if c.Stats().CheckFailures != before+1 {
			t.Fatalf("damage %d not counted", i)
		}
		if _, err := os.Stat(pa); err == nil {
			t.Fatalf("damage %d: file kept", i)
		}
	}
}

// TestBound: concurrent Puts of far more than the cache holds; the bytes
// of records on disk (plus tmp files of writes in flight) never exceed the
// bound, checked while holding the cache's lock, under which every rename
// and unlink happens.
func TestBound(t *testing.T) {
	dir := t.TempDir()
	const chunk, maxBytes, writers = 8 << 10, 40 << 10 * 10, 16
	c := open(t, dir, maxBytes)
	ctx, cancel := context.WithCancel(context.Background())
	var checks int
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		for ctx.Err() == nil {
			c.mu.Lock()
			chunks, tmp, _ := diskBytes(t, dir)
			acct := c.bytes
			c.mu.Unlock()
			if acct > maxBytes || chunks+tmp > maxBytes {
				t.Errorf("over the bound: accounted %d, disk %d + tmp %d > %d", acct, chunks, tmp, maxBytes)
				return
			}
			checks++
		}
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			p := make([]byte, chunk)
			for range 150 {
				key := fmt.Sprintf("blob%d", r.IntN(8))
				idx := r.Int64N(64)
				n := chunk - r.IntN(100)
				if got, ok := c.Get(key, idx, p); !ok {
					c.Put(key, idx, content(key, idx, n))
				} else if !bytes.Equal(p[:got], content(key, idx, got)) {
					t.Errorf("%s/%d: wrong bytes", key, idx)
					return
				}
				if r.IntN(50) == 0 {
					c.Drop(key)
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	<-checked
	s := c.Stats()
	chunks, tmp, n := diskBytes(t, dir)
	if s.Bytes > maxBytes || chunks != s.Bytes || tmp != 0 || int64(n) != s.Entries {
		t.Fatalf("stats %+v; disk %d bytes in %d files, tmp %d", s, chunks, n, tmp)
	}
	if s.Evictions == 0 || s.CheckFailures != 0 || s.WriteErrors != 0 {
		t.Fatalf("stats %+v", s)
	}
	// Whatever is present is right.
	for b := range 8 {
		key := fmt.Sprintf("blob%d", b)
		for i := range int64(64) {
			p := make([]byte, chunk)
			if n, ok := c.Get(key, i, p); ok && !bytes.Equal(p[:n], content(key, i, n)) {
				t.Fatalf("%s/%d: wrong bytes", key, i)
			}
		}
	}
	t.Logf("%d bound checks, %+v", checks, s)
}

func TestPutSameChunkConcurrently(t *testing.T) {
	c := open(t, t.TempDir(), 1<<20)
	want := content("k", 5, 30000)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Put("k", 5, want)
			expectMissOrRight(t, c, "k", 5, want)
		}()
	}
	wg.Wait()
	expect(t, c, "k", 5, want)
	if s := c.Stats(); s.Entries != 1 || s.Bytes != recordSize(1, len(want)) {
		t.Fatalf("%+v", s)
	}
	if _, tmp, n := diskBytes(t, c.dir); n != 1 || tmp != 0 {
		t.Fatalf("%d files, %d tmp bytes", n, tmp)
	}
}

// TestScanResistance: a hot set that is read again and again survives a
// one-time sequential scan of a blob many times the cache's size.
func TestScanResistance(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(fmt.Sprint("restart=", restart), func(t *testing.T) {
			dir := t.TempDir()
			const chunk = 1024
			rec := recordSize(len("hot"), chunk)
			c := open(t, dir, 100*rec)
			p := make([]byte, chunk)
			for i := range int64(30) {
				c.Put("hot", i, content("hot", i, chunk))
			}
			for range 2 {
				for i := range int64(30) {
					expect(t, c, "hot", i, content("hot", i, chunk))
				}
			}
			if restart {
				c.Close()
				c = open(t, dir, 100*rec)
				// After a restart nothing is known to be hot: the hot set
				// earns its place again by being read.
				for i := range int64(30) {
					expect(t, c, "hot", i, content("hot", i, chunk))
				}
			}
			// A reader streams a big blob once: miss, fetch, Put.
			for i := range int64(600) { // 6 times the cache, 60 times its small queue
				if _, ok := c.Get("big", i, p); ok {
					t.Fatal("hit in a one-time scan")
				}
				c.Put("big", i, content("big", i, chunk))
			}
			lost := 0
			for i := range int64(30) {
				if !expectMissOrRight(t, c, "hot", i, content("hot", i, chunk)) {
					lost++
				}
			}
			if s := c.Stats(); lost > 0 || s.Bytes > 100*rec {
				t.Fatalf("%d of 30 hot chunks lost to the scan; %+v", lost, s)
			}
		})
	}
}

func TestPin(t *testing.T) {
	const chunk = 1024
	rec := recordSize(1, chunk)
	c := open(t, t.TempDir(), 10*rec)
	c.Put("k", 0, content("k", 0, chunk))
	unpin := c.Pin("k", 0)
	c.Pin("k", 1)() // pinned and unpinned at once: no effect
	for i := int64(1); i < 200; i++ {
		c.Put("k", i, content("k", i, chunk))
	}
	expect(t, c, "k", 0, content("k", 0, chunk))
	// A chunk pinned before it is stored is protected too.
	unpin2 := c.Pin("k", 500)
	c.Put("k", 500, content("k", 500, chunk))
	for i := int64(200); i < 400; i++ {
		c.Put("k", i, content("k", i, chunk))
	}
	expect(t, c, "k", 500, content("k", 500, chunk))
	unpin()
	unpin() // idempotent
	unpin2()
	// Unpinned, they are evicted once their second chances are spent by
	// a new hot set competing for the main queue.
	for i := int64(1000); i < 1100; i++ {
		c.Put("k", i, content("k", i, chunk))
		expect(t, c, "k", i, content("k", i, chunk))
	}
	expect(t, c, "k", 0, nil)
	expect(t, c, "k", 500, nil)

	// Everything pinned: a Put finds no room and is skipped.
	c2 := open(t, t.TempDir(), 3*rec)
	for i := range int64(3) {
		c2.Put("k", i, content("k", i, chunk))
		defer c2.Pin("k", i)()
	}
	c2.Put("k", 3, content("k", 3, chunk))
	expect(t, c2, "k", 3, nil)
	for i := range int64(3) {
		expect(t, c2, "k", i, content("k", i, chunk))
	}
	if s := c2.Stats(); s.Skips != 1 || s.Bytes > 3*rec {
		t.Fatalf("%+v", s)
	}
	// Larger than the whole cache: skipped.
	c2.Put("k", 9, make([]byte, 4*chunk))
	if s := c2.Stats(); s.Skips != 2 {
		t.Fatalf("%+v", s)
	}
}

func TestDrop(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, 1<<20)
	for i := range int64(5) {
		c.Put("bad", i, content("bad", i, 100))
		c.Put("good", i, content("good", i, 100))
	}
	c.PutMeta("bad", []byte("m"))
	c.Drop("bad")
	for i := range int64(5) {
		expect(t, c, "bad", i, nil)
		expect(t, c, "good", i, content("good", i, 100))
	}
	if _, ok := c.GetMeta("bad"); !ok {
		t.Fatal("Drop removed metadata")
	}
	if s := c.Stats(); s.Entries != 5 || s.Bytes != 5*recordSize(4, 100) {
		t.Fatalf("%+v", s)
	}
	c.Close()
	c = open(t, dir, 1<<20)
	expect(t, c, "bad", 0, nil)
	expect(t, c, "good", 0, content("good", 0, 100))

	// A Drop while a Put of the blob is writing: the write is discarded.
	c.hookWritten = func(key string, idx int64) {
		if key == "bad" {
			c.Drop("bad")
		}
	}
	c.Put("bad", 1, content("bad", 1, 100))
	expect(t, c, "bad", 1, nil)
	if chunks, tmp, n := diskBytes(t, dir); chunks != c.Stats().Bytes || tmp != 0 || n != 5 {
		t.Fatalf("disk %d in %d files, tmp %d; %+v", chunks, n, tmp, c.Stats())
	}
}

func TestShrinkAtOpen(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, 1<<20)
	for i := range int64(100) {
		c.Put("k", i, content("k", i, 1000))
	}
	c.Close()
	rec := recordSize(1, 1000)
	c = open(t, dir, 10*rec)
	if s := c.Stats(); s.Entries != 10 || s.Bytes != 10*rec || s.Evictions != 90 {
		t.Fatalf("%+v", s)
	}
	if chunks, _, _ := diskBytes(t, dir); chunks != 10*rec {
		t.Fatalf("disk %d", chunks)
	}
	// The oldest went first.
	expect(t, c, "k", 0, nil)
	expect(t, c, "k", 99, content("k", 99, 1000))
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(t.TempDir(), 0, Options{}); err == nil {
		t.Fatal("size 0 accepted")
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o600)
	if _, err := Open(f, 1<<20, Options{}); err == nil || !strings.Contains(err.Error(), f) {
		t.Fatalf("a file as dir: %v", err)
	}
}

func TestLock(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, 1<<20)
	_, err := Open(dir, 1<<20, Options{Logger: quiet})
	if err == nil {
		t.Fatal("second Open of the same dir succeeded")
	}
	if msg := err.Error(); !strings.Contains(msg, dir) || !strings.Contains(msg, fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("unclear error: %v", err)
	}
	t.Log(err)
	c.Close()
	c = open(t, dir, 1<<20) // released by Close
	c.Close()
}

// TestLogOnce: write errors are counted every time, logged once per kind.
func TestLogOnce(t *testing.T) {
	dir := t.TempDir()
	var buf bytes.Buffer
	var mu sync.Mutex
	c, err := Open(dir, 1<<20, Options{Logger: slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	os.RemoveAll(c.tmpDir) // every write now fails with ENOENT
	for i := range int64(10) {
		c.Put("k", i, []byte("x"))
		c.PutMeta("k", []byte("x"))
	}
	if s := c.Stats(); s.WriteErrors != 20 || s.Entries != 0 || s.Bytes != 0 {
		t.Fatalf("%+v", s)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(buf.String(), "write failed"); n != 1 {
		t.Fatalf("logged %d times:\n%s", n, buf.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestRecordRoundTrip(t *testing.T) {
	for _, r := range []record{
		{kind: kindChunk, key: "k", idx: 3, data: []byte("hello")},
		{kind: kindChunk, key: "", idx: 1<<63 - 1, data: []byte{}},
		{kind: kindMeta, key: "oci:sha256:x", data: []byte("size=1")},
	} {
		b := encodeRecord(r)
		got, err := parseRecord(b)
		if err != nil || got.kind != r.kind || got.key != r.key || got.idx != r.idx || !bytes.Equal(got.data, r.data) {
			t.Fatalf("%+v -> %+v, %v", r, got, err)
		}
		for i := range b { // every single flipped bit is caught
			for bit := range 8 {
				b[i] ^= 1 << bit
				if _, err := parseRecord(b); err == nil {
					t.Fatalf("flipped bit %d of byte %d accepted", bit, i)
				}
				b[i] ^= 1 << bit
			}
		}
		for n := range len(b) {
			if _, err := parseRecord(b[:n]); err == nil {
				t.Fatalf("truncated to %d accepted", n)
			}
		}
	}
}

func FuzzRecord(f *testing.F) {
	f.Add(encodeRecord(record{kind: kindChunk, key: "oci:sha256:ab", idx: 7, data: []byte("chunk data")}))
	f.Add(encodeRecord(record{kind: kindMeta, key: "http:x", data: []byte(`{"size":1}`)}))
	f.Add(encodeRecord(record{kind: kindChunk, data: nil}))
	f.Add([]byte("EBDC"))
	f.Add([]byte{})
	f.Add(make([]byte, minRecord))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRecord(b)
		if err != nil {
			return
		}
		if again := encodeRecord(r); !bytes.Equal(again, b) {
			t.Fatalf("accepted %x, which encodes as %x", b, again)
		}
	})
}

// TestGhost: a chunk evicted from the small queue without a hit and stored
// again soon after goes straight to the main queue.
func TestGhost(t *testing.T) {
	rec := recordSize(1, 1000)
	c := open(t, t.TempDir(), 20*rec)
	for i := range int64(40) {
		c.Put("k", i, content("k", i, 1000))
	}
	expect(t, c, "k", 0, nil) // evicted
	c.Put("k", 0, content("k", 0, 1000))
	c.mu.Lock()
	q := c.m[ckey{hashKey("k"), 0}].q
	c.mu.Unlock()
	if q != qMain {
		t.Fatalf("re-stored ghost in queue %d, want main", q)
	}
	c.Put("k", 40, content("k", 40, 1000))
	c.mu.Lock()
	q = c.m[ckey{hashKey("k"), 40}].q
	c.mu.Unlock()
	if q != qSmall {
		t.Fatalf("new chunk in queue %d, want small", q)
	}
}

// TestCloseWaitsForWriters: Close returns after a Put in flight has
// finished, and the chunk is there after a restart.
func TestCloseWaitsForWriters(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, 1<<20)
	inPut, release := make(chan struct{}), make(chan struct{})
	c.hookWritten = func(string, int64) { close(inPut); <-release }
	done := make(chan struct{})
	go func() { c.Put("k", 1, content("k", 1, 100)); close(done) }()
	<-inPut
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a Put was writing")
	case <-done:
		t.Fatal("Put returned early")
	default:
	}
	close(release)
	<-closed
	c.Put("k", 2, content("k", 2, 100)) // after Close: nothing
	c = open(t, dir, 1<<20)
	expect(t, c, "k", 1, content("k", 1, 100))
	expect(t, c, "k", 2, nil)
}
