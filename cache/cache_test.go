package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

func fill(t testing.TB, c *Cache, k Key, v []byte) {
	t.Helper()
	r := acquire(c, k, nil)
	if r.State != Lead {
		t.Fatalf("key %v: want a leader miss, got state %d", k, r.State)
	}
	c.Complete(r.Flight, [][]byte{v}, 7)
}

// acquire looks one key up.
func acquire(c *Cache, k Key, dst []byte) Req {
	r := []Req{{Key: k, Dst: dst}}
	c.Acquire(r)
	return r[0]
}

func has(c *Cache, k Key) bool {
	_, _, ok := c.Get(k, nil)
	return ok
}

func TestHitMissOrigin(t *testing.T) {
	c := New(1<<20, 4096)
	k := Key{ID: 1, Index: 2}
	fill(t, c, k, []byte("hello"))
	v := make([]byte, 5)
	r := acquire(c, k, v)
	if r.State != Hit || r.Len != 5 || string(v) != "hello" || r.Origin != 7 {
		t.Fatalf("got %q %+v", v, r)
	}
	if has(c, Key{ID: 1, Index: 3}) {
		t.Fatal("hit on an absent key")
	}
	s := c.Stats()
	// A small value takes (and counts) a whole page slot.
	if s.Hits != 1 || s.Misses != 1 || s.ResidentBytes != 4096 || s.Entries != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestBound(t *testing.T) {
	c := New(64<<10, 4096)
	page := make([]byte, 4096)
	for i := 0; i < 1000; i++ {
		fill(t, c, Key{ID: 9, Index: uint64(i)}, page)
		if s := c.Stats(); s.ResidentBytes > 64<<10 {
			t.Fatalf("resident %d > capacity after %d inserts", s.ResidentBytes, i)
		}
	}
	s := c.Stats()
	if s.Evictions != 1000-16 || s.Entries != 16 {
		t.Fatalf("stats %+v", s)
	}
}

func TestZeroCapacityStoresNothing(t *testing.T) {
	c := New(0, 4096)
	k := Key{ID: 1}
	fill(t, c, k, []byte("x"))
	if has(c, k) {
		t.Fatal("zero-capacity cache kept a value")
	}
}

// A hot set that is hit repeatedly survives a long one-pass scan.
func TestScanResistance(t *testing.T) {
	const pages = 100
	c := New(pages*4096, 4096)
	page := make([]byte, 4096)
	hot := 50
	for round := 0; round < 3; round++ {
		for i := 0; i < hot; i++ {
			k := Key{ID: 1, Index: uint64(i)}
			if !has(c, k) {
				fill(t, c, k, page)
			}
		}
	}
	for i := 0; i < 10*pages; i++ { // scan 10x the capacity, each page once
		fill(t, c, Key{ID: 2, Index: uint64(i)}, page)
	}
	kept := 0
	for i := 0; i < hot; i++ {
		if has(c, Key{ID: 1, Index: uint64(i)}) {
			kept++
		}
	}
	if kept < hot*9/10 {
		t.Fatalf("only %d of %d hot pages survived the scan", kept, hot)
	}
}

// Many goroutines missing on one key fetch it once.
func TestSingleflight(t *testing.T) {
	c := New(1<<20, 4096)
	k := Key{ID: 5, Index: 5}
	var fetches atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			v := make([]byte, 4096)
			r := acquire(c, k, v)
			n := r.Len
			switch r.State {
			case Hit:
			case Lead:
				fetches.Add(1)
				src := bytes.Repeat([]byte{1}, 4096)
				c.Complete(r.Flight, [][]byte{src}, 1)
				clear(src) // the cache keeps its own copy
				copy(v, bytes.Repeat([]byte{1}, 4096))
				n = 4096
			default:
				var err error
				if n, _, err = r.Flight.Wait(r.Index, v); err != nil {
					t.Error(err)
				}
			}
			if n != 4096 || !bytes.Equal(v, bytes.Repeat([]byte{1}, 4096)) {
				t.Errorf("bad value len %d", n)
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
}

func TestFailReleasesWaiters(t *testing.T) {
	c := New(1<<20, 4096)
	k := Key{ID: 1}
	r := acquire(c, k, nil)
	if r.State != Lead {
		t.Fatal("want leader")
	}
	r2 := acquire(c, k, nil)
	if r2.State != Wait || r2.Flight != r.Flight {
		t.Fatal("second acquire should wait on the first flight")
	}
	boom := errors.New("boom")
	c.Fail(r.Flight, boom)
	if _, _, err := r2.Flight.Wait(r2.Index, nil); !errors.Is(err, boom) {
		t.Fatalf("err %v", err)
	}
	if r := acquire(c, k, nil); r.State != Lead {
		t.Fatal("after a failure the next caller leads a new fetch")
	}
}

func BenchmarkHit(b *testing.B) {
	c := New(64<<20, 4096)
	page := make([]byte, 4096)
	for i := 0; i < 1024; i++ {
		fill(b, c, Key{ID: 1, Index: uint64(i)}, page)
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		dst := make([]byte, 4096)
		for pb.Next() {
			c.Get(Key{ID: 1, Index: uint64(i & 1023)}, dst)
			i++
		}
	})
}

// Slots are reused as pages are evicted: every value read back is the one
// stored under its key, values of any length up to a page, and the memory
// allocated for values never exceeds the capacity.
func TestSlotReuse(t *testing.T) {
	const capacity = 64 * 4096
	c := New(capacity, 4096)
	val := func(i int) []byte {
		return bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 2048)[:1+i%4096]
	}
	dst := make([]byte, 4096)
	for i := 0; i < 5000; i++ {
		fill(t, c, Key{ID: 3, Index: uint64(i)}, val(i))
		if i%7 == 0 { // some hits, so main is used too
			for j := max(0, i-40); j <= i; j += 5 {
				c.Get(Key{ID: 3, Index: uint64(j)}, dst)
			}
		}
	}
	present := 0
	for i := 0; i < 5000; i++ {
		n, o, ok := c.Get(Key{ID: 3, Index: uint64(i)}, dst)
		if !ok {
			continue
		}
		present++
		if want := val(i); n != len(want) || !bytes.Equal(dst[:n], want) || o != 7 {
			t.Fatalf("key %d: got %d bytes, want %d (origin %d)", i, n, len(want), o)
		}
	}
	s := c.Stats()
	if present != int(s.Entries) || s.ResidentBytes > capacity || s.AllocatedBytes > capacity {
		t.Fatalf("present %d, stats %+v", present, s)
	}
}

