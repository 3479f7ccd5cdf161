package source

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func testBlob(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// readAll reads the blob in odd-sized pieces from several goroutines and
// compares every byte.
func checkEveryByte(t *testing.T, b Blob, want []byte) {
	t.Helper()
	if b.Size() != int64(len(want)) {
		t.Fatalf("size %d, want %d", b.Size(), len(want))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			step := 12345 + g*777
			buf := make([]byte, step)
			for off := int64(g * 1000); off < int64(len(want)); off += int64(step) {
				n, err := b.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					errs <- fmt.Errorf("read at %d: %v", off, err)
					return
				}
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					errs <- fmt.Errorf("wrong bytes at %d", off)
					return
				}
				if n < step && off+int64(n) != int64(len(want)) {
					errs <- fmt.Errorf("short read at %d: %d", off, n)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestHTTPEveryByte(t *testing.T) {
	data := testBlob(t, 5<<20+321)
	var gets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "blob", time.Unix(1, 0), bytes.NewReader(data))
	}))
	defer srv.Close()
	op := NewOpener(Options{Chunk: 256 << 10})
	b, err := op.Open(context.Background(), srv.URL+"/blob?X-Signature=secret")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.Name(), "secret") {
		t.Fatalf("name %q carries the query", b.Name())
	}
	checkEveryByte(t, b, data)
	// 21 chunks; merged runs and kept chunks must keep requests well below
	// one per read.
	if g := gets.Load(); g > 200 {
		t.Fatalf("%d GETs for 5 MiB", g)
	}
}

func TestHTTPChangedObjectRefused(t *testing.T) {
	data := testBlob(t, 3<<20)
	var etag atomic.Value
	etag.Store(`"v1"`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", etag.Load().(string))
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	b, err := NewOpener(Options{Chunk: 1 << 20}).Open(context.Background(), srv.URL+"/x")
	if err != nil {
		t.Fatal(err)
	}
	etag.Store(`"v2"`)
	_, err = b.ReadAt(make([]byte, 10), 2<<20)
	if err == nil || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("changed object: err %v", err)
	}
}

// faulty wraps a real file server and injects faults on some requests.
func TestHTTPFaultsNeverWrongBytes(t *testing.T) {
	data := testBlob(t, 4<<20)
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		if r.Header.Get("Range") == "bytes=0-0" {
			http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
			return
		}
		switch i % 10 { // half of the requests fail, each in its own way
		case 1:
			w.WriteHeader(503)
			return
		case 2:
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(429)
			return
		case 3: // wrong Content-Range
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-9/%d", len(data)))
			w.WriteHeader(206)
			w.Write(data[:10])
			return
		case 4: // short body: promise more than is sent, then hang up
			rec := httptest.NewRecorder()
			http.ServeContent(rec, r, "b", time.Time{}, bytes.NewReader(data))
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			body := rec.Body.Bytes()
			w.Write(body[:len(body)/2])
			hj, _ := w.(http.Hijacker)
			c, _, _ := hj.Hijack()
			c.Close()
			return
		case 5: // a 200 with the whole object instead of a range
			w.WriteHeader(200)
			w.Write(data)
			return
		}
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	b, err := NewOpener(Options{Chunk: 64 << 10, Retries: 20, RetryBase: time.Millisecond}).Open(context.Background(), srv.URL+"/b")
	if err != nil {
		t.Fatal(err)
	}
	checkEveryByte(t, b, data)
	if s := b.(*remote).Stats(); s.Retries == 0 {
		t.Fatalf("no retries counted: %+v", s)
	}
}

func TestHTTPRetriesExhaustedThenRecovers(t *testing.T) {
	data := testBlob(t, 1<<20)
	var down atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			w.WriteHeader(500)
			return
		}
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	b, err := NewOpener(Options{Chunk: 64 << 10, Retries: 1, RetryBase: time.Millisecond}).Open(context.Background(), srv.URL+"/b")
	if err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	buf := make([]byte, 100)
	if _, err := b.ReadAt(buf, 5000); err == nil {
		t.Fatal("read succeeded with the server failing")
	}
	down.Store(false)
	if _, err := b.ReadAt(buf, 5000); err != nil || !bytes.Equal(buf, data[5000:5100]) {
		t.Fatalf("after recovery: %v", err)
	}
}

