// Package diskcache is a persistent, bounded, crash-safe store of blob
// chunks (and small metadata records) on local disk, for remote blobs that
// should survive a restart and be readable offline.
//
// # Layout
//
//	dir/lock                       flock(LOCK_EX) while open; holds the owner's pid
//	dir/tmp/<pid>-<n>              records being written (removed at Open)
//	dir/chunks/<hh>/<h>-<idx>      one file per chunk: h = hex of the first
//	                               16 bytes of sha256(key), hh = its first 2 digits
//	dir/meta/<h>                   one file per metadata record
//
// Every file is one record (record.go): a header naming its kind, the full
// key, the chunk index and the data length, then the data, then a CRC32C
// of all of it. A record is written to dir/tmp and renamed into place, with
// no fsync: after a crash a file may be missing, empty, short or garbage,
// never a different valid record, and Get checks length, header (kind, key,
// index, length) and CRC before it returns a byte. A file that fails is
// deleted and counted in CheckFailures; the caller sees a miss and fetches
// again. A hash collision, or a file copied or renamed to another chunk's
// name, fails the key or index check the same way.
//
// # Index
//
// The index (which chunks exist, their sizes, the eviction order) lives in
// memory and is rebuilt at Open by listing the 256 chunk directories (names
// and sizes only; records are checked when read), so there is no journal to
// lose or garble: the directory is the index. Files too short to be a
// record or with names that are not ours are removed at Open (the 256
// directories are listed by 8 goroutines; 10,000 chunks take 0.1-0.25 s on
// a small VM, about what ls -lR of the tree takes). The eviction order and
// hit counts survive a restart through dir/state (state.go), which also
// says which records were checked in this boot; chunks it does not list
// (written after its last save, or all of them if it is lost) enter the
// main queue after those it lists, oldest mtime first, with no hits.
//
// Get opens the file under the index lock, so it reads the file the index
// names; once open, the file stays readable if it is evicted or dropped
// meanwhile (a Get racing a Drop may return the dropped chunk's bytes).
// Lease hands such an open, checked file to the caller (for sendfile).
//
// # Eviction
//
// S3-FIFO at chunk granularity, as in package cache: new chunks enter a
// small FIFO (10% of the bytes); one evicted from it that was hit meanwhile
// moves to the main FIFO, otherwise it is deleted and its name remembered in
// a ghost FIFO; a chunk whose name is a ghost goes straight to main. Main
// evicts with second chances (2-bit frequency). A one-time sequential scan
// of a big blob therefore flows through the small FIFO without flushing the
// hot set. Pinned chunks are skipped (a Put that finds only pinned chunks
// to evict is skipped). A Put reserves its record's size (evicting first,
// unlinking under the index lock) before it writes its tmp file and keeps
// the reservation until the tmp file is renamed or deleted, so the bytes of
// chunk records and tmp files on disk never exceed maxBytes, except for
// records deleted while a Get still has them open. Bytes count record
// lengths (data + 28 bytes + the key), not file system blocks.
//
// # Errors
//
// Put and PutMeta are best effort: errors (disk full, read-only file
// system, EIO) are counted in WriteErrors and logged once per kind, never
// returned, and Get keeps working.
package diskcache

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Options configure a Cache.
type Options struct {
	// Logger receives the first error of each kind; nil: slog.Default().
	Logger *slog.Logger
}

// Stats are a cache's counters.
type Stats struct {
	Bytes    int64 // bytes of chunk records on disk or reserved by writes in flight
	Entries  int64 // chunks present
	MaxBytes int64

	Hits, Misses  uint64
	Evictions     uint64 // chunks deleted to make room (not Drop, not damage)
	CheckFailures uint64 // damaged or missing files found (each is a miss)
	WriteErrors   uint64 // failed writes (Put, PutMeta)
	ReadErrors    uint64 // I/O errors reading a file (each is a miss)
	Skips         uint64 // Puts not stored: larger than the cache, or no room (all pinned)
	Checks        uint64 // records read whole and CRC-checked (first read in a boot, or the file changed)
}

// hkey is the hash of a key: the first 16 bytes of its sha256.
type hkey [16]byte

func hashKey(key string) hkey {
	s := sha256.Sum256([]byte(key))
	return hkey(s[:16])
}

// ckey names a chunk in the index.
type ckey struct {
	h   hkey
	idx int64
}

