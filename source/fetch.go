package source

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxMerge caps how many adjacent missing chunks one GET fetches, and
// maxMergeBytes its size (so requests in flight per host stay under
// Parallel × 8 MiB whatever the chunk size).
const (
	maxMerge      = 8
	maxMergeBytes = 8 << 20
)

// mergeLimit is how many chunks one GET may cover.
func (r *remote) mergeLimit() int { return max(1, min(maxMerge, int(maxMergeBytes/r.chunk))) }

// Fetched chunks stay in memory for readers that come back to them
// (readahead, unaligned requests) under one budget per Opener: the larger
// of keptBytes and keptChunks chunks. Anything longer-lived belongs in the
// content cache (--cache-size).
const (
	keptBytes  = 64 << 20
	keptChunks = 16
)

// readaheadMax caps the readahead window of a sequential reader, in chunks.
const readaheadMax = maxMerge

// streams is how many sequential readers per blob are tracked.
const streams = 4

// requester performs one authenticated ranged GET of a blob's URL; the
// registry flavour adds tokens and re-resolves redirects.
type requester interface {
	// do issues req (already carrying Range) and returns the response.
	do(ctx context.Context, rangeHdr, ifRange string) (*http.Response, error)
	// where names the blob in errors (no secrets).
	where() string
}

// Stats are a remote blob's cumulative counters.
type Stats struct {
	Requests, Bytes, Retries, Errors uint64
	InFlight                         int64
	StoreHits                        uint64 // chunks read (or lent, FileLease) from the ChunkStore
}

// remote is a lazily read blob behind ranged GETs.
type remote struct {
	name, id  string
	size      int64
	chunk     int64
	validator string // ETag or Last-Modified, sent as If-Range
	req       requester
	host      *host
	retries   int
	retryBase time.Duration
	stall     time.Duration
	obs       Observer

	keep *keeper
	// store is the persistent chunk store (nil: none); storeKey names
	// this blob's content and chunking in it.
	store      ChunkStore
	storeKey   string
	storeHits  atomic.Uint64
	digest     string         // OCI: the blob's digest, checked once it is all stored
	stored     map[int64]bool // chunks known to be in the store (guarded by mu)
	verifying  bool           // a digest check runs (guarded by mu)
	verified   bool           // the stored chunks passed it (guarded by mu)
	verifyDone chan struct{}  // closed when the running check ends (guarded by mu)
	onDigest   func(name string, err error)
	sums       *chunkSums // chunk digests known to the Opener

	mu      sync.Mutex
	chunks  map[int64]*chunkFetch
	seq     [streams]stream // sequential readers, for readahead
	seqNext int

	skip atomic.Pointer[func(off, n int64) bool] // SetReadaheadSkip

	requests, bytes, nretries, errs atomic.Uint64
	inflight                        atomic.Int64
}

// stream is one sequential reader: where its last read ended and how many
// reads in a row continued it.
type stream struct {
	end   int64
	run   int
	ahead int64 // last chunk already claimed ahead
	// seqBytes is how far the reader has come in order since the stream began.
	seqBytes int64
}

type chunkFetch struct {
	ahead  bool        // started by readahead, not by a reader of it
	low    bool        // a prefetch: waits for idle request slots
	wanted atomic.Bool // a reader waits for it (a low fetch stops yielding)
	done   chan struct{}
	data   []byte
	err    error
}

func (r *remote) Size() int64      { return r.size }
func (r *remote) Name() string     { return r.name }
func (r *remote) Identity() string { return r.id }

// verifyWait bounds how long Close waits for a digest check in progress.
const verifyWait = 30 * time.Second

// Close waits (up to verifyWait) for a digest check of the stored chunks
// that is running, so that a blob filled just before a shutdown is not
// hashed again after the restart.
func (r *remote) Close() error {
	if r == nil {
		return nil // a failed open's result (Close was always safe on it)
	}
	r.mu.Lock()
	ch := r.verifyDone
	r.mu.Unlock()
	if ch != nil {
		t := time.NewTimer(verifyWait)
		defer t.Stop()
		select {
		case <-ch:
		case <-t.C:
		}
	}
	return nil
}

// Stats returns the counters.
func (r *remote) Stats() Stats {
	return Stats{Requests: r.requests.Load(), Bytes: r.bytes.Load(), Retries: r.nretries.Load(), Errors: r.errs.Load(), InFlight: r.inflight.Load(), StoreHits: r.storeHits.Load()}
}