// registryServer is a minimal distribution-API blob endpoint behind the
// Bearer token flow (the e2e tests use the real docker-registry).
func TestRegistryBearerFlow(t *testing.T) {
	data := testBlob(t, 2<<20+17)
	dg := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	var tokens, tokenReqs atomic.Int64
	var tokSrv *httptest.Server
	var sawAuthElsewhere atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			sawAuthElsewhere.Store(true)
		}
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
	}))
	defer other.Close()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		if !strings.HasPrefix(h, "Bearer tok-") {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="reg",scope="repository:lib/app:pull"`, tokSrv.URL))
			w.WriteHeader(401)
			return
		}
		if r.URL.Path != "/v2/lib/app/blobs/"+dg {
			w.WriteHeader(404)
			return
		}
		if r.Header.Get("Range") != "bytes=0-0" { // data from "another host"
			http.Redirect(w, r, other.URL+"/data?sig=1", http.StatusTemporaryRedirect)
			return
		}
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
	}))
	defer reg.Close()
	tokSrv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokenReqs.Add(1)
		u, p, ok := r.BasicAuth()
		if !ok || u != "alice" || p != "s3cret" || r.URL.Query().Get("scope") != "repository:lib/app:pull" {
			w.WriteHeader(401)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"token": fmt.Sprintf("tok-%d", tokens.Add(1)), "expires_in": 300})
	}))
	defer tokSrv.Close()
	dir := t.TempDir()
	host := strings.TrimPrefix(reg.URL, "http://")
	auth := filepath.Join(dir, "auth.json")
	writeAuth(t, auth, host, "alice", "s3cret")
	op := NewOpener(Options{AuthFile: auth, Insecure: []string{host}, Chunk: 128 << 10})
	b, err := op.Open(context.Background(), "oci://"+host+"/lib/app@"+dg)
	if err != nil {
		t.Fatal(err)
	}
	checkEveryByte(t, b, data)
	if tokenReqs.Load() != 1 {
		t.Fatalf("%d token fetches, want 1 shared by all requests", tokenReqs.Load())
	}
	if sawAuthElsewhere.Load() {
		t.Fatal("Authorization sent to the redirect target")
	}
	// Wrong credentials: a clear error naming registry, repository, status, no secret.
	writeAuth(t, auth, host, "alice", "wrong")
	_, err = NewOpener(Options{AuthFile: auth, Insecure: []string{host}}).Open(context.Background(), "oci://"+host+"/lib/app@"+dg)
	if err == nil || !strings.Contains(err.Error(), host) || !strings.Contains(err.Error(), "lib/app") || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("bad credentials: %v", err)
	}
	// Unknown blob.
	writeAuth(t, auth, host, "alice", "s3cret")
	bad := "sha256:" + strings.Repeat("0", 64)
	_, err = NewOpener(Options{AuthFile: auth, Insecure: []string{host}}).Open(context.Background(), "oci://"+host+"/lib/app@"+bad)
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("unknown blob: %v", err)
	}
	// Plain HTTP without --insecure-registry is not tried.
	if _, err := NewOpener(Options{AuthFile: auth}).Open(context.Background(), "oci://"+host+"/lib/app@"+dg); err == nil {
		t.Fatal("https to a plain-HTTP registry succeeded")
	}
}

func writeAuth(t *testing.T, path, host, user, pass string) {
	t.Helper()
	cfg := map[string]any{"auths": map[string]any{host: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))}}}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestParseOCI(t *testing.T) {
	good := "oci://reg.example:5000/a/b@sha256:" + strings.Repeat("ab", 32)
	if r, err := parseOCI(good); err != nil || r.host != "reg.example:5000" || r.repo != "a/b" {
		t.Fatalf("%v %+v", err, r)
	}
	for _, s := range []string{"oci://h/a", "oci://h/A@sha256:" + strings.Repeat("ab", 32), "oci://h/a@sha256:12", "oci:///a@sha256:" + strings.Repeat("ab", 32)} {
		if _, err := parseOCI(s); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	for _, s := range []string{"", "bytes 1-0/5", "bytes 0-5/5", "bytes */5", "bytes -1-2/5", "items 0-1/2"} {
		if _, _, _, err := parseContentRange(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	if a, b, n, err := parseContentRange("bytes 3-4/5"); err != nil || a != 3 || b != 4 || n != 5 {
		t.Fatal(a, b, n, err)
	}
}

// TestReadaheadAndBudget: a sequential reader gets its next chunks fetched
// ahead in merged GETs (far fewer requests than chunks), random readers
// get no readahead, and the chunks kept in memory stay under the budget.
func TestReadaheadAndBudget(t *testing.T) {
	data := testBlob(t, 8<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	op := NewOpener(Options{Chunk: 16 << 10})
	b, err := op.Open(context.Background(), srv.URL+"/b")
	if err != nil {
		t.Fatal(err)
	}
	r := b.(*remote)
	buf := make([]byte, 16<<10)
	for off := int64(0); off < 8<<20; off += int64(len(buf)) {
		if _, err := b.ReadAt(buf, off); err != nil || !bytes.Equal(buf, data[off:off+int64(len(buf))]) {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	chunks := uint64(8 << 20 / (16 << 10))
	if s := r.Stats(); s.Requests > chunks/4 {
		t.Fatalf("sequential read of %d chunks took %d requests: no readahead", chunks, s.Requests)
	}
	op.keep.mu.Lock()
	kept, budget := op.keep.bytes, op.keep.max
	op.keep.mu.Unlock()
	if kept > budget {
		t.Fatalf("%d bytes kept, budget %d", kept, budget)
	}
	// Random 1-chunk reads far apart: one request each, no readahead.
	b2, _ := NewOpener(Options{Chunk: 16 << 10}).Open(context.Background(), srv.URL+"/b")
	for i := int64(0); i < 16; i++ {
		off := (i * 37 % 64) * 128 << 10
		if _, err := b2.ReadAt(buf[:100], off); err != nil || !bytes.Equal(buf[:100], data[off:off+100]) {
			t.Fatalf("random read at %d: %v", off, err)
		}
	}
	if s := b2.(*remote).Stats(); s.Bytes > 16*(16<<10) {
		t.Fatalf("random reads fetched %d bytes for 16 chunks", s.Bytes)
	}
}

// TestReadaheadSkip: a sequential reader's readahead stops before the
// ranges SetReadaheadSkip says are read from elsewhere; reads there still
// work, and readahead goes on after them.
func TestReadaheadSkip(t *testing.T) {
	data := testBlob(t, 4<<20)
	var mu sync.Mutex
	var got [][2]int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var a, b int64
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b)
		mu.Lock()
		got = append(got, [2]int64{a, b + 1})
		mu.Unlock()
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	const chunk = 16 << 10
	b, err := NewOpener(Options{Chunk: chunk}).Open(context.Background(), srv.URL+"/b")
	if err != nil {
		t.Fatal(err)
	}
	skipLo, skipHi := int64(1<<20), int64(2<<20) // chunks here come from elsewhere
	b.(*remote).SetReadaheadSkip(func(off, n int64) bool { return off >= skipLo && off+n <= skipHi })
	buf := make([]byte, chunk)
	for off := int64(0); off < skipLo; off += chunk {
		if _, err := b.ReadAt(buf, off); err != nil || !bytes.Equal(buf, data[off:off+chunk]) {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	for off := skipHi; off < 3<<20; off += chunk {
		if _, err := b.ReadAt(buf, off); err != nil || !bytes.Equal(buf, data[off:off+chunk]) {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	ahead := 0
	for _, g := range got {
		if g[1] > skipLo && g[0] < skipHi {
			t.Errorf("GET %d-%d reaches into the skipped range", g[0], g[1])
		}
		if g[1]-g[0] > chunk {
			ahead++
		}
	}
	if ahead == 0 || len(got) > 3*(2<<20)/chunk/4 {
		t.Fatalf("%d GETs, %d merged: readahead did not work around the skip", len(got), ahead)
	}
}

// mapStore is an in-memory ChunkStore for the fetcher's tests (the real
// one, package diskcache, has its own).
type mapStore struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *mapStore) Get(key string, idx int64, p []byte) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.m[fmt.Sprintf("%s#%d", key, idx)]
	return copy(p, d), ok
}
func (s *mapStore) Put(key string, idx int64, data []byte) {
	s.mu.Lock()
	s.m[fmt.Sprintf("%s#%d", key, idx)] = append([]byte(nil), data...)
	s.mu.Unlock()
}
func (s *mapStore) GetMeta(key string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.m[key+"#-1"]
	return d, ok
}

func (s *mapStore) PutMeta(key string, val []byte) { s.Put(key, -1, val) }
func (s *mapStore) Drop(key string) {
	s.mu.Lock()
	for k := range s.m {
		if strings.HasPrefix(k, key+"#") && !strings.HasSuffix(k, "#-1") {
			delete(s.m, k)
		}
	}
	s.mu.Unlock()
}

// TestStoreWarmAndOffline: with a ChunkStore a second opener (a restart)
// fetches no blob bytes, and with the server gone the blob still opens and
// serves what is stored; a changed object gets a new key.
func TestStoreWarmAndOffline(t *testing.T) {
	data := testBlob(t, 1<<20+123)
	var down atomic.Bool
	var served atomic.Int64
	etag := `"v1"`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			hj, _ := w.(http.Hijacker)
			c, _, _ := hj.Hijack()
			c.Close()
			return
		}
		w.Header().Set("ETag", etag)
		if r.Header.Get("Range") != "bytes=0-0" {
			served.Add(1)
		}
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	st := &mapStore{m: map[string][]byte{}}
	opt := Options{Chunk: 64 << 10, Store: st, Retries: 1, RetryBase: time.Millisecond}
	b, err := NewOpener(opt).Open(context.Background(), srv.URL+"/b")
	if err != nil {
		t.Fatal(err)
	}
	checkEveryByte(t, b, data)
	cold := served.Load()
	b2, err := NewOpener(opt).Open(context.Background(), srv.URL+"/b")
	if err != nil {
		t.Fatal(err)
	}
	checkEveryByte(t, b2, data)
	if served.Load() != cold {
		t.Fatalf("warm restart fetched %d more ranges", served.Load()-cold)
	}
	down.Store(true)
	b3, err := NewOpener(opt).Open(context.Background(), srv.URL+"/b")
	if err != nil {
		t.Fatalf("offline open: %v", err)
	}
	checkEveryByte(t, b3, data)
	down.Store(false)
	if b.(*remote).storeKey == "" || b.(*remote).storeKey != b2.(*remote).storeKey {
		t.Fatalf("store keys %q %q", b.(*remote).storeKey, b2.(*remote).storeKey)
	}
	etag = `"v2"`
	b4, err := NewOpener(opt).Open(context.Background(), srv.URL+"/b")
	if err != nil {
		t.Fatal(err)
	}
	if b4.(*remote).storeKey == b.(*remote).storeKey {
		t.Fatal("a changed object kept its store key")
	}
}

// TestStallRetried: a server that stops sending in the middle of a body
// (or before answering) is cut off after the stall timeout and the request
// retried; the reader gets the right bytes.
func TestStallRetried(t *testing.T) {
	data := testBlob(t, 512<<10)
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "bytes=0-0" {
			switch n.Add(1) % 3 {
			case 1: // stall before answering
				select {
				case <-r.Context().Done():
				case <-time.After(5 * time.Second):
				}
				return
			case 2: // stall in the middle of the body
				rec := httptest.NewRecorder()
				http.ServeContent(rec, r, "b", time.Time{}, bytes.NewReader(data))
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(rec.Body.Bytes()[:rec.Body.Len()/2])
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
				case <-time.After(5 * time.Second):
				}
				return
			}
		}
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	b, err := NewOpener(Options{Chunk: 128 << 10, Retries: 4, RetryBase: time.Millisecond, StallTimeout: 150 * time.Millisecond}).Open(context.Background(), srv.URL+"/b")
	if err != nil {
		t.Fatal(err)
	}
	checkEveryByte(t, b, data)
	if s := b.(*remote).Stats(); s.Retries == 0 {
		t.Fatalf("no retries: %+v", s)
	}
}

// TestDigestCheckOfStoredBlob: an OCI blob read whole into the store is
// checked against its digest once; a registry that served other bytes is
// caught, reported and its chunks dropped.
func TestDigestCheckOfStoredBlob(t *testing.T) {
	good := testBlob(t, 300<<10)
	dg := fmt.Sprintf("sha256:%x", sha256.Sum256(good))
	bad := append([]byte(nil), good...)
	bad[1000] ^= 1
	var serve atomic.Pointer[[]byte]
	serve.Store(&good)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/repo/blobs/"+dg {
			w.WriteHeader(404)
			return
		}
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(*serve.Load()))
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	spec := "oci://" + host + "/repo@" + dg
	for _, tc := range []struct {
		data    *[]byte
		ok, bad uint64
	}{{&good, 1, 0}, {&bad, 0, 1}} {
		serve.Store(tc.data)
		st := &mapStore{m: map[string][]byte{}}
		op := NewOpener(Options{Chunk: 64 << 10, Store: st, Insecure: []string{host}})
		b, err := op.Open(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(good))
		b.ReadAt(buf, 0)
		deadline := time.Now().Add(20 * time.Second)
		for {
			ok, bd := op.DigestChecks()
			if ok+bd > 0 {
				if ok != tc.ok || bd != tc.bad {
					t.Fatalf("digest checks ok=%d bad=%d, want %d/%d", ok, bd, tc.ok, tc.bad)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no digest check")
			}
			time.Sleep(10 * time.Millisecond)
		}
		st.mu.Lock()
		chunks := 0
		for k := range st.m {
			if !strings.HasSuffix(k, "#-1") {
				chunks++
			}
		}
		st.mu.Unlock()
		if tc.bad > 0 && chunks != 0 {
			t.Fatalf("%d chunks of a blob that failed its digest kept", chunks)
		}
		if tc.ok > 0 && chunks != 5 {
			t.Fatalf("%d chunks stored, want 5", chunks)
		}
		if tc.ok > 0 {
			// A restart on the same store does not hash the blob again.
			op2 := NewOpener(Options{Chunk: 64 << 10, Store: st, Insecure: []string{host}})
			b2, err := op2.Open(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b2.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, good) {
				t.Fatalf("warm read: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
			if ok, bd := op2.DigestChecks(); ok+bd != 0 {
				t.Fatalf("verified blob hashed again after a restart: %d/%d", ok, bd)
			}
		}
	}
}

// ReadSlices lends the fetched chunks themselves: in odd pieces from
// several goroutines (crossing chunk boundaries, with readahead running)
// the lent slices always add up to exactly the blob's bytes, and a fetch
// that fails is an error, never slices.
func TestReadSlicesEveryByte(t *testing.T) {
	data := testBlob(t, 3<<20+777)
	var fail atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "blob", time.Unix(1, 0), bytes.NewReader(data))
	}))
	defer srv.Close()
	b, err := NewOpener(Options{Chunk: 128 << 10, Retries: -1}).Open(context.Background(), srv.URL+"/blob")
	if err != nil {
		t.Fatal(err)
	}
	sr := b.(interface {
		ReadSlices([][]byte, int64, int) ([][]byte, bool, error)
	})
	checkEveryByte(t, lentReader{b, sr}, data)
	if _, ok, _ := sr.ReadSlices(nil, int64(len(data))-10, 11); ok {
		t.Fatal("a range past the end was lent")
	}
	// Far from anything kept: a fetch, which fails.
	b2, err := NewOpener(Options{Chunk: 128 << 10, Retries: -1}).Open(context.Background(), srv.URL+"/blob")
	if err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	segs, ok, err := b2.(interface {
		ReadSlices([][]byte, int64, int) ([][]byte, bool, error)
	}).ReadSlices(nil, 1<<20, 1000)
	if !ok || err == nil {
		t.Fatalf("failed fetch: ok %v err %v, %d slices", ok, err, len(segs))
	}
}

// lentReader reads through ReadSlices, joining what is lent.
type lentReader struct {
	Blob
	sr interface {
		ReadSlices([][]byte, int64, int) ([][]byte, bool, error)
	}
}

func (l lentReader) ReadAt(p []byte, off int64) (int, error) {
	n := min(int64(len(p)), l.Size()-off)
	segs, ok, err := l.sr.ReadSlices(nil, off, int(n))
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("%d+%d not lent", off, n)
	}
	got := copy(p, bytes.Join(segs, nil))
	if got < len(p) {
		return got, io.EOF
	}
	return got, nil
}