const (
	qNone uint8 = iota
	qSmall
	qMain
)

type entry struct {
	ck         ckey
	size       int64 // record file length
	present    bool  // false: being written (reserved)
	q          uint8
	freq       uint8
	trusted    bool // the record is known good while its file has stamp checked (state.go)
	pending    bool // it will be once a syncfs confirms the write-back
	checked    stamp
	prev, next *entry
}

type list struct {
	head, tail *entry // pop at head (oldest), push at tail
	bytes      int64
	n          int
}

func (l *list) push(e *entry) {
	e.prev, e.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
	l.bytes += e.size
	l.n++
}

func (l *list) remove(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next = nil, nil
	l.bytes -= e.size
	l.n--
}

// Cache is an open disk cache. Its methods are safe for concurrent use.
type Cache struct {
	dir, chunkDir, metaDir, tmpDir string
	max, smallMax                  int64
	log                            *slog.Logger
	lockFile                       *os.File

	mu       sync.Mutex
	closed   bool
	m        map[ckey]*entry
	small    list
	main     list
	bytes    int64 // small + main + reserved
	pins     map[ckey]int
	ghost    map[ckey]uint64 // name -> sequence number in ghostQ
	ghostQ   []ckey
	ghostSeq uint64 // sequence number of ghostQ[0]
	writers  sync.WaitGroup
	logged   map[string]bool

	tmpSeq atomic.Uint64

	hits, misses, evictions, checkFailures, writeErrors, readErrors, skips, checks atomic.Uint64

	// State file (state.go): boot is this boot's id; gen counts changes,
	// savedGen is the gen last saved (guarded by saveMu).
	boot      []byte
	gen       atomic.Uint64
	saveMu    sync.Mutex
	savedGen  uint64
	stopSaver chan struct{}
	saverDone chan struct{}
	syncFile  *os.File // the directory, open since Open: syncfs reports write-back errors since then
	npending  int      // entries pending trust (guarded by mu)

	// hookWritten, if set (tests), runs after a chunk's tmp file is
	// written and before it is renamed into place.
	hookWritten func(key string, idx int64)
}

// Open opens or creates the cache in dir, bounded to maxBytes of chunk
// records on disk. It takes an exclusive flock on dir/lock: a second Open
// of the same dir, in this process or another, fails with an error naming
// the dir and the pid holding it. If dir is on a read-only file system the
// cache opens read-only: Gets work, Puts are counted as write errors.
func Open(dir string, maxBytes int64, opt Options) (*Cache, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("diskcache %s: size must be positive, not %d", dir, maxBytes)
	}
	c := &Cache{
		dir:      dir,
		chunkDir: filepath.Join(dir, "chunks"),
		metaDir:  filepath.Join(dir, "meta"),
		tmpDir:   filepath.Join(dir, "tmp"),
		max:      maxBytes,
		smallMax: max(maxBytes/10, 1),
		log:      opt.Logger,
		m:        make(map[ckey]*entry),
		pins:     make(map[ckey]int),
		ghost:    make(map[ckey]uint64),
		logged:   make(map[string]bool),
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("diskcache %s: %w", dir, err)
	}
	if err := c.lock(); err != nil {
		return nil, err
	}
	c.boot = readBootID()
	if err := c.load(); err != nil {
		c.unlock()
		return nil, err
	}
	c.savedGen = c.gen.Load()
	if f, err := os.Open(dir); err == nil {
		c.syncFile = f
	}
	c.stopSaver, c.saverDone = make(chan struct{}), make(chan struct{})
	go c.saver(c.stopSaver, c.saverDone)
	return c, nil
}

// lock takes the exclusive lock on dir/lock and records our pid in it.
func (c *Cache) lock() error {
	path := filepath.Join(c.dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	readOnly := false
	if err != nil && (errors.Is(err, syscall.EROFS) || errors.Is(err, os.ErrPermission)) {
		f, err = os.Open(path) // a read-only cache: flock works on a read-only fd
		readOnly = true
	}
	if err != nil {
		return fmt.Errorf("diskcache %s: lock: %w", c.dir, err)
	}
	if err := flock(f); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := "another process"
			if b, rerr := os.ReadFile(path); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
					holder = "pid " + strconv.Itoa(pid)
					if pid == os.Getpid() {
						holder += " (this process)"
					}
				}
			}
			return fmt.Errorf("diskcache %s is in use by %s: lock file %s is held", c.dir, holder, path)
		}
		return fmt.Errorf("diskcache %s: lock: %w", c.dir, err)
	}
	if !readOnly {
		// Best effort: the pid only improves the error above.
		if f.Truncate(0) == nil {
			f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		}
	}
	c.lockFile = f
	return nil
}

