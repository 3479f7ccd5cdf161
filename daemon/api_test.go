package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/nbd"
)

// testImage is a set of blobs (primary first) and the device they
// compose, read with flatdev straight from the files.
type testImage struct {
	blobs []string
	ref   []byte
}

// mkImage builds a tree and an EROFS image of it with mkfs.erofs; with
// blobdev, the file data goes into a second blob.
func mkImage(t *testing.T, seed int64, blobdev bool) testImage {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	testtree.Build(t, tree, testtree.Options{Seed: seed, Files: 30, MaxSize: 120 << 10, Symlinks: true, Dup: true})
	p := filepath.Join(dir, "p.erofs")
	im := testImage{blobs: []string{p}}
	if blobdev {
		b := filepath.Join(dir, "data.blob")
		testtree.Mkfs(t, p, tree, "--blobdev="+b, "--chunksize=4096")
		im.blobs = append(im.blobs, b)
	} else {
		testtree.Mkfs(t, p, tree)
	}
	var srcs []flatdev.Source
	for _, b := range im.blobs {
		f, err := os.Open(b)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		st, _ := f.Stat()
		srcs = append(srcs, flatdev.Source{Name: b, R: f, Size: st.Size()})
	}
	flat, err := flatdev.New(srcs[0], srcs[1:], flatdev.Options{})
	if err != nil {
		t.Fatal(err)
	}
	im.ref = make([]byte, flat.Size())
	if _, err := flat.ReadAt(im.ref, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return im
}

// nbdClient is a minimal fixed-newstyle NBD client: NBD_OPT_GO, then
// simple-reply READs, pipelined.
type nbdClient struct {
	c    net.Conn
	br   *bufio.Reader
	size int64
}

var errUnknownExport = errors.New("unknown export")

func dialNBD(sock, name string) (*nbdClient, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	nc := &nbdClient{c: c, br: bufio.NewReader(c)}
	if err := nc.handshake(name); err != nil {
		c.Close()
		return nil, err
	}
	return nc, nil
}

func (nc *nbdClient) handshake(name string) error {
	var hello [18]byte
	if _, err := io.ReadFull(nc.br, hello[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint64(hello[0:]) != 0x4e42444d41474943 || binary.BigEndian.Uint64(hello[8:]) != 0x49484156454F5054 {
		return errors.New("bad greeting")
	}
	b := binary.BigEndian.AppendUint32(nil, 1|2) // fixed newstyle, no zeroes
	b = binary.BigEndian.AppendUint64(b, 0x49484156454F5054)
	b = binary.BigEndian.AppendUint32(b, 7) // NBD_OPT_GO
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(name)+2))
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, 0)
	if _, err := nc.c.Write(b); err != nil {
		return err
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(nc.br, h[:]); err != nil {
			return err
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		data := make([]byte, n)
		if _, err := io.ReadFull(nc.br, data); err != nil {
			return err
		}
		switch {
		case typ == 1: // ACK
			return nil
		case typ == 3 && n >= 12 && binary.BigEndian.Uint16(data) == 0:
			nc.size = int64(binary.BigEndian.Uint64(data[2:]))
		case typ == 0x80000006:
			return errUnknownExport
		case typ&0x80000000 != 0:
			return fmt.Errorf("option error %#x: %s", typ, data)
		}
	}
}

// readAll reads the whole export in shuffled chunks, depth requests in
// flight, comparing every reply with ref. It returns the bytes verified
// and how the connection ended: nil after the last reply, io.EOF for a
// server disconnect between replies; any other error is a failure (a
// wrong byte, a cut reply, an error reply).
func (nc *nbdClient) readAll(ref []byte, depth int, rng *rand.Rand) (int64, error) {
	defer nc.c.Close()
	if nc.size != int64(len(ref)) {
		return 0, fmt.Errorf("export size %d, want %d", nc.size, len(ref))
	}
	type req struct{ off, n int64 }
	var reqs []req
	for off := int64(0); off < nc.size; {
		n := min(int64(4096*(1+rng.Intn(48))), nc.size-off)
		reqs = append(reqs, req{off, n})
		off += n
	}
	rng.Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
	slots := make(chan struct{}, depth)
	go func() {
		for i, r := range reqs {
			slots <- struct{}{}
			b := binary.BigEndian.AppendUint32(nil, 0x25609513)
			b = binary.BigEndian.AppendUint16(b, 0)
			b = binary.BigEndian.AppendUint16(b, 0) // READ
			b = binary.BigEndian.AppendUint64(b, uint64(i))
			b = binary.BigEndian.AppendUint64(b, uint64(r.off))
			b = binary.BigEndian.AppendUint32(b, uint32(r.n))
			if _, err := nc.c.Write(b); err != nil {
				return
			}
		}
	}()
	var done int64
	for range reqs {
		var h [16]byte
		if _, err := io.ReadFull(nc.br, h[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				// Between replies: a disconnect. (The server closing with
				// our unread requests queued resets the socket; Linux
				// still delivers every reply sent before that.)
				return done, io.EOF
			}
			return done, fmt.Errorf("reply header: %w", err)
		}
		if binary.BigEndian.Uint32(h[0:]) != 0x67446698 {
			return done, fmt.Errorf("bad reply magic %x", h[:4])
		}
		if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
			return done, fmt.Errorf("error reply %d", e)
		}
		i := binary.BigEndian.Uint64(h[8:])
		if i >= uint64(len(reqs)) {
			return done, fmt.Errorf("unknown cookie %d", i)
		}
		r := reqs[i]
		data := make([]byte, r.n)
		if _, err := io.ReadFull(nc.br, data); err != nil {
			return done, fmt.Errorf("reply cut short at %d: %w", r.off, err)
		}
		if !bytes.Equal(data, ref[r.off:r.off+r.n]) {
			return done, fmt.Errorf("wrong bytes at offset %d (+%d)", r.off, r.n)
		}
		done += r.n
		<-slots
	}
	return done, nil
}