// A batch of misses is one Flight; keys already cached or being fetched
// split it, and a key twice in a batch waits on its own first copy.
func TestBatchFlights(t *testing.T) {
	c := New(1<<20, 4096)
	fill(t, c, Key{ID: 1, Index: 2}, []byte("two"))
	other := acquire(c, Key{ID: 1, Index: 4}, nil) // someone else is fetching 4
	reqs := make([]Req, 7)
	for i := range 6 {
		reqs[i] = Req{Key: Key{ID: 1, Index: uint64(i)}, Dst: make([]byte, 8)}
	}
	reqs[6] = Req{Key: Key{ID: 1, Index: 0}, Dst: make([]byte, 8)}
	c.Acquire(reqs)
	want := []State{Lead, Lead, Hit, Lead, Wait, Lead, Wait}
	for i, r := range reqs {
		if r.State != want[i] {
			t.Fatalf("req %d: state %d, want %d", i, r.State, want[i])
		}
	}
	if reqs[0].Flight != reqs[1].Flight || reqs[1].Index != 1 || reqs[3].Flight == reqs[0].Flight ||
		reqs[6].Flight != reqs[0].Flight || reqs[6].Index != 0 || reqs[4].Flight != other.Flight {
		t.Fatal("flights not grouped by runs")
	}
	c.Complete(reqs[0].Flight, [][]byte{[]byte("zero"), []byte("one")}, 1)
	c.Complete(reqs[3].Flight, [][]byte{[]byte("three")}, 1)
	c.Complete(reqs[5].Flight, [][]byte{[]byte("five")}, 1)
	c.Complete(other.Flight, [][]byte{[]byte("four")}, 2)
	if n, o, err := reqs[6].Flight.Wait(reqs[6].Index, reqs[6].Dst); err != nil || string(reqs[6].Dst[:n]) != "zero" || o != 1 {
		t.Fatalf("self wait: %q %v", reqs[6].Dst[:n], err)
	}
	if n, o, err := reqs[4].Flight.Wait(reqs[4].Index, reqs[4].Dst); err != nil || string(reqs[4].Dst[:n]) != "four" || o != 2 {
		t.Fatalf("wait: %q %v", reqs[4].Dst[:n], err)
	}
	if string(reqs[2].Dst[:reqs[2].Len]) != "two" {
		t.Fatal("hit not copied")
	}
}