func (c *Cache) unlock() {
	if c.lockFile != nil {
		funlock(c.lockFile)
		c.lockFile.Close()
		c.lockFile = nil
	}
}

type found struct {
	ck    ckey
	size  int64
	mtime time.Time
	st    stamp
	stOK  bool
}

// load removes leftovers of a crash and rebuilds the index from the
// directory.
func (c *Cache) load() error {
	// We hold the lock: nobody else writes here, every tmp file is a leftover.
	if err := os.RemoveAll(c.tmpDir); err != nil && !isReadOnly(err) {
		return fmt.Errorf("diskcache %s: %w", c.dir, err)
	}
	for _, d := range []string{c.tmpDir, c.metaDir, c.chunkDir} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, os.ErrExist) && !isReadOnly(err) {
			return fmt.Errorf("diskcache %s: %w", c.dir, err)
		}
	}
	// The 256 directories are listed by a few goroutines: the stats are
	// independent, and overlapping them matters on a cold or slow disk.
	var (
		all  []found
		fail error
		mu   sync.Mutex
		wg   sync.WaitGroup
		next atomic.Int32
	)
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= 256 {
					return
				}
				f, err := c.scanDir(i)
				mu.Lock()
				all = append(all, f...)
				if err != nil && fail == nil {
					fail = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if fail != nil {
		return fail
	}
	// The order the state file gives, then the rest by mtime.
	boot, pos, order := c.loadState()
	sameBoot := len(boot) > 0 && bytes.Equal(boot, c.boot)
	rank := func(f found) int {
		if i, ok := pos[f.ck]; ok {
			return i
		}
		return len(order)
	}
	slices.SortFunc(all, func(a, b found) int {
		if c := cmp.Compare(rank(a), rank(b)); c != 0 {
			return c
		}
		if c := a.mtime.Compare(b.mtime); c != 0 {
			return c
		}
		return cmpKey(a.ck, b.ck)
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range all {
		e := &entry{ck: f.ck, size: f.size, present: true, q: qMain}
		if i, ok := pos[f.ck]; ok {
			se := order[i]
			e.freq = se.freq
			if sameBoot && se.trusted && f.stOK && se.st == f.st && f.st.size == f.size {
				e.trusted, e.checked = true, se.st
			}
		}
		c.m[f.ck] = e
		c.main.push(e)
		c.bytes += f.size
	}
	for c.bytes > c.max && c.evictOne() {
	}
	return nil
}

// scanDir lists chunk directory i, removing what is not a record of ours.
func (c *Cache) scanDir(i int) ([]found, error) {
	sub := filepath.Join(c.chunkDir, fmt.Sprintf("%02x", i))
	ents, err := os.ReadDir(sub)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // made by the first Put into it
	}
	if err != nil {
		return nil, fmt.Errorf("diskcache %s: %w", c.dir, err)
	}
	var out []found
	for _, de := range ents {
		path := filepath.Join(sub, de.Name())
		ck, ok := parseName(de.Name())
		if !ok || ck.h[0] != byte(i) || !de.Type().IsRegular() {
			os.Remove(path) // not ours (or a leftover of another version)
			continue
		}
		info, err := de.Info()
		if err != nil {
			continue // vanished
		}
		if info.Size() < minRecord {
			c.checkFailures.Add(1)
			os.Remove(path)
			continue
		}
		st, stOK := stampOf(info)
		out = append(out, found{ck, info.Size(), info.ModTime(), st, stOK})
	}
	return out, nil
}

func isReadOnly(err error) bool {
	return errors.Is(err, syscall.EROFS)
}

func cmpKey(a, b ckey) int {
	if c := bytes.Compare(a.h[:], b.h[:]); c != 0 {
		return c
	}
	return cmp.Compare(a.idx, b.idx)
}

// chunkName is the file name of a chunk, parseName its inverse.
func chunkName(ck ckey) string {
	return hex.EncodeToString(ck.h[:]) + "-" + strconv.FormatInt(ck.idx, 10)
}

func parseName(name string) (ckey, bool) {
	var ck ckey
	h, idx, ok := strings.Cut(name, "-")
	if !ok || len(h) != 32 {
		return ck, false
	}
	if _, err := hex.Decode(ck.h[:], []byte(h)); err != nil || hex.EncodeToString(ck.h[:]) != h {
		return ck, false
	}
	n, err := strconv.ParseInt(idx, 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != idx {
		return ck, false
	}
	ck.idx = n
	return ck, true
}

func (c *Cache) chunkPath(ck ckey) string {
	return filepath.Join(c.chunkDir, hex.EncodeToString(ck.h[:1]), chunkName(ck))
}

func (c *Cache) metaPath(h hkey) string {
	return filepath.Join(c.metaDir, hex.EncodeToString(h[:]))
}

func (c *Cache) tmpPath() string {
	return filepath.Join(c.tmpDir, strconv.Itoa(os.Getpid())+"-"+strconv.FormatUint(c.tmpSeq.Add(1), 10))
}

// Get reads chunk idx of blob key into p and returns its length. ok is true
// only if the chunk is present, fits in p and its record checks out; a
// damaged record is deleted and counted. On a miss p's content is
// unspecified.
func (c *Cache) Get(key string, idx int64, p []byte) (n int, ok bool) {
	o, ok := c.openChunk(key, idx, int64(len(p)), true)
	if !ok {
		return 0, false
	}
	defer o.f.Close()
	if !c.readChunk(&o, key, idx, p[:o.dl]) {
		return 0, false
	}
	c.hits.Add(1)
	return int(o.dl), true
}

// Lease opens chunk idx of blob key for reading in place (sendfile): its
// data are the n bytes of f at off. The record is checked as Get checks it
// (a trusted one, state.go, only by its stamp), and f stays readable after
// an eviction or Drop. The caller closes f. A chunk that is not there is
// not counted as a miss (the caller reads with Get next, which counts it);
// damage is.
func (c *Cache) Lease(key string, idx int64) (f *os.File, off, n int64, ok bool) {
	o, ok := c.openChunk(key, idx, maxData, false)
	if !ok {
		return nil, 0, 0, false
	}
	if !c.readChunk(&o, key, idx, nil) {
		o.f.Close()
		return nil, 0, 0, false
	}
	c.hits.Add(1)
	return o.f, int64(hdrFixed + len(key)), o.dl, true
}

// leaseBufs are scratch buffers for checking leased records.
var leaseBufs = sync.Pool{New: func() any { return new([]byte) }}

// opened is a chunk file opened under the index lock.
type opened struct {
	f       *os.File
	e       *entry
	path    string
	dl      int64 // data length
	trusted bool  // e.checked was trusted (or pending) when opened
	st      stamp
}

// openChunk opens the record of (key, idx) if the index has it and its
// data fits in limit bytes; misses are counted if count.
func (c *Cache) openChunk(key string, idx, limit int64, count bool) (opened, bool) {
	miss := func() {
		if count {
			c.misses.Add(1)
		}
	}
	if len(key) > MaxKey || idx < 0 {
		miss()
		return opened{}, false
	}
	ck := ckey{hashKey(key), idx}
	path := c.chunkPath(ck)
	c.mu.Lock()
	e := c.m[ck]
	if c.closed || e == nil || !e.present {
		c.mu.Unlock()
		miss()
		return opened{}, false
	}
	dl := e.size - int64(hdrFixed+len(key)+trailerLen)
	if dl < 0 || dl > limit {
		c.mu.Unlock()
		if dl < 0 {
			// The file cannot hold this key: not our record.
			c.damaged(e, path)
		}
		miss()
		return opened{}, false
	}
	// Opened under the lock, so the file is the one the index names; once
	// open it stays readable even if evicted meanwhile.
	f, err := os.Open(path)
	if err == nil && e.freq < 3 {
		e.freq++
		c.gen.Add(1)
	}
	// A pending record is trusted in this process already: it was written
	// or checked here; only the state file waits for the syncfs.
	o := opened{f: f, e: e, path: path, dl: dl, trusted: e.trusted || e.pending, st: e.checked}
	c.mu.Unlock()
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			c.damaged(e, path) // deleted behind our back
		} else {
			c.readErrors.Add(1)
		}
		miss()
		return opened{}, false
	}
	return o, true
}