// ReadAt reads [off, off+len(p)), fetching the chunks it covers that are
// not already in memory or in flight; adjacent missing chunks are fetched
// with one GET.
func (r *remote) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset", r.name)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	want := int64(len(p))
	var eof error
	if off+want > r.size {
		want, eof = r.size-off, io.EOF
	}
	first, last := off/r.chunk, (off+want-1)/r.chunk
	if r.readStored(p[:want], off, first, last) {
		return int(want), eof
	}
	n, err := r.readFetched(off, want, func(pos int64, b []byte) { copy(p[pos:], b) })
	if err != nil {
		return n, err
	}
	return n, eof
}

// ReadSlices implements blockdev.SliceReader: the fetched chunks' bytes
// of [off, off+n) themselves, fetching as ReadAt does. Chunks are never
// written once fetched, so lending them is safe. With a ChunkStore only
// ranges whose chunks are all in memory already (fetched, or read ahead)
// are lent; for the rest (false) ReadAt reads what is stored from its
// files and fetches the others.
func (r *remote) ReadSlices(dst [][]byte, off int64, n int) ([][]byte, bool, error) {
	if off < 0 || n <= 0 || int64(n) > r.size-off {
		return dst, false, nil
	}
	want := int64(n)
	if r.store != nil && !r.inMemory(off/r.chunk, (off+want-1)/r.chunk) {
		return dst, false, nil
	}
	start := len(dst)
	got, err := r.readFetched(off, want, func(_ int64, b []byte) { dst = append(dst, b) })
	if err == nil && int64(got) != want {
		err = fmt.Errorf("%s: read bytes %d-%d: %w", r.name, off, off+want-1, io.ErrUnexpectedEOF)
	}
	if err != nil {
		return dst[:start], true, err
	}
	return dst, true, nil
}

