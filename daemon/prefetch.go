package daemon

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
	"github.com/erofs-blockd/erofs-blockd/mapping"
	"github.com/erofs-blockd/erofs-blockd/nbd"
)

// traceGranule is the unit a trace records: a read marks the granules it
// touches, the first touch of each is written once.
const traceGranule = 64 << 10

// traceHeader starts every trace file.
const traceHeader = "# erofs-blockd trace v1: export offset length (first access order)"

// Tracer records device ranges in first-access order (--record-trace). It
// is an nbd.Observer that passes everything on to next.
type Tracer struct {
	next nbd.Observer
	mu   sync.Mutex
	f    *os.File
	w    *bufio.Writer
	seen map[string]map[int64]bool
	stop chan struct{}
	done chan struct{}
}

// NewTracer creates path and records into it until Close.
func NewTracer(path string, next nbd.Observer) (*Tracer, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--record-trace: %w", err)
	}
	t := &Tracer{next: next, f: f, w: bufio.NewWriter(f), seen: map[string]map[int64]bool{},
		stop: make(chan struct{}), done: make(chan struct{})}
	fmt.Fprintln(t.w, traceHeader)
	go func() { // flush once a second, so a killed daemon leaves most of its trace
		defer close(t.done)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			select {
			case <-t.stop:
				return
			case <-tk.C:
				t.mu.Lock()
				t.w.Flush()
				t.mu.Unlock()
			}
		}
	}()
	return t, nil
}

func (t *Tracer) ConnOpen(remote string)             { t.next.ConnOpen(remote) }
func (t *Tracer) ConnClose(remote string, err error) { t.next.ConnClose(remote, err) }
func (t *Tracer) RequestStart(export string, cmd nbd.Command, length uint32) {
	t.next.RequestStart(export, cmd, length)
}

// RequestDone records the granules of a successful READ not seen before.
func (t *Tracer) RequestDone(info nbd.RequestInfo) {
	t.next.RequestDone(info)
	if info.Command != nbd.CmdRead || info.Errno != 0 || info.Length == 0 {
		return
	}
	first := int64(info.Offset) / traceGranule
	last := (int64(info.Offset) + int64(info.Length) - 1) / traceGranule
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.seen[info.Export]
	if s == nil {
		s = map[int64]bool{}
		t.seen[info.Export] = s
	}
	runStart := int64(-1)
	emit := func(end int64) {
		if runStart >= 0 {
			fmt.Fprintf(t.w, "%s %d %d\n", strconv.Quote(info.Export), runStart*traceGranule, (end-runStart)*traceGranule)
			runStart = -1
		}
	}
	for g := first; g <= last; g++ {
		if s[g] {
			emit(g)
			continue
		}
		s[g] = true
		if runStart < 0 {
			runStart = g
		}
	}
	emit(last + 1)
}

// Close flushes and closes the trace.
func (t *Tracer) Close() error {
	close(t.stop)
	<-t.done
	t.mu.Lock()
	defer t.mu.Unlock()
	err := t.w.Flush()
	if e := t.f.Close(); err == nil {
		err = e
	}
	return err
}

// traceEntry is one range of a trace.
type traceEntry struct {
	export   string
	off, len int64
}

// readTrace parses a trace file.
func readTrace(path string) ([]traceEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--prefetch-trace: %w", err)
	}
	defer f.Close()
	var out []traceEntry
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		name, err := strconv.QuotedPrefix(l)
		if err != nil {
			return nil, fmt.Errorf("--prefetch-trace %s:%d: want \"EXPORT\" OFFSET LENGTH", path, line)
		}
		export, _ := strconv.Unquote(name)
		var e traceEntry
		if _, err := fmt.Sscan(l[len(name):], &e.off, &e.len); err != nil || e.off < 0 || e.len <= 0 {
			return nil, fmt.Errorf("--prefetch-trace %s:%d: want \"EXPORT\" OFFSET LENGTH", path, line)
		}
		e.export = export
		out = append(out, e)
	}
	return out, sc.Err()
}

// traceRuns turns a trace into prefetch requests: the unit-aligned pieces
// it touches, in the order they were first touched, each extended over the
// following touched pieces of the same export (up to max pieces, no gaps),
// so that one request (one merged GET) covers what many small reads
// touched, and a piece is asked for once.
func traceRuns(entries []traceEntry, unit int64, maxRun int) []traceEntry {
	type piece struct {
		export string
		idx    int64
	}
	var order []piece
	touched := map[piece]bool{}
	for _, e := range entries {
		if e.len <= 0 || e.off < 0 {
			continue
		}
		for i := e.off / unit; i <= (e.off+e.len-1)/unit; i++ {
			p := piece{e.export, i}
			if !touched[p] {
				touched[p] = true
				order = append(order, p)
			}
		}
	}
	done := map[piece]bool{}
	var out []traceEntry
	for _, p := range order {
		if done[p] {
			continue
		}
		n := int64(0)
		for q := p; n < int64(maxRun) && touched[q] && !done[q]; q.idx++ {
			done[q] = true
			n++
		}
		out = append(out, traceEntry{export: p.export, off: p.idx * unit, len: n * unit})
	}
	return out
}

