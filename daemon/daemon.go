// Package daemon is erofs-blockd's serving core: export specs in, composed
// block devices out. It opens every source once (local files by device and
// inode, remote blobs by identity) through one source.Opener, shares the
// content cache between exports, composes each export with flatdev, and
// owns the metrics registry every layer reports to. It knows no flags,
// signals or terminal output: cmd/erofs-blockd turns those into a Config
// and Specs.
package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/erofs-blockd/erofs-blockd/blobcache"
	"github.com/erofs-blockd/erofs-blockd/blockdev"
	"github.com/erofs-blockd/erofs-blockd/cache"
	"github.com/erofs-blockd/erofs-blockd/diskcache"
	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/metrics"
	"github.com/erofs-blockd/erofs-blockd/nbd"
	"github.com/erofs-blockd/erofs-blockd/source"
)

// Spec is one export to serve.
type Spec struct {
	Name        string   `json:"name"`
	Blobs       []string `json:"blobs,omitempty"` // primary first, then its devices in slot order
	Domain      string   `json:"domain,omitempty"`
	Description string   `json:"description,omitempty"`
	// Image, instead of Blobs: an image reference (oci://HOST/REPO:TAG or
	// @sha256:..., oci-layout:DIR[:TAG]) whose layers are merged into an
	// index and served (image.go); Platform picks from an image index
	// (os/arch[/variant]; "" this host's).
	Image    string `json:"image,omitempty"`
	Platform string `json:"platform,omitempty"`
}

// ConfigFile is the JSON form of --config.
type ConfigFile struct {
	Exports []Spec `json:"exports"`
}

// ParseExport parses NAME=PRIMARY[,BLOB...] or NAME=image:REF[,platform=P].
func ParseExport(s, domain string) (Spec, error) {
	n, files, ok := strings.Cut(s, "=")
	if !ok || files == "" {
		return Spec{}, fmt.Errorf("--export %q: want NAME=PRIMARY[,BLOB...] or NAME=image:REF[,platform=OS/ARCH]", s)
	}
	if ref, ok := strings.CutPrefix(files, "image:"); ok {
		sp := Spec{Name: n, Domain: domain}
		parts := strings.Split(ref, ",")
		sp.Image = parts[0]
		for _, p := range parts[1:] {
			v, ok := strings.CutPrefix(p, "platform=")
			if !ok || sp.Platform != "" {
				return Spec{}, fmt.Errorf("--export %q: after image:REF only platform=OS/ARCH[/VARIANT]", s)
			}
			sp.Platform = v
		}
		if sp.Image == "" {
			return Spec{}, fmt.Errorf("--export %q: empty image reference", s)
		}
		return sp, nil
	}
	return Spec{Name: n, Blobs: strings.Split(files, ","), Domain: domain}, nil
}

// LoadConfig reads a config file; relative local paths are taken relative
// to the file's directory, remote sources as they are.
func LoadConfig(path string) ([]Spec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	var cf ConfigFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cf); err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	for _, x := range cf.Exports {
		for i, p := range x.Blobs {
			if in := source.Inner(p); in != "" && !filepath.IsAbs(in) && !source.IsRemote(in) {
				x.Blobs[i] = source.WithInner(p, filepath.Join(dir, in))
			}
		}
	}
	return cf.Exports, nil
}

// CheckSpecs refuses exports without files (or with an image and files), empty names of files and a
// name given twice.
func CheckSpecs(specs []Spec) error {
	seen := map[string]bool{}
	for _, x := range specs {
		switch {
		case x.Image != "" && len(x.Blobs) > 0:
			return fmt.Errorf("export %q: an image or blobs, not both", x.Name)
		case x.Image == "" && len(x.Blobs) == 0:
			return fmt.Errorf("export %q: no files", x.Name)
		}
		for _, b := range x.Blobs {
			if b == "" {
				return fmt.Errorf("export %q: empty file name", x.Name)
			}
		}
		if seen[x.Name] {
			return fmt.Errorf("export %q given twice", x.Name)
		}
		seen[x.Name] = true
	}
	return nil
}