// inMemory reports whether chunks first..last are all fetched and kept.
func (r *remote) inMemory(first, last int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := first; i <= last; i++ {
		cf := r.chunks[i]
		if cf == nil {
			return false
		}
		select {
		case <-cf.done:
			if cf.err != nil {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// readFetched gets the chunks covering [off, off+want) (in memory, in
// flight, or fetched now, with readahead for sequential readers) and
// hands their bytes to put in order, with each piece's position from off.
func (r *remote) readFetched(off, want int64, put func(pos int64, b []byte)) (int, error) {
	first, last := off/r.chunk, (off+want-1)/r.chunk
	fetches := r.claim(first, last)
	if lo, hi := r.sequential(off, off+want, last); lo <= hi {
		// A sequential reader: start the next chunks now, without waiting,
		// up to the first one that is read from elsewhere.
		if skip := r.skip.Load(); skip != nil {
			for i := lo; i <= hi; i++ {
				if (*skip)(i*r.chunk, int64(r.chunkLen(i))) {
					hi = i - 1
					break
				}
			}
		}
		if lo <= hi {
			r.claimWith(lo, hi, true, false)
		}
	}
	n := 0
	for i := first; i <= last; i++ {
		cf := fetches[i-first]
		cf.wanted.Store(true)
		<-cf.done
		if cf.err != nil && cf.ahead {
			// A readahead fetch failed: this reader asked for the chunk
			// itself, so it gets a fetch (and retries) of its own.
			cf = r.claim(i, i)[0]
			<-cf.done
		}
		if cf.err != nil {
			return n, cf.err
		}
		cs := i * r.chunk
		lo := max(off, cs)
		hi := min(off+want, cs+int64(len(cf.data)))
		if hi > lo {
			put(lo-off, cf.data[lo-cs:hi-cs:hi-cs])
			n += int(hi - lo)
		}
	}
	return n, nil
}

// Prefetch fetches the chunks of [off, off+n) that are missing, at low
// priority (after every demand read), and waits for them. With a
// ChunkStore they land there; chunks already stored cost a local read.
func (r *remote) Prefetch(off, n int64) error {
	if n <= 0 || off >= r.size {
		return nil
	}
	end := min(off+n, r.size)
	first, last := off/r.chunk, (end-1)/r.chunk
	for _, cf := range r.claimWith(first, last, false, true) {
		<-cf.done
		if cf.err != nil {
			return cf.err
		}
	}
	return nil
}

// SetReadaheadSkip implements blockdev.ReadaheadSkipper.
func (r *remote) SetReadaheadSkip(skip func(off, n int64) bool) {
	if skip == nil {
		r.skip.Store(nil)
		return
	}
	r.skip.Store(&skip)
}

// CanStore implements blockdev.StoredReader: chunks are kept in a store
// that lends them.
func (r *remote) CanStore() bool {
	_, ok := r.store.(ChunkLeaser)
	return ok
}

// ReadStored implements blockdev.StoredReader: [off, off+len(p)) from the
// ChunkStore when every chunk it covers is stored, without fetching.
func (r *remote) ReadStored(p []byte, off int64) bool {
	if len(p) == 0 || off < 0 || int64(len(p)) > r.size-off {
		return false
	}
	return r.readStored(p, off, off/r.chunk, (off+int64(len(p))-1)/r.chunk)
}

// readStored reads p at off (chunks first..last) straight from the chunk
// files of a store that lends them (ChunkLeaser), when every one of those
// chunks is stored: one pread per chunk into p, no fetch machinery, no
// chunk-sized buffers, no readahead (the store is local). false (nothing
// stored, a damaged file, an I/O error): the caller reads as usual, which
// handles all of those.
func (r *remote) readStored(p []byte, off, first, last int64) bool {
	if last-first >= maxMerge {
		return false
	}
	for i := first; i <= last; i++ {
		f, doff, ok := r.leaseChunk(i)
		if !ok {
			return false
		}
		cs := i * r.chunk
		lo, hi := max(off, cs), min(off+int64(len(p)), cs+int64(r.chunkLen(i)))
		_, err := f.ReadAt(p[lo-off:hi-off], doff+lo-cs)
		f.Close()
		if err != nil {
			return false
		}
	}
	return true
}

// leaseChunk lends stored chunk idx from a store that can (ChunkLeaser):
// its data are f's bytes from doff on; the caller closes f. A lent chunk
// counts as a store hit and as stored (for the digest check).
func (r *remote) leaseChunk(idx int64) (f *os.File, doff int64, ok bool) {
	l, can := r.store.(ChunkLeaser)
	if !can {
		return nil, 0, false
	}
	f, doff, dn, ok := l.Lease(r.storeKey, idx)
	if !ok {
		return nil, 0, false
	}
	if dn != int64(r.chunkLen(idx)) {
		f.Close()
		return nil, 0, false
	}
	r.storeHits.Add(1)
	r.markStored(idx, 1)
	return f, doff, true
}

// FileLease lends the stored chunk file holding [off, off+n), when the
// range lies inside one chunk the ChunkStore has and can lend
// (ChunkLeaser): the bytes are f's at fileOff, and release closes f once
// the caller is done with it. It does not fetch; on false the caller reads
// with ReadAt.
func (r *remote) FileLease(off, n int64) (f *os.File, fileOff int64, release func(), ok bool) {
	if n <= 0 || off < 0 || n > r.size-off {
		return nil, 0, nil, false
	}
	idx := off / r.chunk
	if (off+n-1)/r.chunk != idx {
		return nil, 0, nil, false
	}
	f, doff, ok := r.leaseChunk(idx)
	if !ok {
		return nil, 0, nil, false
	}
	return f, doff + off - idx*r.chunk, func() { f.Close() }, true
}

// sequential records a read of [off, end) whose last chunk is last and
// returns the chunks to read ahead (lo > hi: none). A reader that keeps
// continuing where it stopped gets a window doubling up to readaheadMax
// chunks, topped up only when less than half of it is left ahead, so the
// readahead GETs stay merged.
func (r *remote) sequential(off, end, last int64) (lo, hi int64) {
	nchunks := (r.size + r.chunk - 1) / r.chunk
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.seq {
		s := &r.seq[i]
		if s.end > 0 && off >= s.end-r.chunk && off <= s.end {
			if end > s.end {
				s.seqBytes += end - s.end
				s.end = end
			}
			s.run++
			if s.seqBytes < r.chunk {
				// Not a whole chunk read in order yet: a small file read
				// through, not a stream; no readahead.
				return 1, 0
			}
			ra := int64(min(1<<min(s.run, 6), readaheadMax, r.mergeLimit()))
			if s.ahead-last >= ra/2 {
				return 1, 0
			}
			lo, hi = max(last, s.ahead)+1, min(last+ra, nchunks-1)
			if hi >= lo {
				s.ahead = hi
			}
			return lo, hi
		}
	}
	r.seq[r.seqNext] = stream{end: end, seqBytes: end - off}
	r.seqNext = (r.seqNext + 1) % streams
	return 1, 0
}

// claim returns the fetch of every chunk in [first, last], starting GETs
// for runs of missing ones.
func (r *remote) claim(first, last int64) []*chunkFetch {
	return r.claimWith(first, last, false, false)
}

// claimWith is claim for fetches started by readahead (ahead) or by a
// prefetch (low priority).
func (r *remote) claimWith(first, last int64, ahead, low bool) []*chunkFetch {
	out := make([]*chunkFetch, 0, last-first+1)
	var run []int64
	var runF []*chunkFetch
	flush := func() {
		if len(run) > 0 {
			go r.fetchRun(run[0], runF)
			run, runF = nil, nil
		}
	}
	r.mu.Lock()
	for i := first; i <= last; i++ {
		cf := r.chunks[i]
		if cf != nil {
			select {
			case <-cf.done:
				if cf.err != nil { // a failed fetch is retried by the next reader
					cf = nil
				}
			default:
			}
		}
		if cf == nil {
			cf = &chunkFetch{ahead: ahead, low: low, done: make(chan struct{})}
			r.chunks[i] = cf
			run, runF = append(run, i), append(runF, cf)
			if len(run) >= r.mergeLimit() {
				flush()
			}
		} else {
			flush()
		}
		out = append(out, cf)
	}
	flush()
	r.mu.Unlock()
	return out
}

// fetchRun fetches len(fs) chunks starting at chunk index first.
func (r *remote) fetchRun(first int64, fs []*chunkFetch) {
	if r.store == nil {
		r.fetchRange(first, fs)
		return
	}
	// Chunks the store has are served from it (read in parallel, each
	// reader released as soon as its chunk is in); the misses are fetched
	// in runs of adjacent chunks, in parallel.
	hit := make([]bool, len(fs))
	get := func(i int) {
		idx := first + int64(i)
		buf := make([]byte, r.chunkLen(idx))
		if got, ok := r.store.Get(r.storeKey, idx, buf); ok && got == len(buf) {
			hit[i] = true
			r.storeHits.Add(1)
			r.finish(idx, []*chunkFetch{fs[i]}, buf, nil)
			r.markStored(idx, 1)
		}
	}
	if len(fs) == 1 {
		get(0)
	} else {
		var gw sync.WaitGroup
		for i := range fs {
			gw.Add(1)
			go func() { defer gw.Done(); get(i) }()
		}
		gw.Wait()
	}
	var wg sync.WaitGroup
	runStart := -1
	flush := func(end int) {
		if runStart >= 0 {
			a, sub := first+int64(runStart), fs[runStart:end]
			wg.Add(1)
			go func() { defer wg.Done(); r.fetchRange(a, sub) }()
			runStart = -1
		}
	}
	for i := range fs {
		if hit[i] {
			flush(i)
			continue
		}
		if runStart < 0 {
			runStart = i
		}
	}
	flush(len(fs))
	wg.Wait()
}

// markStored notes n chunks from first as stored; when every chunk of an
// OCI blob has been, its digest is checked once in the background.
func (r *remote) markStored(first int64, n int) {
	if r.digest == "" || r.store == nil {
		return
	}
	nchunks := (r.size + r.chunk - 1) / r.chunk
	r.mu.Lock()
	if r.stored == nil {
		r.stored = map[int64]bool{}
	}
	for i := 0; i < n; i++ {
		r.stored[first+int64(i)] = true
	}
	start := !r.verifying && !r.verified && int64(len(r.stored)) == nchunks
	var done chan struct{}
	if start {
		r.verifying = true
		done = make(chan struct{})
		r.verifyDone = done
	}
	r.mu.Unlock()
	if start {
		go func() {
			defer close(done)
			r.verifyDigest()
		}()
	}
}

// verifyDigest hashes the stored chunks of an OCI blob. A mismatch drops
// them all (they are refetched) and is reported; a chunk evicted meanwhile
// just ends the check, which runs again when the blob is whole again.
func (r *remote) verifyDigest() {
	h := sha256.New()
	buf := make([]byte, r.chunk)
	nchunks := (r.size + r.chunk - 1) / r.chunk
	for i := int64(0); i < nchunks; i++ {
		n := r.chunkLen(i)
		if got, ok := r.store.Get(r.storeKey, i, buf[:n]); !ok || got != n {
			r.mu.Lock()
			r.verifying = false
			delete(r.stored, i)
			r.mu.Unlock()
			return
		}
		h.Write(buf[:n])
	}
	var err error
	if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); got == r.digest {
		r.mu.Lock()
		r.verified, r.verifying = true, false
		r.mu.Unlock()
		r.store.PutMeta(r.verifiedKey(), []byte("yes"))
	} else {
		err = fmt.Errorf("%s: cached bytes hash to %s, not its digest; its chunks were dropped and will be refetched", r.name, got)
		r.store.Drop(r.storeKey)
		r.mu.Lock()
		r.stored, r.verifying = nil, false
		r.mu.Unlock()
	}
	if r.onDigest != nil {
		r.onDigest(r.name, err)
	}
}

// verifiedKey names the record saying the stored chunks passed the digest
// check (kept across restarts, so a warm restart does not hash again).
func (r *remote) verifiedKey() string { return "verified:" + r.storeKey }

// chunkLen is the length of chunk idx (the last one may be short).
func (r *remote) chunkLen(idx int64) int {
	start := idx * r.chunk
	return int(min(start+r.chunk, r.size) - start)
}

// fetchRange fetches len(fs) chunks from index first with one ranged GET
// (and its retries), stores them, and completes their fetches.
func (r *remote) fetchRange(first int64, fs []*chunkFetch) {
	start := first * r.chunk
	end := min(start+int64(len(fs))*r.chunk, r.size) // exclusive
	buf, err := r.get(start, end, fs)
	if err == nil && r.store != nil && r.digest != "" {
		// Bytes from the network: the blob's digest check is due again
		// once it is whole in the store.
		r.mu.Lock()
		was := r.verified
		r.verified = false
		r.mu.Unlock()
		if was {
			r.store.PutMeta(r.verifiedKey(), []byte("no"))
		}
	}
	if err == nil && r.store != nil {
		for i := range fs {
			lo := int64(i) * r.chunk
			r.store.Put(r.storeKey, first+int64(i), buf[lo:min(lo+r.chunk, int64(len(buf)))])
		}
	}
	r.finish(first, fs, buf, err)
	if err == nil {
		r.markStored(first, len(fs))
	}
}

// finish completes the fetches of len(fs) chunks from index first with
// their bytes (buf) or err.
func (r *remote) finish(first int64, fs []*chunkFetch, buf []byte, err error) {
	r.mu.Lock()
	for i, cf := range fs {
		if err != nil {
			cf.err = err
			continue
		}
		lo := int64(i) * r.chunk
		cf.data = buf[lo:min(lo+r.chunk, int64(len(buf)))]
	}
	if err != nil {
		for i := range fs {
			if r.chunks[first+int64(i)] == fs[i] {
				delete(r.chunks, first+int64(i))
			}
		}
	}
	r.mu.Unlock()
	for _, cf := range fs {
		close(cf.done)
	}
	if err == nil {
		r.keep.add(r, first, len(fs), int64(len(buf)))
	}
}

// drop forgets chunk i if it is the fetched chunk cf (the keeper's budget
// ran out). Readers already holding cf keep its data.
func (r *remote) drop(i int64, cf *chunkFetch) {
	r.mu.Lock()
	if r.chunks[i] == cf {
		delete(r.chunks, i)
	}
	r.mu.Unlock()
}

// keeper bounds the fetched chunks all blobs of an Opener keep in memory,
// oldest dropped first.
type keeper struct {
	mu    sync.Mutex
	max   int64
	bytes int64
	fifo  []kept
}

type kept struct {
	r  *remote
	i  int64
	cf *chunkFetch
	n  int64
}

func newKeeper(chunk int64) *keeper { return &keeper{max: max(keptBytes, keptChunks*chunk)} }

// add records n fetched chunks of r from index first (total bytes) and
// drops the oldest beyond the budget. It must not be called with r.mu held.
func (k *keeper) add(r *remote, first int64, n int, total int64) {
	r.mu.Lock()
	var cfs []*chunkFetch
	for i := 0; i < n; i++ {
		cfs = append(cfs, r.chunks[first+int64(i)])
	}
	r.mu.Unlock()
	k.mu.Lock()
	for i, cf := range cfs {
		if cf == nil {
			continue
		}
		sz := int64(len(cf.data))
		k.fifo = append(k.fifo, kept{r: r, i: first + int64(i), cf: cf, n: sz})
		k.bytes += sz
	}
	var out []kept
	for k.bytes > k.max && len(k.fifo) > 0 {
		out = append(out, k.fifo[0])
		k.bytes -= k.fifo[0].n
		k.fifo[0] = kept{}
		k.fifo = k.fifo[1:]
	}
	if cap(k.fifo) > 4*len(k.fifo)+64 { // let the dropped prefix go
		k.fifo = append([]kept(nil), k.fifo...)
	}
	k.mu.Unlock()
	for _, e := range out {
		e.r.drop(e.i, e.cf)
	}
}

// retryable marks an attempt's failure as worth another try.
type retryable struct {
	err   error
	after time.Duration // server's Retry-After, if any
}

func (e *retryable) Error() string { return e.err.Error() }
func (e *retryable) Unwrap() error { return e.err }

// get fetches bytes [start, end) with retries and exponential backoff.
func (r *remote) get(start, end int64, fs []*chunkFetch) ([]byte, error) {
	var last error
	backoff := r.retryBase
	for attempt := 0; attempt <= r.retries; attempt++ {
		if attempt > 0 {
			r.nretries.Add(1)
			r.obs.FetchRetry(r.name)
			d := backoff + rand.N(backoff/2+1)
			var rt *retryable
			if errors.As(last, &rt) && rt.after > d {
				d = min(rt.after, 30*time.Second)
			}
			time.Sleep(d)
			backoff = min(backoff*2, 5*time.Second)
		}
		buf, err := r.attempt(start, end, fs)
		if err == nil && r.sums != nil {
			if err = r.sums.check(r.id, r.size, start/r.chunk, buf); err != nil {
				err = &retryable{err: err} // maybe one bad copy: ask again
			}
		}
		if err == nil {
			r.bytes.Add(uint64(len(buf)))
			return buf, nil
		}
		last = err
		var rt *retryable
		if !errors.As(err, &rt) {
			break
		}
	}
	r.errs.Add(1)
	r.obs.FetchFailed(r.name)
	return nil, fmt.Errorf("%s: read bytes %d-%d: %w", r.name, start, end-1, last)
}

// attempt is one checked ranged GET: 206, exactly the Content-Range asked
// for, exactly that many bytes. Anything else is an error, never data.
func (r *remote) attempt(start, end int64, fs []*chunkFetch) (buf []byte, err error) {
	if len(fs) > 0 && fs[0].low {
		r.host.acquireLow(fs)
	} else {
		r.host.acquire()
	}
	defer r.host.release()
	r.requests.Add(1)
	r.inflight.Add(1)
	r.obs.FetchStart(r.name)
	t0 := time.Now()
	defer func() {
		r.inflight.Add(-1)
		r.obs.FetchDone(r.name, len(buf), time.Since(t0), err)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), r.host.reqTimeout(end-start))
	defer cancel()
	// A request that makes no progress for the stall timeout (no answer,
	// or no body bytes) is cancelled and retried.
	stall := time.AfterFunc(r.stall, cancel)
	defer stall.Stop()
	resp, err := r.req.do(ctx, fmt.Sprintf("bytes=%d-%d", start, end-1), r.validator)
	if err != nil {
		if !stall.Stop() {
			err = fmt.Errorf("no progress for %v: %w", r.stall, err)
		}
		return nil, &retryable{err: err}
	}
	defer resp.Body.Close()
	resp.Body = &progressBody{ReadCloser: resp.Body, t: stall, d: r.stall}
	if err := statusError(resp, r.req.where()); err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusPartialContent {
		if resp.StatusCode == http.StatusOK && r.validator != "" {
			return nil, fmt.Errorf("%s changed on the server (If-Range %s no longer matches)", r.req.where(), r.validator)
		}
		return nil, &retryable{err: fmt.Errorf("%s: ranged GET answered %s, want 206", r.req.where(), resp.Status)}
	}
	a, b, total, err := parseContentRange(resp.Header.Get("Content-Range"))
	if err != nil || a != start || b != end-1 || total != r.size {
		return nil, &retryable{err: fmt.Errorf("%s: Content-Range %q, asked bytes=%d-%d/%d", r.req.where(), resp.Header.Get("Content-Range"), start, end-1, r.size)}
	}
	buf = make([]byte, end-start)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		return nil, &retryable{err: fmt.Errorf("%s: short body for bytes=%d-%d: %v", r.req.where(), start, end-1, err)}
	}
	if n, _ := resp.Body.Read(make([]byte, 1)); n != 0 {
		return nil, &retryable{err: fmt.Errorf("%s: body longer than bytes=%d-%d", r.req.where(), start, end-1)}
	}
	return buf, nil
}

// progressBody restarts the stall timer whenever bytes arrive.
type progressBody struct {
	io.ReadCloser
	t *time.Timer
	d time.Duration
}

func (b *progressBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.t.Reset(b.d)
	}
	return n, err
}