// readChunk reads an opened record's data into data (len o.dl). A record
// trusted with the stamp the file still has is only read (data nil: not
// even that, Lease); any other is read whole (data nil: into a scratch
// buffer) and checked, and trusted from then on if its stamp is old enough. On failure the miss is counted (and
// damage handled).
func (c *Cache) readChunk(o *opened, key string, idx int64, data []byte) bool {
	st, stOK := fstamp(o.f)
	if o.trusted && stOK && st == o.st {
		if data == nil {
			return true
		}
		if _, err := o.f.ReadAt(data, int64(hdrFixed+len(key))); err != nil {
			c.readFailed(o.e, o.path, err)
			return false
		}
		return true
	}
	if data == nil { // Lease: check it in a scratch buffer
		bp := leaseBufs.Get().(*[]byte)
		defer leaseBufs.Put(bp)
		if int64(cap(*bp)) < o.dl {
			*bp = make([]byte, o.dl)
		}
		data = (*bp)[:o.dl]
	}
	o.trusted = false
	now := time.Now()
	c.checks.Add(1)
	hdr := make([]byte, hdrFixed+len(key))
	var trb [trailerLen + 1]byte // one more: the file must end with the CRC
	tr := trb[:]
	if _, err := o.f.ReadAt(hdr, 0); err != nil {
		c.readFailed(o.e, o.path, err)
		return false
	}
	if _, err := o.f.ReadAt(data, int64(len(hdr))); err != nil {
		c.readFailed(o.e, o.path, err)
		return false
	}
	if n, err := o.f.ReadAt(tr, int64(len(hdr))+o.dl); n != trailerLen || err != io.EOF {
		if err == nil {
			err = io.EOF // longer than its record: garbage appended
		}
		c.readFailed(o.e, o.path, err)
		return false
	}
	tr = tr[:trailerLen]
	if !checkHeader(hdr, kindChunk, key, idx, o.dl) || !checkCRC(hdr, data, tr) {
		c.damaged(o.e, o.path)
		c.misses.Add(1)
		return false
	}
	// The stamp taken before the reads: a change during them makes the
	// file's stamp differ from it later.
	if stOK && st.size == o.e.size && trustworthy(st, now) {
		c.mu.Lock()
		if c.m[o.e.ck] == o.e {
			if !o.e.pending {
				c.npending++
			}
			o.e.trusted, o.e.pending, o.e.checked = false, true, st
		}
		c.mu.Unlock()
	}
	return true
}