// Config configures a Daemon.
type Config struct {
	// CacheSize is the shared content cache in bytes (0: off).
	CacheSize int64
	// Fingerprints is blobcache's file-content key mode (xattr, compute, off).
	Fingerprints string
	// BackendDelay is added to every backend read (benchmarks).
	BackendDelay time.Duration
	// Align, VerifyDigests, OnError and Progress are flatdev.Options.
	Align         int64
	VerifyDigests bool
	OnError       func(blob string, err error)
	Progress      func(name string, done, total int64)
	// Source configures remote sources; its Observer is set to the metrics.
	Source  source.Options
	Logger  *slog.Logger
	Version string // reported in erofs_blockd_build_info
	// CacheDir, if set, is the persistent chunk cache of remote blobs
	// (package diskcache), bounded to CacheDirSize bytes.
	CacheDir     string
	CacheDirSize int64
	// RecordTrace, if set, is a file the NBD reads are recorded to in
	// first-access order (see Tracer; ReplayTrace reads it).
	RecordTrace string
}

// Export is one composed export.
type Export struct {
	Spec    Spec
	Flat    *flatdev.Device
	Dev     blockdev.Device // Flat, or its cached wrapper
	readers []*blobcache.Reader
	ofs     []*opened // its sources, released by Remove unless shared (api.go)
}

// Description is the NBD export description: the spec's, else the
// redacted primary and blobs.
func (e *Export) Description() string {
	if e.Spec.Description != "" {
		return e.Spec.Description
	}
	return DefaultDescription(e.Spec.Blobs)
}

// DefaultDescription names the primary and the blobs, shortened so it stays
// well inside NBD's 4096-byte limit for any number of blobs.
func DefaultDescription(blobs []string) string {
	blobs = source.Redacted(blobs)
	desc := "erofs-blockd: " + strings.Join(blobs, " + ")
	if len(desc) <= 1024 || len(blobs) == 0 {
		return desc
	}
	return fmt.Sprintf("erofs-blockd: %s + %d blobs", blobs[0], len(blobs)-1)
}

// Daemon holds what all exports share: opened sources (each opened once),
// the cache, and the metrics.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	op      *source.Opener
	shared  *blobcache.Shared
	metrics *metrics.Metrics
	tracer  *Tracer
	disk    *diskcache.Cache
	imgOnce sync.Once
	img     *imageState // image.go

	mu      sync.Mutex
	pending map[string]*pendingOpen // opened in parallel, not yet taken by open
	files   map[string]*opened      // by identity
	byPath  map[string]*opened
	order   []*opened
	exports []*Export
	live    // exports added and removed while serving (api.go)
}

type opened struct {
	f  io.Closer
	id string
	be *blobcache.Backend
}

// New sets up the opener, the cache (none when CacheSize is 0) and metrics.
func New(cfg Config) (*Daemon, error) {
	switch cfg.Fingerprints {
	case "":
		cfg.Fingerprints = blobcache.FingerprintXattr
	case blobcache.FingerprintOff, blobcache.FingerprintXattr, blobcache.FingerprintCompute:
	default:
		return nil, fmt.Errorf("--fingerprints %q: want xattr, compute or off", cfg.Fingerprints)
	}
	if cfg.CacheSize < 0 {
		return nil, fmt.Errorf("cache size %d < 0", cfg.CacheSize)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, files: map[string]*opened{}, byPath: map[string]*opened{}}
	if cfg.CacheSize > 0 {
		d.shared = blobcache.NewShared(cache.New(cfg.CacheSize, blobcache.PageSize))
	}
	if cfg.CacheDir != "" {
		dc, err := diskcache.Open(cfg.CacheDir, cfg.CacheDirSize, diskcache.Options{Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("--cache-dir: %w", err)
		}
		d.disk = dc
	}
	d.metrics = metrics.New(cfg.Version, d.metricsSources())
	so := cfg.Source
	so.Observer = d.metrics
	if d.disk != nil {
		so.Store = d.disk
		// gzip:/zstd: indexes live next to the chunks they describe (the
		// lock on the cache dir covers them too).
		so.IndexDir = filepath.Join(cfg.CacheDir, "index")
		if err := os.MkdirAll(so.IndexDir, 0o700); err != nil {
			d.disk.Close()
			return nil, fmt.Errorf("--cache-dir: %w", err)
		}
	}
	if so.Logger == nil {
		so.Logger = cfg.Logger
	}
	d.op = source.NewOpener(so)
	if cfg.RecordTrace != "" {
		t, err := NewTracer(cfg.RecordTrace, d.metrics)
		if err != nil {
			return nil, err
		}
		d.tracer = t
	}
	return d, nil
}

// Metrics is the registry every layer of the daemon reports to.
func (d *Daemon) Metrics() *metrics.Metrics { return d.metrics }

// Exports returns the exports in the order they were added.
func (d *Daemon) Exports() []*Export {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*Export(nil), d.exports...)
}