// statusError classifies a non-2xx status: 5xx and 429 are retried.
func statusError(resp *http.Response, where string) error {
	c := resp.StatusCode
	if c >= 200 && c < 300 {
		return nil
	}
	err := fmt.Errorf("%s: %s", where, resp.Status)
	if c >= 500 || c == http.StatusTooManyRequests || c == http.StatusRequestTimeout {
		rt := &retryable{err: err}
		if s := resp.Header.Get("Retry-After"); s != "" {
			if secs, e := strconv.Atoi(s); e == nil && secs >= 0 {
				rt.after = time.Duration(secs) * time.Second
			} else if t, e := http.ParseTime(s); e == nil {
				rt.after = time.Until(t)
			}
		}
		return rt
	}
	return err
}

// parseContentRange parses "bytes a-b/total".
func parseContentRange(s string) (a, b, total int64, err error) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, 0, fmt.Errorf("bad Content-Range %q", s)
	}
	rng, tot, ok := strings.Cut(rest, "/")
	as, bs, ok2 := strings.Cut(rng, "-")
	if !ok || !ok2 {
		return 0, 0, 0, fmt.Errorf("bad Content-Range %q", s)
	}
	if a, err = strconv.ParseInt(as, 10, 64); err == nil {
		if b, err = strconv.ParseInt(bs, 10, 64); err == nil {
			total, err = strconv.ParseInt(tot, 10, 64)
		}
	}
	if err != nil || a < 0 || b < a || total <= b {
		return 0, 0, 0, fmt.Errorf("bad Content-Range %q", s)
	}
	return a, b, total, nil
}