// The metadata lives outside the Go heap: filling a cache (and its ghost
// ring) leaves the Go heap about where it was, and every lookup meanwhile
// returns the value stored under its key.
func TestMetadataOffHeap(t *testing.T) {
	const capacity = 32 << 20
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	c := New(capacity, 4096)
	page := make([]byte, 4096)
	dst := make([]byte, 4096)
	pages := capacity / 4096
	for i := 0; i < 4*pages; i++ {
		k := Key{ID: uint64(i % 3), Index: uint64(i)}
		binary.LittleEndian.PutUint64(page, k.hash())
		r := acquire(c, k, dst)
		if r.State != Lead {
			t.Fatalf("key %d: state %d", i, r.State)
		}
		c.Complete(r.Flight, [][]byte{page[:1+i%4096]}, Origin(i))
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	s := c.Stats()
	if s.Entries != int64(pages) || s.ResidentBytes > capacity {
		t.Fatalf("stats %+v", s)
	}
	if grew := int64(m1.HeapAlloc) - int64(m0.HeapAlloc); grew > 1<<20 {
		t.Fatalf("Go heap grew by %d bytes for %d cached pages", grew, pages)
	}
	found := 0
	for i := 0; i < 4*pages; i++ {
		k := Key{ID: uint64(i % 3), Index: uint64(i)}
		n, o, ok := c.Get(k, dst)
		if !ok {
			continue
		}
		found++
		if n != 1+i%4096 || o != Origin(i) || (n >= 8 && binary.LittleEndian.Uint64(dst) != k.hash()) {
			t.Fatalf("key %d: %d bytes, origin %d", i, n, o)
		}
	}
	if found != pages {
		t.Fatalf("%d pages found, %d cached", found, pages)
	}
	runtime.KeepAlive(c)
}

// Random concurrent use of a small cache: lookups (Acquire and
// AcquireOnSecondMiss), fills, failures and waits; every value seen is the one for its key and the bound holds.
func TestRandomConcurrent(t *testing.T) {
	c := New(64*4096, 4096)
	val := func(k Key, b []byte) []byte {
		b = b[:1+int(k.Index*7919%4096)]
		for i := range b {
			b[i] = byte(k.Index*31 + k.ID + uint64(i))
		}
		return b
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(g)))
			buf, want := make([]byte, 4096), make([]byte, 4096)
			reqs := make([]Req, 8)
			for it := 0; it < 3000; it++ {
				n := 1 + rng.Intn(len(reqs))
				base := uint64(rng.Intn(300))
				for i := 0; i < n; i++ {
					reqs[i] = Req{Key: Key{ID: uint64(rng.Intn(2)), Index: base + uint64(i)}, Dst: make([]byte, 4096)}
				}
				rs := reqs[:n]
				if rng.Intn(2) == 0 {
					c.Acquire(rs)
				} else {
					c.AcquireOnSecondMiss(rs)
				}
				var led []*Flight
				for i := range rs {
					r := &rs[i]
					if r.State != Lead || (len(led) > 0 && led[len(led)-1] == r.Flight) {
						continue
					}
					led = append(led, r.Flight)
					var vals [][]byte
					for j := i; j < n && rs[j].State == Lead && rs[j].Flight == r.Flight; j++ {
						vals = append(vals, val(rs[j].Key, make([]byte, 4096)))
					}
					if rng.Intn(10) == 0 {
						c.Fail(r.Flight, errors.New("boom"))
					} else {
						c.Complete(r.Flight, vals, 1)
					}
				}
				for i := range rs {
					r := &rs[i]
					l := r.Len
					switch r.State {
					case Lead, Miss: // Miss: AcquireOnSecondMiss left it to us
						continue
					case Wait:
						var err error
						if l, _, err = r.Flight.Wait(r.Index, r.Dst); err != nil {
							continue
						}
					}
					w := val(r.Key, want)
					if l != len(w) || !bytes.Equal(r.Dst[:l], w) {
						t.Errorf("key %v: wrong value (%d bytes, want %d)", r.Key, l, len(w))
						return
					}
				}
				k := Key{ID: uint64(rng.Intn(2)), Index: uint64(rng.Intn(300))}
				if l, _, ok := c.Get(k, buf); ok && !bytes.Equal(buf[:l], val(k, want)) {
					t.Errorf("Get %v: wrong value", k)
					return
				}
			}
		}()
	}
	wg.Wait()
	if s := c.Stats(); s.ResidentBytes > 64*4096 || s.Entries > 64 {
		t.Fatalf("stats %+v", s)
	}
}