// Close closes every opened source and the trace.
func (d *Daemon) Close() {
	if d.img != nil && d.img.tmp != "" {
		os.RemoveAll(d.img.tmp)
	}
	if d.tracer != nil {
		if err := d.tracer.Close(); err != nil {
			d.log.Error("--record-trace", "err", err)
		}
		d.tracer = nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, o := range d.order {
		o.f.Close()
	}
	for _, p := range d.pending {
		if p.b != nil {
			p.b.Close()
		}
	}
	d.pending = nil
	d.order, d.files, d.byPath = nil, map[string]*opened{}, map[string]*opened{}
	if d.disk != nil {
		if err := d.disk.Close(); err != nil {
			d.log.Error("--cache-dir", "err", err)
		}
		d.disk = nil
	}
}

// openRemote opens the remote sources of specs not opened yet all at
// once (each costs a round trip or more), for open to pick up. d.mu is held.
func (d *Daemon) openRemote(specs []string) {
	var todo []string
	for _, s := range specs {
		if (source.IsRemote(s) || source.IsDecoded(s)) && d.byPath[s] == nil && d.pending[s] == nil && !slices.Contains(todo, s) {
			todo = append(todo, s)
		}
	}
	if len(todo) < 2 {
		return
	}
	res := make([]pendingOpen, len(todo))
	var wg sync.WaitGroup
	for i, s := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i].b, res[i].err = d.op.Open(context.Background(), s)
		}()
	}
	wg.Wait()
	if d.pending == nil {
		d.pending = map[string]*pendingOpen{}
	}
	for i, s := range todo {
		d.pending[s] = &res[i]
	}
}

type pendingOpen struct {
	b   source.Blob
	err error
}

// open returns the shared backend for a source spec. d.mu is held.
func (d *Daemon) open(spec string) (*opened, error) {
	if o := d.byPath[spec]; o != nil {
		return o, nil
	}
	var b source.Blob
	var err error
	if p := d.pending[spec]; p != nil {
		delete(d.pending, spec)
		b, err = p.b, p.err
	} else if source.IsRemote(spec) || source.IsDecoded(spec) {
		b, err = d.op.Open(context.Background(), spec)
	} else {
		b, err = source.OpenFile(spec)
	}
	if err != nil {
		return nil, err
	}
	id := b.Identity()
	var r io.ReaderAt = b
	if f, ok := b.(*source.File); ok {
		// The *os.File itself, so NBD can sendfile from it (flatdev.FileRange).
		r = f.File
		if id, err = blobcache.FileIdentity(f.File); err != nil {
			f.Close()
			return nil, fmt.Errorf("blob %s: %w", spec, err)
		}
	} else {
		d.metrics.AddSource(b.Name())
	}
	if o := d.files[id]; o != nil { // the same content under another name
		b.Close()
		d.byPath[spec] = o
		return o, nil
	}
	o := &opened{f: b, id: id, be: &blobcache.Backend{Name: b.Name(), R: r, Size: b.Size(), Delay: d.cfg.BackendDelay}}
	d.files[id], d.byPath[spec] = o, o
	d.order = append(d.order, o)
	return o, nil
}