func (c *Cache) readFailed(e *entry, path string, err error) {
	if errors.Is(err, io.EOF) {
		c.damaged(e, path) // truncated
	} else {
		c.readErrors.Add(1)
	}
	c.misses.Add(1)
}

// damaged removes e (if it is still the index's entry) and its file.
func (c *Cache) damaged(e *entry, path string) {
	c.checkFailures.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[e.ck] != e || !e.present {
		return // already replaced or gone
	}
	c.removeLocked(e)
	os.Remove(path)
}

// removeLocked takes a present entry out of the index (not the file).
func (c *Cache) removeLocked(e *entry) {
	switch e.q {
	case qSmall:
		c.small.remove(e)
	case qMain:
		c.main.remove(e)
	}
	e.q = qNone
	delete(c.m, e.ck)
	c.bytes -= e.size
	c.gen.Add(1)
	c.unpend(e)
}

// unpend takes a removed entry out of the pending count. c.mu is held.
func (c *Cache) unpend(e *entry) {
	if e.pending {
		e.pending = false
		c.npending--
	}
}

// Put stores data as chunk idx of blob key, if it is not there already.
// It is best effort: failures are counted and logged, never returned.
// data is not retained.
func (c *Cache) Put(key string, idx int64, data []byte) {
	if len(key) > MaxKey || idx < 0 || int64(len(data)) >= maxData {
		c.skips.Add(1)
		return
	}
	ck := ckey{hashKey(key), idx}
	size := recordSize(len(key), len(data))
	c.mu.Lock()
	if c.closed || c.m[ck] != nil {
		c.mu.Unlock() // present or being written: equal content
		return
	}
	if size > c.max {
		c.mu.Unlock()
		c.skips.Add(1)
		return
	}
	for c.bytes+size > c.max {
		if !c.evictOne() {
			c.mu.Unlock()
			c.skips.Add(1)
			return
		}
	}
	e := &entry{ck: ck, size: size}
	c.m[ck] = e
	c.bytes += size
	c.writers.Add(1)
	c.mu.Unlock()
	defer c.writers.Done()

	tmp := c.tmpPath()
	err := writeRecord(tmp, kindChunk, key, idx, data)
	if err == nil && c.hookWritten != nil {
		c.hookWritten(key, idx)
	}
	c.mu.Lock()
	mine := c.m[ck] == e
	if err == nil && mine {
		err = os.Rename(tmp, c.chunkPath(ck))
		if errors.Is(err, os.ErrNotExist) {
			// The first chunk in its directory (or the directory was
			// removed behind our back).
			if os.MkdirAll(filepath.Dir(c.chunkPath(ck)), 0o700) == nil {
				err = os.Rename(tmp, c.chunkPath(ck))
			}
		}
	}
	if err == nil && mine {
		e.present = true
		c.gen.Add(1)
		// What we wrote is what the file holds, once written back.
		if fi, serr := os.Lstat(c.chunkPath(ck)); serr == nil && fi.Size() == size {
			if st, ok := stampOf(fi); ok {
				e.pending, e.checked = true, st
				c.npending++
			}
		}
		if _, ok := c.ghost[ck]; ok {
			delete(c.ghost, ck)
			e.q = qMain
			c.main.push(e)
		} else {
			e.q = qSmall
			c.small.push(e)
		}
		c.mu.Unlock()
		return
	}
	// Failed or dropped meanwhile: delete the tmp file, then release the
	// reservation, so that tmp files are always within the bound too.
	if mine {
		delete(c.m, ck)
	}
	c.mu.Unlock()
	os.Remove(tmp)
	c.mu.Lock()
	c.bytes -= size
	c.mu.Unlock()
	if err != nil {
		c.writeFailed("put", err)
	}
}