// AcquireOnSecondMiss leaves a first miss to the caller and remembers the
// key; the next miss on it leads a fetch into main, then it hits. Keys
// being fetched by others are still waited on.
func TestAcquireOnSecondMiss(t *testing.T) {
	c := New(1<<20, 4096)
	k := Key{ID: 1, Index: 1}
	second := func(k Key) Req {
		r := []Req{{Key: k, Dst: make([]byte, 8)}}
		c.AcquireOnSecondMiss(r)
		return r[0]
	}
	if r := second(k); r.State != Miss || r.Flight != nil {
		t.Fatalf("first miss: state %d", r.State)
	}
	if s := c.Stats(); s.Misses != 1 || s.Inserts != 0 {
		t.Fatalf("stats after the first miss %+v", s)
	}
	r := second(k)
	if r.State != Lead {
		t.Fatalf("second miss: state %d", r.State)
	}
	c.Complete(r.Flight, [][]byte{[]byte("value")}, 3)
	if r := second(k); r.State != Hit || string(r.Dst[:r.Len]) != "value" || r.Origin != 3 {
		t.Fatalf("after the fetch: %+v", r)
	}
	if c.main.bytes != 4096 || c.small.bytes != 0 {
		t.Fatal("a page read twice did not go to main")
	}
	other := acquire(c, Key{ID: 2}, nil) // a plain Acquire leads at once
	if other.State != Lead {
		t.Fatal("Acquire did not lead")
	}
	if r := second(Key{ID: 2}); r.State != Wait || r.Flight != other.Flight {
		t.Fatalf("a key being fetched: state %d", r.State)
	}
	c.Fail(other.Flight, errors.New("x"))
	if r := New(0, 4096); true { // no slots: nothing remembered, nothing breaks
		q := []Req{{Key: k}}
		r.AcquireOnSecondMiss(q)
		r.AcquireOnSecondMiss(q)
		if q[0].State != Miss {
			t.Fatalf("zero capacity: state %d", q[0].State)
		}
	}
}