// Add composes one export from its spec and keeps it.
func (d *Daemon) Add(spec Spec) (*Export, error) {
	if spec.Image != "" {
		// Resolving and indexing an image takes network round trips (and
		// on first use a pass over its layers): not under d.mu.
		blobs, err := d.imageBlobs(spec)
		if err != nil {
			return nil, err
		}
		spec.Blobs = blobs
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.exports {
		if e.Spec.Name == spec.Name {
			return nil, fmt.Errorf("export %q: %w", spec.Name, ErrExists)
		}
	}
	added, opened0 := false, len(d.order)
	defer func() {
		if !added {
			d.dropFailed(opened0) // what this Add opened and no export uses
		}
	}()
	d.openRemote(spec.Blobs)
	var ofs []*opened
	for _, p := range spec.Blobs {
		o, err := d.open(p)
		if err != nil {
			return nil, err
		}
		ofs = append(ofs, o)
	}
	srcs := make([]flatdev.Source, len(ofs))
	for i, o := range ofs {
		srcs[i] = flatdev.Source{Name: o.be.Name, R: o.be, Size: o.be.Size}
	}
	var readers []*blobcache.Reader
	if d.shared != nil {
		readers = d.readers(ofs)
		for i, r := range readers {
			srcs[i].R = r
		}
		defer func() {
			if !added {
				closeReaders(readers)
			}
		}()
	}
	opt := flatdev.Options{Align: d.cfg.Align, VerifyDigests: d.cfg.VerifyDigests, OnError: d.cfg.OnError, Progress: d.cfg.Progress}
	flat, err := flatdev.New(srcs[0], srcs[1:], opt)
	if err != nil {
		return nil, err
	}
	ex := &Export{Spec: spec, Flat: flat, Dev: flat, readers: readers, ofs: ofs}
	if readers != nil {
		if err := d.contentKeys(spec, ofs, readers); err != nil {
			// Not fatal: the image check reports real problems; the export
			// is then cached by blob identity only.
			d.log.Warn("no file-content cache keys for this export", "export", spec.Name, "err", err)
		}
		ex.Dev = blobcache.NewDevice(flat, readers)
	}
	if err := d.publish(ex); err != nil { // to the running NBD server, if any
		return nil, err
	}
	d.exports = append(d.exports, ex)
	added = true
	return ex, nil
}

// NBDServer returns an NBD server with every export added and the metrics
// as its observer. Exports added (Add) and removed (Remove) later are
// added to and removed from this server while it serves.
func (d *Daemon) NBDServer(cfg nbd.Config) (*nbd.Server, error) {
	cfg.Observer = d.metrics
	if d.tracer != nil {
		cfg.Observer = d.tracer
	}
	srv := nbd.NewServer(cfg)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ex := range d.exports {
		if err := srv.AddExport(ex.nbdExport()); err != nil {
			return nil, err
		}
	}
	d.srv = srv
	return srv, nil
}

// closeReaders stops the readers of an export that is gone from lending
// their inputs' stored content to other exports (blobcache alias reads).
func closeReaders(rs []*blobcache.Reader) {
	for _, r := range rs {
		r.Close()
	}
}

// readers builds the caching readers of one export, with blob identities
// from the slot tags.
func (d *Daemon) readers(ofs []*opened) []*blobcache.Reader {
	var slots []erofs.DeviceSlot
	if sb, err := erofs.ReadSuperblock(ofs[0].be, ofs[0].be.Size); err == nil {
		slots = sb.Devices // else flatdev.New refuses the primary
	}
	out := make([]*blobcache.Reader, len(ofs))
	for i, o := range ofs {
		id := o.id
		if i > 0 && i-1 < len(slots) {
			id = blobcache.BlobIdentity(slots[i-1], o.be, o.be.Size, o.id)
		}
		out[i] = d.shared.NewReader(blobcache.ReaderConfig{Backend: o.be, FileID: o.id, BlobID: id})
	}
	return out
}

// contentKeys gives the readers the export's fingerprinted file ranges.
func (d *Daemon) contentKeys(spec Spec, ofs []*opened, readers []*blobcache.Reader) error {
	if d.cfg.Fingerprints == blobcache.FingerprintOff {
		return nil
	}
	prim := ofs[0].be
	var devs []erofs.Dev
	for _, o := range ofs[1:] {
		devs = append(devs, erofs.Dev{R: o.be, Size: o.be.Size})
	}
	var opts []erofs.Option
	if len(devs) > 0 {
		opts = append(opts, erofs.WithDevices(devs...))
	}
	img, err := erofs.Open(prim, prim.Size, opts...)
	if err != nil {
		return err
	}
	domain := "domain:" + spec.Domain
	if spec.Domain == "" {
		// Content is shared only among exports of the same inputs (the same
		// files or checked copies, in the same order): their fingerprint
		// claims are the same, made by the same bytes. Keyed by export name,
		// two exports of the same blobs fetched their file data twice.
		ids := make([]string, len(readers))
		for i, r := range readers {
			ids[i] = r.BlobID()
		}
		domain = "inputs:" + strings.Join(ids, "\x00")
	}
	spans, err := blobcache.FileSpans(img, domain, d.cfg.Fingerprints)
	if err != nil {
		return err
	}
	for i, r := range readers {
		if i < len(spans) {
			r.SetSpans(spans[i])
		}
	}
	return nil
}

// metricsSources adapts the shared state to package metrics.
func (d *Daemon) metricsSources() metrics.Sources {
	src := metrics.Sources{Backends: func() []metrics.BackendStats {
		d.mu.Lock()
		order := append([]*opened(nil), d.order...)
		d.mu.Unlock()
		out := make([]metrics.BackendStats, 0, len(order))
		for _, o := range order {
			s := o.be.Stats()
			out = append(out, metrics.BackendStats{Blob: s.Name, Reads: s.Reads, Bytes: s.Bytes, Errors: s.Errors})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Blob < out[j].Blob })
		return out
	}}
	src.ChunkDigestFailures = func() uint64 {
		if d.op == nil {
			return 0
		}
		return d.op.ChunkSumFailures()
	}
	if d.disk != nil {
		disk := d.disk
		src.DiskCache = func() metrics.DiskCacheStats {
			s := disk.Stats()
			var bad uint64
			if d.op != nil {
				_, bad = d.op.DigestChecks()
			}
			return metrics.DiskCacheStats{Bytes: s.Bytes, CapacityBytes: s.MaxBytes, Entries: s.Entries,
				Hits: s.Hits, Misses: s.Misses, Evictions: s.Evictions, CheckFailures: s.CheckFailures,
				WriteErrors: s.WriteErrors, DigestFail: bad, Checks: s.Checks}
		}
	}
	if d.shared != nil {
		src.Cache = func() metrics.CacheStats {
			s := d.shared.Stats()
			return metrics.CacheStats{
				Hits: s.Hits, Misses: s.Misses, Evictions: s.Evictions,
				DedupHits: map[string]uint64{
					blobcache.KindFile: s.DedupFile, blobcache.KindCopy: s.DedupCopy, blobcache.KindContent: s.DedupContent,
				},
				ResidentBytes: s.ResidentBytes, CapacityBytes: s.Capacity, Pages: s.Entries,
				ContentLocalBytes: s.AliasBytes,
			}
		}
	}
	return src
}

// ServeMetrics serves /metrics on addr and returns the bound address and a
// function that stops it.
func (d *Daemon) ServeMetrics(addr string) (string, func(), error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	hs := &http.Server{Handler: d.metrics.Mux(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics server", "err", err)
		}
	}()
	return l.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hs.Shutdown(ctx)
	}, nil
}