// writeRecord writes a record to a new file at path.
func writeRecord(path string, k kind, key string, idx int64, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	hdr := header(k, key, idx, len(data))
	_, err = f.Write(hdr)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		_, err = f.Write(trailer(hdr, data))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// writeFailed counts a write error and logs the first of its kind.
func (c *Cache) writeFailed(op string, err error) {
	c.writeErrors.Add(1)
	kind := "other"
	var errno syscall.Errno
	if errors.As(err, &errno) {
		kind = errno.Error()
	}
	c.mu.Lock()
	first := !c.logged[kind]
	c.logged[kind] = true
	c.mu.Unlock()
	if first {
		c.log.Warn("disk cache write failed; further failures of this kind are only counted",
			"dir", c.dir, "op", op, "kind", kind, "err", err)
	}
}

// evictOne deletes one chunk chosen by S3-FIFO; false: nothing can be
// evicted (empty, or everything pinned). c.mu is held.
func (c *Cache) evictOne() bool {
	// Every step either evicts or moves an entry (promotes it, or spends
	// one of its at most 3 second chances, or skips it as pinned); bound
	// the steps so that an all-pinned cache gives up.
	for steps := 5*(c.small.n+c.main.n) + 8; steps > 0; steps-- {
		if c.small.head != nil && (c.small.bytes > c.smallMax || c.main.head == nil) {
			e := c.small.head
			c.small.remove(e)
			if e.freq > 0 || c.pins[e.ck] > 0 {
				e.freq, e.q = 0, qMain
				c.main.push(e)
				continue
			}
			c.evictLocked(e)
			c.addGhost(e.ck)
			return true
		}
		e := c.main.head
		if e == nil {
			return false
		}
		c.main.remove(e)
		if c.pins[e.ck] > 0 {
			c.main.push(e)
			continue
		}
		if e.freq > 0 {
			e.freq--
			c.main.push(e)
			continue
		}
		c.evictLocked(e)
		return true
	}
	return false
}

// evictLocked deletes an entry already out of its queue.
func (c *Cache) evictLocked(e *entry) {
	e.q = qNone
	delete(c.m, e.ck)
	c.bytes -= e.size
	c.evictions.Add(1)
	c.gen.Add(1)
	c.unpend(e)
	os.Remove(c.chunkPath(e.ck))
}

// addGhost remembers an evicted name, forgetting the oldest beyond as many
// ghosts as chunks present (at least 64). c.mu is held.
func (c *Cache) addGhost(ck ckey) {
	c.ghost[ck] = c.ghostSeq + uint64(len(c.ghostQ))
	c.ghostQ = append(c.ghostQ, ck)
	limit := max(64, c.small.n+c.main.n)
	for len(c.ghostQ) > limit {
		old := c.ghostQ[0]
		if c.ghost[old] == c.ghostSeq {
			delete(c.ghost, old)
		}
		c.ghostQ = c.ghostQ[1:]
		c.ghostSeq++
	}
	if cap(c.ghostQ) > 4*limit { // keep the backing array from growing
		c.ghostQ = slices.Clone(c.ghostQ)
	}
}

// Pin keeps chunk idx of key from being evicted (whether or not it is
// present yet) until unpin is called. Pins nest.
func (c *Cache) Pin(key string, idx int64) (unpin func()) {
	ck := ckey{hashKey(key), idx}
	c.mu.Lock()
	c.pins[ck]++
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			if c.pins[ck]--; c.pins[ck] <= 0 {
				delete(c.pins, ck)
			}
			c.mu.Unlock()
		})
	}
}