// liveEnv is a daemon serving NBD and the API on unix sockets.
type liveEnv struct {
	d        *Daemon
	srv      *nbd.Server
	nbdSock  string
	apiSock  string
	hc       *http.Client
	stopAPI  func()
	shutdown func()
}

func newLiveEnv(t *testing.T, cfg Config, specs ...Spec) *liveEnv {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, sp := range specs {
		if _, err := d.Add(sp); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := d.NBDServer(nbd.Config{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e := &liveEnv{d: d, srv: srv, nbdSock: filepath.Join(dir, "nbd.sock"), apiSock: filepath.Join(dir, "api.sock")}
	nl, _, err := nbd.Listen("unix:" + e.nbdSock)
	if err != nil {
		t.Fatal(err)
	}
	al, _, err := nbd.Listen("unix:" + e.apiSock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(nl)
	hs := d.APIServer()
	go hs.Serve(al)
	e.hc = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", e.apiSock)
	}}}
	t.Cleanup(func() {
		hs.Close()
		srv.Shutdown(context.Background())
		d.Close()
	})
	return e
}

// call sends a request to the API and returns the status and body.
func (e *liveEnv) call(t *testing.T, method, path, ctype string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://api"+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (e *liveEnv) post(t *testing.T, sp Spec) (int, []byte) {
	b, _ := json.Marshal(sp)
	return e.call(t, "POST", "/v1/exports", "application/json", b)
}

func (e *liveEnv) list(t *testing.T) []APIExport {
	t.Helper()
	code, b := e.call(t, "GET", "/v1/exports", "", nil)
	var l struct{ Exports []APIExport }
	if code != 200 || json.Unmarshal(b, &l) != nil {
		t.Fatalf("list: %d %s", code, b)
	}
	return l.Exports
}

func names(l []APIExport) string {
	var n []string
	for _, e := range l {
		n = append(n, e.Name)
	}
	return strings.Join(n, ",")
}

// reader reads an export over and over until stop (or, with untilGone,
// until the export disappears) and reports every failure.
type reader struct {
	bytes atomic.Int64
	conns atomic.Int64
	eofs  atomic.Int64 // connections the server ended between replies
	err   atomic.Value
	wg    sync.WaitGroup
}

func (r *reader) fail(err error) { r.err.CompareAndSwap(nil, err) }

func startReaders(e *liveEnv, name string, ref []byte, n int, stop <-chan struct{}, untilGone bool) *reader {
	r := &reader{}
	for i := 0; i < n; i++ {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			rng := rand.New(rand.NewSource(int64(i)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				nc, err := dialNBD(e.nbdSock, name)
				if untilGone && errors.Is(err, errUnknownExport) {
					return
				}
				if err != nil {
					r.fail(fmt.Errorf("%s: connect: %w", name, err))
					return
				}
				r.conns.Add(1)
				n, err := nc.readAll(ref, 8, rng)
				r.bytes.Add(n)
				if errors.Is(err, io.EOF) {
					r.eofs.Add(1)
					if !untilGone {
						r.fail(fmt.Errorf("%s: server hung up", name))
						return
					}
					continue
				}
				if err != nil {
					r.fail(fmt.Errorf("%s: %w", name, err))
					return
				}
			}
		}()
	}
	return r
}

func (r *reader) check(t *testing.T, what string) {
	t.Helper()
	if err, _ := r.err.Load().(error); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

// TestAPILiveExports adds and removes exports through the API while
// other exports are read by pipelined NBD clients, every byte compared
// with the composition of the files.
func TestAPILiveExports(t *testing.T) {
	a, b := mkImage(t, 1, true), mkImage(t, 2, false)
	e := newLiveEnv(t, Config{CacheSize: 16 << 20}, Spec{Name: "a", Blobs: a.blobs})
	stop := make(chan struct{})
	ra := startReaders(e, "a", a.ref, 3, stop, false)

	if code, body := e.post(t, Spec{Name: "b", Blobs: b.blobs, Description: "image b"}); code != 201 {
		t.Fatalf("POST b: %d %s", code, body)
	}
	// c reads the same files as a: removing c must keep them open.
	if code, body := e.post(t, Spec{Name: "c", Blobs: a.blobs}); code != 201 {
		t.Fatalf("POST c: %d %s", code, body)
	}
	if got := names(e.list(t)); got != "a,b,c" {
		t.Fatalf("exports %s", got)
	}
	code, body := e.call(t, "GET", "/v1/exports/b", "", nil)
	var eb APIExport
	if code != 200 || json.Unmarshal(body, &eb) != nil || eb.Size != int64(len(b.ref)) || eb.Description != "image b" || eb.BlockSize != 4096 || len(eb.Blobs) != 1 {
		t.Fatalf("GET b: %d %s", code, body)
	}
	if _, err := exec.LookPath("nbdinfo"); err == nil {
		out, err := exec.Command("nbdinfo", "--list", "nbd+unix:///?socket="+e.nbdSock).CombinedOutput()
		if err != nil || !strings.Contains(string(out), `export="b"`) || !strings.Contains(string(out), `export="c"`) {
			t.Fatalf("nbdinfo --list: %v\n%s", err, out)
		}
	}
	rb := startReaders(e, "b", b.ref, 2, stop, false)
	cstop := make(chan struct{})
	rc := startReaders(e, "c", a.ref, 3, cstop, true)
	// Wait until c's readers are connected and reading.
	for rc.bytes.Load() < 4<<20 && rc.err.Load() == nil {
		runtimeGosched()
	}
	e.d.mu.Lock()
	opened0 := len(e.d.order)
	e.d.mu.Unlock()
	held := mustDial(t, e, "c") // connected, no request in flight
	if code, body := e.call(t, "DELETE", "/v1/exports/c", "", nil); code != 204 {
		t.Fatalf("DELETE c: %d %s", code, body)
	}
	// c's readers end on their own: the server hung up between replies,
	// and reconnecting finds no export c.
	rc.wg.Wait()
	close(cstop)
	rc.check(t, "c while removed")
	// DELETE returned after c's connections ended: the held one is closed.
	if n, err := held.br.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("a connection to c survived DELETE: %d %v", n, err)
	}
	if _, err := dialNBD(e.nbdSock, "c"); !errors.Is(err, errUnknownExport) {
		t.Fatalf("c after DELETE: %v", err)
	}
	e.d.mu.Lock()
	if len(e.d.order) != opened0 {
		t.Errorf("removing c (files shared with a) changed the open sources: %d -> %d", opened0, len(e.d.order))
	}
	e.d.mu.Unlock()

	// b's files are b's alone: closed with it.
	before := rb.bytes.Load()
	for rb.bytes.Load() < before+2<<20 && rb.err.Load() == nil {
		runtimeGosched()
	}
	close(stop)
	rb.wg.Wait()
	rb.check(t, "b")
	if code, body := e.call(t, "DELETE", "/v1/exports/b", "", nil); code != 204 {
		t.Fatalf("DELETE b: %d %s", code, body)
	}
	e.d.mu.Lock()
	if len(e.d.order) != opened0-1 {
		t.Errorf("removing b left its source open: %d -> %d", opened0, len(e.d.order))
	}
	e.d.mu.Unlock()
	ra.wg.Wait()
	ra.check(t, "a")
	if got := names(e.list(t)); got != "a" {
		t.Fatalf("exports %s", got)
	}
	// a kept reading through all of it.
	if n, err := mustDial(t, e, "a").readAll(a.ref, 4, rand.New(rand.NewSource(9))); err != nil || n != int64(len(a.ref)) {
		t.Fatalf("a after the removals: %d %v", n, err)
	}
	t.Logf("a %d MiB over %d connections, b %d MiB, c %d MiB over %d connections (%d ended by DELETE)",
		ra.bytes.Load()>>20, ra.conns.Load(), rb.bytes.Load()>>20, rc.bytes.Load()>>20, rc.conns.Load(), rc.eofs.Load())
	// b is added again under the same name: opened afresh.
	if code, body := e.post(t, Spec{Name: "b", Blobs: b.blobs}); code != 201 {
		t.Fatalf("POST b again: %d %s", code, body)
	}
	if n, err := mustDial(t, e, "b").readAll(b.ref, 4, rand.New(rand.NewSource(3))); err != nil || n != int64(len(b.ref)) {
		t.Fatalf("b again: %d %v", n, err)
	}
}

func mustDial(t *testing.T, e *liveEnv, name string) *nbdClient {
	t.Helper()
	nc, err := dialNBD(e.nbdSock, name)
	if err != nil {
		t.Fatalf("connect %q: %v", name, err)
	}
	return nc
}

// TestAPIDefaultExport: a daemon started with no exports gets its default
// ("") from the first export added; removing it leaves no default until
// the next add.
func TestAPIDefaultExport(t *testing.T) {
	a, b := mkImage(t, 3, false), mkImage(t, 4, true)
	e := newLiveEnv(t, Config{})
	if _, err := dialNBD(e.nbdSock, ""); !errors.Is(err, errUnknownExport) {
		t.Fatalf("default export of an empty server: %v", err)
	}
	for _, sp := range []Spec{{Name: "a", Blobs: a.blobs}, {Name: "b", Blobs: b.blobs}} {
		if code, body := e.post(t, sp); code != 201 {
			t.Fatalf("POST %s: %d %s", sp.Name, code, body)
		}
	}
	if n, err := mustDial(t, e, "").readAll(a.ref, 4, rand.New(rand.NewSource(1))); err != nil || n != int64(len(a.ref)) {
		t.Fatalf("default = a: %d %v", n, err)
	}
	if code, _ := e.call(t, "DELETE", "/v1/exports/a", "", nil); code != 204 {
		t.Fatal(code)
	}
	if _, err := dialNBD(e.nbdSock, ""); !errors.Is(err, errUnknownExport) {
		t.Fatalf("default after removing it: %v (b must not silently take its place)", err)
	}
	if code, body := e.post(t, Spec{Name: "a2", Blobs: a.blobs}); code != 201 {
		t.Fatalf("POST a2: %d %s", code, body)
	}
	if n, err := mustDial(t, e, "").readAll(a.ref, 4, rand.New(rand.NewSource(1))); err != nil || n != int64(len(a.ref)) {
		t.Fatalf("default = a2: %d %v", n, err)
	}
}

// TestAPIErrors: every refusal is a 4xx with a JSON error, and none
// changes the exports.
func TestAPIErrors(t *testing.T) {
	a := mkImage(t, 5, true)
	e := newLiveEnv(t, Config{}, Spec{Name: "a", Blobs: a.blobs})
	e.d.Pin("a", "attached to a kernel device")
	notErofs := filepath.Join(t.TempDir(), "zero.img")
	os.WriteFile(notErofs, make([]byte, 1<<20), 0o644)
	e.d.mu.Lock()
	opened0 := len(e.d.order)
	e.d.mu.Unlock()
	j := func(s string) []byte { return []byte(s) }
	p := a.blobs[0]
	cases := []struct {
		what, method, path, ctype string
		body                      []byte
		code                      int
		msg                       string
	}{
		{"malformed JSON", "POST", "/v1/exports", "application/json", j(`{"name":`), 400, "malformed"},
		{"not an object", "POST", "/v1/exports", "", j(`["a"]`), 400, "malformed"},
		{"unknown field", "POST", "/v1/exports", "", j(`{"name":"x","blob":["` + p + `"]}`), 400, "unknown field"},
		{"trailing data", "POST", "/v1/exports", "", j(`{"name":"x","blobs":["` + p + `"]} {}`), 400, "after the JSON"},
		{"missing name", "POST", "/v1/exports", "", j(`{"blobs":["` + p + `"]}`), 400, "missing export name"},
		{"missing blobs", "POST", "/v1/exports", "", j(`{"name":"x"}`), 400, "blobs or an image"},
		{"blobs and image", "POST", "/v1/exports", "", j(`{"name":"x","blobs":["` + p + `"],"image":"oci://h/r:t"}`), 400, "not both"},
		{"empty blob", "POST", "/v1/exports", "", j(`{"name":"x","blobs":[""]}`), 400, "empty"},
		{"platform alone", "POST", "/v1/exports", "", j(`{"name":"x","blobs":["` + p + `"],"platform":"linux/amd64"}`), 400, "platform"},
		{"relative path", "POST", "/v1/exports", "", j(`{"name":"x","blobs":["p.erofs"]}`), 400, "absolute"},
		{"name with space", "POST", "/v1/exports", "", j(`{"name":"a b","blobs":["` + p + `"]}`), 400, "export name"},
		{"name with slash", "POST", "/v1/exports", "", j(`{"name":"a/b","blobs":["` + p + `"]}`), 400, "export name"},
		{"name with dot first", "POST", "/v1/exports", "", j(`{"name":".a","blobs":["` + p + `"]}`), 400, "export name"},
		{"name too long", "POST", "/v1/exports", "", j(`{"name":"` + strings.Repeat("n", 129) + `","blobs":["` + p + `"]}`), 400, "longer"},
		{"description with NUL", "POST", "/v1/exports", "", j(`{"name":"x","blobs":["` + p + `"],"description":"a\u0000b"}`), 400, "NUL"},
		{"wrong content type", "POST", "/v1/exports", "text/plain", j(`{"name":"x","blobs":["` + p + `"]}`), 415, "application/json"},
		{"body over 1 MiB", "POST", "/v1/exports", "", j(`{"name":"x","description":"` + strings.Repeat("d", 1<<20) + `"}`), 413, "over"},
		{"name exists", "POST", "/v1/exports", "", j(`{"name":"a","blobs":["` + p + `"]}`), 409, "exists"},
		{"missing blob", "POST", "/v1/exports", "", j(`{"name":"x","blobs":["` + p + `","/nonexistent/blob"]}`), 422, "nonexistent"},
		{"missing device", "POST", "/v1/exports", "", j(`{"name":"x","blobs":["` + p + `"]}`), 422, `"x"`},
		{"not EROFS", "POST", "/v1/exports", "", j(`{"name":"x","blobs":["` + notErofs + `"]}`), 422, "EROFS"},
		{"GET unknown", "GET", "/v1/exports/nosuch", "", nil, 404, "nosuch"},
		{"DELETE unknown", "DELETE", "/v1/exports/nosuch", "", nil, 404, "nosuch"},
		{"DELETE pinned", "DELETE", "/v1/exports/a", "", nil, 409, "kernel device"},
		{"PUT list", "PUT", "/v1/exports", "", nil, 405, "PUT"},
		{"DELETE list", "DELETE", "/v1/exports", "", nil, 405, "DELETE"},
		{"POST export", "POST", "/v1/exports/a", "", nil, 405, "POST"},
		{"unknown path", "GET", "/v2/things", "", nil, 404, "/v1/exports"},
		{"nested path", "GET", "/v1/exports/a/b", "", nil, 404, "no such API path"},
	}
	for _, c := range cases {
		code, body := e.call(t, c.method, c.path, c.ctype, c.body)
		var ae APIError
		if code != c.code || json.Unmarshal(body, &ae) != nil || !strings.Contains(ae.Error, c.msg) {
			t.Errorf("%s: %d %s, want %d with %q", c.what, code, body, c.code, c.msg)
		}
	}
	req, _ := http.NewRequest("PUT", "http://api/v1/exports", nil)
	if resp, err := e.hc.Do(req); err != nil || resp.Header.Get("Allow") != "GET, HEAD, POST" {
		t.Errorf("405 without Allow: %v %v", err, resp.Header)
	}
	if got := names(e.list(t)); got != "a" {
		t.Fatalf("exports after refusals: %s", got)
	}
	e.d.mu.Lock()
	if len(e.d.order) != opened0 || len(e.d.pending) != 0 {
		t.Errorf("failed adds left sources open: %d -> %d (pending %d)", opened0, len(e.d.order), len(e.d.pending))
	}
	e.d.mu.Unlock()
	// A client that sends half a request does not hold the API.
	c, err := net.Dial("unix", e.apiSock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/exports HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"na")
	if got := names(e.list(t)); got != "a" {
		t.Fatalf("exports: %s", got)
	}
}

// runtimeGosched lets the readers make progress while a test polls them.
func runtimeGosched() { time.Sleep(time.Millisecond) }