// probe asks for byte 0 to learn the size and validator and to check that
// ranges work.
func (o *Opener) probe(ctx context.Context, req requester, name, id string, h *host) (*remote, error) {
	r := &remote{name: name, chunk: o.opt.Chunk, req: req, host: h, retries: o.opt.Retries, retryBase: o.opt.RetryBase, stall: o.opt.StallTimeout,
		obs: o.opt.Observer, keep: o.keep, store: o.opt.Store, onDigest: o.digestChecked, chunks: map[int64]*chunkFetch{}, sums: &o.sums}
	metaKey := "meta:" + name
	if id != "" {
		metaKey = "meta:" + id
	}
	if sz, ok := o.knownSizes.Load(id); ok && strings.HasPrefix(id, "oci:") {
		// The size is in a manifest that was digest-checked: no probe.
		r.size = sz.(int64)
		return r.finishProbe(id), nil
	}
	if r.store != nil && strings.HasPrefix(id, "oci:") {
		// A digest-pinned blob never changes: with its size stored it
		// opens without asking the registry (a warm restart sends nothing).
		if meta, ok := r.storedMeta(metaKey); ok {
			r.size = meta.Size
			return r.finishProbe(id), nil
		}
	}
	var resp *http.Response
	var err error
	for attempt := 0; ; attempt++ {
		h.acquire()
		resp, err = req.do(ctx, "bytes=0-0", "")
		h.release()
		if err == nil {
			if err = statusError(resp, req.where()); err != nil {
				resp.Body.Close()
			}
		}
		var rt *retryable
		if err == nil || attempt >= min(o.opt.Retries, 2) || (!errors.As(err, &rt) && resp != nil) {
			break
		}
		time.Sleep(time.Duration(200*(attempt+1)) * time.Millisecond)
	}
	if err != nil {
		// Unreachable (not refused): a blob whose size the store knows
		// opens anyway and serves what is cached.
		var rt *retryable
		if r.store != nil && (resp == nil || errors.As(err, &rt)) {
			if meta, ok := r.storedMeta(metaKey); ok {
				o.opt.Logger.Warn("remote source unreachable; serving it from the disk cache", "source", name, "err", err)
				r.size, r.validator = meta.Size, meta.Validator
				return r.finishProbe(id), nil
			}
		}
		return nil, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	switch resp.StatusCode {
	case http.StatusPartialContent:
		_, _, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil {
			return nil, fmt.Errorf("%s: %v", req.where(), err)
		}
		r.size = total
	case http.StatusRequestedRangeNotSatisfiable:
		return nil, fmt.Errorf("%s: empty object", req.where())
	default:
		return nil, fmt.Errorf("%s: server does not support Range requests (answered %s)", req.where(), resp.Status)
	}
	if et := resp.Header.Get("ETag"); et != "" && !strings.HasPrefix(et, "W/") {
		r.validator = et
	} else if lm := resp.Header.Get("Last-Modified"); lm != "" {
		r.validator = lm
	}
	r.finishProbe(id)
	if r.store != nil && r.storeKey != "" {
		m, _ := json.Marshal(blobMeta{Size: r.size, Validator: r.validator})
		r.store.PutMeta(metaKey, m)
	}
	return r, nil
}

// blobMeta is what the store keeps to open a blob offline.
type blobMeta struct {
	Size      int64  `json:"size"`
	Validator string `json:"validator,omitempty"`
}

// storedMeta returns the blob's size and validator kept in the store.
func (r *remote) storedMeta(key string) (blobMeta, bool) {
	var meta blobMeta
	m, ok := r.store.GetMeta(key)
	return meta, ok && json.Unmarshal(m, &meta) == nil && meta.Size > 0
}

// finishProbe sets the identity and the store key once size and validator
// are known. An OCI blob is named by its digest; an HTTP object by URL,
// validator and size, and without a validator it is not stored (a
// changed object could not be told from the old one).
func (r *remote) finishProbe(id string) *remote {
	r.id = id
	if r.id == "" {
		r.id = fmt.Sprintf("http:%s:%s:%d", r.name, r.validator, r.size)
	}
	switch {
	case r.store == nil:
	case strings.HasPrefix(id, "oci:"):
		r.storeKey = fmt.Sprintf("%s/%d/c%d", id, r.size, r.chunk)
		if d := strings.TrimPrefix(id, "oci:"); strings.HasPrefix(d, "sha256:") {
			r.digest = d
			if v, ok := r.store.GetMeta(r.verifiedKey()); ok && string(v) == "yes" {
				r.verified = true
			}
		}
	case r.validator != "":
		h := sha256.Sum256([]byte(r.id))
		r.storeKey = fmt.Sprintf("http:%x/c%d", h[:16], r.chunk)
	default:
		r.store = nil
	}
	return r
}

// redact drops user info and the query (presigned URLs carry secrets there).
func redact(u *url.URL) string {
	c := *u
	c.User = nil
	if c.RawQuery != "" {
		c.RawQuery = "…"
	}
	c.Fragment = ""
	return c.String()
}

// host bounds concurrent requests to one host.
type host struct {
	sem    chan struct{}
	demand atomic.Int32 // demand requests waiting for a slot
}

func (h *host) acquire() {
	h.demand.Add(1)
	h.sem <- struct{}{}
	h.demand.Add(-1)
}

// acquireLow takes a slot for a prefetch: only while no demand request
// waits and one slot stays free for demand, unless a reader now waits
// for one of the prefetch's chunks.
func (h *host) acquireLow(fs []*chunkFetch) {
	for {
		wanted := false
		for _, cf := range fs {
			wanted = wanted || cf.wanted.Load()
		}
		if wanted {
			h.acquire()
			return
		}
		if h.demand.Load() == 0 && len(h.sem) < max(cap(h.sem)-1, 1) {
			select {
			case h.sem <- struct{}{}:
				return
			default:
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
}
func (h *host) release() { <-h.sem }

// reqTimeout is the deadline of one attempt: generous for its size, so a
// stalled transfer fails and is retried instead of hanging.
func (h *host) reqTimeout(n int64) time.Duration {
	return 30*time.Second + time.Duration(n/(1<<20))*2*time.Second
}

type hostPool struct {
	opt Options
	mu  sync.Mutex
	m   map[string]*host
}

func newHostPool(opt Options) *hostPool { return &hostPool{opt: opt, m: map[string]*host{}} }

func (p *hostPool) get(hostport string) *host {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.m[hostport]
	if h == nil {
		h = &host{sem: make(chan struct{}, p.opt.Parallel)}
		p.m[hostport] = h
	}
	return h
}