// Drop deletes every chunk of blob key (present or being written), for
// example after its digest did not match. Its metadata is kept.
func (c *Cache) Drop(key string) {
	h := hashKey(key)
	c.mu.Lock()
	defer c.mu.Unlock()
	for ck, e := range c.m {
		if ck.h != h {
			continue
		}
		if e.present {
			c.removeLocked(e)
			os.Remove(c.chunkPath(ck))
		} else {
			// Being written: its Put sees it is no longer indexed, deletes
			// its tmp file and only then releases its reservation.
			delete(c.m, ck)
		}
	}
	for ck := range c.ghost {
		if ck.h == h {
			delete(c.ghost, ck)
		}
	}
}

// PutMeta stores a small record (at most MaxMeta bytes) under key,
// replacing any earlier one atomically. Best effort, like Put. Metadata is
// not counted in maxBytes and not evicted.
func (c *Cache) PutMeta(key string, val []byte) {
	if len(key) > MaxKey || len(val) > MaxMeta {
		c.skips.Add(1)
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.writers.Add(1)
	c.mu.Unlock()
	defer c.writers.Done()
	tmp := c.tmpPath()
	err := writeRecord(tmp, kindMeta, key, 0, val)
	if err == nil {
		err = os.Rename(tmp, c.metaPath(hashKey(key)))
		if err != nil {
			os.Remove(tmp)
		}
	}
	if err != nil {
		c.writeFailed("putmeta", err)
	}
}

// GetMeta returns the record PutMeta stored under key, if it checks out; a
// damaged one is deleted and counted.
func (c *Cache) GetMeta(key string) ([]byte, bool) {
	if len(key) > MaxKey {
		return nil, false
	}
	path := c.metaPath(hashKey(key))
	f, err := os.Open(path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			c.readErrors.Add(1)
		}
		return nil, false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, recordSize(len(key), MaxMeta)+1))
	if err != nil {
		c.readErrors.Add(1)
		return nil, false
	}
	r, err := parseRecord(b)
	if err != nil || r.kind != kindMeta || r.key != key {
		c.checkFailures.Add(1)
		os.Remove(path) // PutMeta renames over it, so this may drop a newer one: a refetch, never a wrong value
		return nil, false
	}
	return r.data, true
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	s := Stats{Bytes: c.bytes, Entries: int64(c.small.n + c.main.n), MaxBytes: c.max}
	c.mu.Unlock()
	s.Hits, s.Misses = c.hits.Load(), c.misses.Load()
	s.Evictions, s.CheckFailures = c.evictions.Load(), c.checkFailures.Load()
	s.WriteErrors, s.ReadErrors, s.Skips = c.writeErrors.Load(), c.readErrors.Load(), c.skips.Load()
	s.Checks = c.checks.Load()
	return s
}

// Close waits for writes in flight, saves the state file and releases the lock. Afterwards Get
// misses and Put does nothing.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.writers.Wait()
	close(c.stopSaver)
	<-c.saverDone
	c.saveState()
	if c.syncFile != nil {
		c.syncFile.Close()
	}
	c.unlock()
	return nil
}