// toBlobSpace rewrites device ranges as ranges of the inputs they fall in
// (export "name\x00dev", offsets in the input), so that traceRuns counts
// the inputs' own fetch chunks: a blob need not start at a chunk-aligned
// device offset, and device-aligned pieces would straddle two of its
// chunks. Holes are dropped; ranges of unknown exports kept as they are.
func toBlobSpace(entries []traceEntry, byName map[string]*Export) []traceEntry {
	out := make([]traceEntry, 0, len(entries))
	for _, e := range entries {
		ex := byName[e.export]
		if ex == nil || ex.Flat == nil {
			out = append(out, e)
			continue
		}
		ex.Flat.Map().Runs(e.off, e.len, func(r mapping.Run) error {
			if !r.Hole {
				out = append(out, traceEntry{export: e.export + "\x00" + strconv.Itoa(r.Dev), off: r.DevOff, len: r.Len})
			}
			return nil
		})
	}
	return out
}

// fromBlobSpace turns toBlobSpace's ranges back into device ranges,
// clipped to their input's extent.
func fromBlobSpace(entries []traceEntry, byName map[string]*Export) []traceEntry {
	out := entries[:0]
	for _, e := range entries {
		name, devs, ok := strings.Cut(e.export, "\x00")
		dev, err := strconv.Atoi(devs)
		ex := byName[name]
		if !ok || err != nil || ex == nil || ex.Flat == nil {
			out = append(out, e)
			continue
		}
		m := ex.Flat.Map()
		if dev < 0 || dev >= m.Devices() {
			continue
		}
		ext := m.Device(dev)
		start, end := int64(ext.Start)<<m.BlockBits(), int64(ext.End())<<m.BlockBits()
		off := start + e.off
		if n := min(e.len, end-off); n > 0 {
			out = append(out, traceEntry{export: name, off: off, len: n})
		}
	}
	return out
}

// PrefetchStats reports a finished prefetch.
type PrefetchStats struct {
	Ranges int
	Bytes  int64
	Took   time.Duration
	Err    error
}

// ReplayTrace prefetches every range of a trace (as --record-trace wrote
// it) through the exports' devices, workers ranges at once, at low
// priority: demand reads go first. It returns when done or ctx ends.
func (d *Daemon) ReplayTrace(ctx context.Context, path string, workers int) (PrefetchStats, error) {
	entries, err := readTrace(path)
	if err != nil {
		return PrefetchStats{}, err
	}
	unit := d.cfg.Source.Chunk
	if unit <= 0 {
		unit = 1 << 20
	}
	byName := map[string]*Export{}
	for _, ex := range d.Exports() {
		byName[ex.Spec.Name] = ex
	}
	entries = fromBlobSpace(traceRuns(toBlobSpace(entries, byName), unit, 8), byName)
	t0 := time.Now()
	ch := make(chan traceEntry)
	var mu sync.Mutex
	st := PrefetchStats{}
	var wg sync.WaitGroup
	for i := 0; i < max(1, workers); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range ch {
				ex := byName[e.export]
				if ex == nil {
					continue
				}
				err := prefetchRange(ex.Dev, e.off, e.len)
				mu.Lock()
				st.Ranges++
				st.Bytes += e.len
				if err != nil && st.Err == nil {
					st.Err = err
				}
				mu.Unlock()
			}
		}()
	}
	for _, e := range entries {
		select {
		case ch <- e:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(ch)
	wg.Wait()
	st.Took = time.Since(t0)
	return st, nil
}

// PrefetchAll fills every remote source (--prefetch all) in steps of
// unit bytes (0: eight fetch chunks) at low priority, at most rate bytes per second (0: no limit),
// one blob at a time per worker.
func (d *Daemon) PrefetchAll(ctx context.Context, unit, rate int64, workers int) PrefetchStats {
	if unit <= 0 {
		unit = 8 * d.cfg.Source.Chunk
		if unit <= 0 {
			unit = 8 << 20
		}
	}
	d.mu.Lock()
	var todo []*opened
	for _, o := range d.order {
		if _, ok := o.f.(blockdev.Prefetcher); ok {
			todo = append(todo, o)
		}
	}
	d.mu.Unlock()
	t0 := time.Now()
	var mu sync.Mutex
	st := PrefetchStats{}
	lim := newLimiter(rate)
	ch := make(chan *opened)
	var wg sync.WaitGroup
	for i := 0; i < max(1, workers); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range ch {
				for off := int64(0); off < o.be.Size && ctx.Err() == nil; off += unit {
					n := min(unit, o.be.Size-off)
					lim.wait(ctx, n)
					err := o.be.Prefetch(off, n)
					mu.Lock()
					st.Ranges++
					st.Bytes += n
					if err != nil && st.Err == nil {
						st.Err = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, o := range todo {
		select {
		case ch <- o:
		case <-ctx.Done():
		}
	}
	close(ch)
	wg.Wait()
	st.Took = time.Since(t0)
	return st
}

// prefetchRange warms [off, off+n) of dev: through its Prefetcher (remote
// blobs at low priority, the content cache), else by reading it.
func prefetchRange(dev blockdev.Device, off, n int64) error {
	if off >= dev.Size() {
		return nil
	}
	n = min(n, dev.Size()-off)
	if p, ok := dev.(blockdev.Prefetcher); ok {
		return p.Prefetch(off, n)
	}
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := dev.ReadAt(buf[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// limiter paces a byte stream to rate bytes per second.
type limiter struct {
	mu    sync.Mutex
	rate  int64
	start time.Time
	sent  int64
}

func newLimiter(rate int64) *limiter { return &limiter{rate: rate, start: time.Now()} }

func (l *limiter) wait(ctx context.Context, n int64) {
	if l.rate <= 0 {
		return
	}
	l.mu.Lock()
	l.sent += n
	due := l.start.Add(time.Duration(float64(l.sent) / float64(l.rate) * float64(time.Second)))
	l.mu.Unlock()
	if d := time.Until(due); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
}
