package main

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
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/erofs-blockd/erofs-blockd/blobcache"
	"github.com/erofs-blockd/erofs-blockd/blockdev"
	"github.com/erofs-blockd/erofs-blockd/cache"
	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/metrics"
	"github.com/erofs-blockd/erofs-blockd/source"
)

// exportFlags are serve's flags for many exports in one daemon, the shared
// content cache and metrics.
type exportFlags struct {
	exports       []string
	config        string
	domain        string
	cacheSize     string
	fingerprints  string
	metricsListen string
	backendDelay  time.Duration
}

// defaultCacheSize is off: on local, page-cached blobs the cache's first
// pass (every page a miss: one more copy and the index, ~3x the server CPU
// per byte of a direct read) measurably slows reads,
// while a warm pass is no faster than the page cache; it pays off only when
// backend reads are expensive (README "Shared cache" has the figures).
const defaultCacheSize = "0"

func (e *exportFlags) register(fs *pflag.FlagSet) {
	fs.StringArrayVar(&e.exports, "export", nil, "serve export `NAME=FILE,FILE,...` (repeatable; first file the primary, the rest its devices in slot order)")
	fs.StringVar(&e.config, "config", "", "JSON `FILE` listing exports: {\"exports\":[{\"name\":..., \"blobs\":[...], \"domain\":...}]}")
	fs.StringVar(&e.domain, "domain", "", "dedup domain of the --blob/--export exports: exports in the same non-empty domain share cached file contents by fingerprint (like the kernel's domain_id)")
	fs.StringVar(&e.cacheSize, "cache-size", defaultCacheSize, "size of the content cache shared by all exports, e.g. 256M; 0 = off (default: worth it when blob reads are slow or remote, not for local page-cached files)")
	fs.StringVar(&e.fingerprints, "fingerprints", blobcache.FingerprintXattr, "file-content keys for the cache: xattr (ishare fingerprint xattrs), compute (xattrs, else sha256 every uncompressed file at startup), off")
	fs.StringVar(&e.metricsListen, "metrics-listen", "", "serve Prometheus metrics on http://`HOST:PORT`/metrics")
	fs.DurationVar(&e.backendDelay, "debug-backend-delay", 0, "add this latency to every read of an input file (benchmarks: models a remote blob store)")
	fs.MarkHidden("debug-backend-delay")
}

// exportSpec is one export to serve.
type exportSpec struct {
	Name        string   `json:"name"`
	Blobs       []string `json:"blobs"`
	Domain      string   `json:"domain,omitempty"`
	Description string   `json:"description,omitempty"`
}

type configFile struct {
	Exports []exportSpec `json:"exports"`
}

// specs gathers the exports: first the --blob/positional one (named name),
// then --export flags, then the config file's.
func (e *exportFlags) specs(single []string, name string) ([]exportSpec, error) {
	var out []exportSpec
	if len(single) > 0 {
		out = append(out, exportSpec{Name: name, Blobs: single, Domain: e.domain})
	}
	for _, s := range e.exports {
		n, files, ok := strings.Cut(s, "=")
		if !ok || files == "" {
			return nil, fmt.Errorf("--export %q: want NAME=PRIMARY[,BLOB...]", s)
		}
		out = append(out, exportSpec{Name: n, Blobs: strings.Split(files, ","), Domain: e.domain})
	}
	if e.config != "" {
		b, err := os.ReadFile(e.config)
		if err != nil {
			return nil, fmt.Errorf("--config: %w", err)
		}
		var cf configFile
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cf); err != nil {
			return nil, fmt.Errorf("--config %s: %w", e.config, err)
		}
		dir := filepath.Dir(e.config)
		for _, x := range cf.Exports {
			for i, p := range x.Blobs {
				if !filepath.IsAbs(p) && !source.IsRemote(p) {
					x.Blobs[i] = filepath.Join(dir, p)
				}
			}
			out = append(out, x)
		}
	}
	seen := map[string]bool{}
	for _, x := range out {
		if len(x.Blobs) == 0 {
			return nil, fmt.Errorf("export %q: no files", x.Name)
		}
		for _, b := range x.Blobs {
			if b == "" {
				return nil, fmt.Errorf("export %q: empty file name", x.Name)
			}
		}
		if seen[x.Name] {
			return nil, fmt.Errorf("export %q given twice", x.Name)
		}
		seen[x.Name] = true
	}
	return out, nil
}

// servedExport is one composed export.
type servedExport struct {
	spec    exportSpec
	flat    *flatdev.Device
	dev     blockdev.Device // flat, or the cached wrapper
	readers []*blobcache.Reader
}

// daemonState holds what all exports share: opened files (each opened once,
// by device and inode), the cache, and the metrics sources.
type daemonState struct {
	files    map[string]*openedFile // by identity
	byPath   map[string]*openedFile
	order    []*openedFile
	shared   *blobcache.Shared
	exports  []*servedExport
	fpMode   string
	log      *slog.Logger
	delay    time.Duration
	cacheCap int64
	op       *source.Opener
}

type openedFile struct {
	f  io.Closer
	id string
	be *blobcache.Backend
}

func (d *daemonState) Close() {
	for _, o := range d.order {
		o.f.Close()
	}
}

// open returns the shared backend for path.
func (d *daemonState) open(path string) (*openedFile, error) {
	if o := d.byPath[path]; o != nil {
		return o, nil
	}
	if source.IsRemote(path) {
		b, err := d.op.Open(context.Background(), path)
		if err != nil {
			return nil, err
		}
		id := b.Identity()
		if o := d.files[id]; o != nil { // the same content under another name
			b.Close()
			d.byPath[path] = o
			return o, nil
		}
		o := &openedFile{f: b, id: id, be: &blobcache.Backend{Name: b.Name(), R: b, Size: b.Size(), Delay: d.delay}}
		d.files[id], d.byPath[path] = o, o
		d.order = append(d.order, o)
		return o, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open blob: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat blob: %w", err)
	}
	if !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
		f.Close()
		return nil, fmt.Errorf("blob %s: not a regular file or block device", path)
	}
	size := st.Size()
	if st.Mode()&os.ModeDevice != 0 {
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			f.Close()
			return nil, fmt.Errorf("blob %s: size: %w", path, err)
		}
	}
	id, err := blobcache.FileIdentity(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blob %s: %w", path, err)
	}
	if o := d.files[id]; o != nil { // same file under another name
		f.Close()
		d.byPath[path] = o
		return o, nil
	}
	o := &openedFile{f: f, id: id, be: &blobcache.Backend{Name: path, R: f, Size: size, Delay: d.delay}}
	d.files[id], d.byPath[path] = o, o
	d.order = append(d.order, o)
	return o, nil
}

// newDaemonState sets up the cache (nil when size is 0).
func (e *exportFlags) newDaemonState(log *slog.Logger, op *source.Opener) (*daemonState, error) {
	size, err := parseSize(e.cacheSize)
	if err != nil {
		return nil, fmt.Errorf("--cache-size: %w", err)
	}
	switch e.fingerprints {
	case blobcache.FingerprintOff, blobcache.FingerprintXattr, blobcache.FingerprintCompute:
	default:
		return nil, fmt.Errorf("--fingerprints %q: want xattr, compute or off", e.fingerprints)
	}
	d := &daemonState{files: map[string]*openedFile{}, byPath: map[string]*openedFile{},
		fpMode: e.fingerprints, log: log, delay: e.backendDelay, cacheCap: size, op: op}
	if size > 0 {
		d.shared = blobcache.NewShared(cache.New(size, blobcache.PageSize))
	}
	return d, nil
}

// add composes one export.
func (d *daemonState) add(spec exportSpec, cf composeFlags, progress io.Writer) (*servedExport, error) {
	align, err := parseSize(cf.align)
	if err != nil {
		return nil, fmt.Errorf("--align: %w", err)
	}
	var ofs []*openedFile
	for _, p := range spec.Blobs {
		o, err := d.open(p)
		if err != nil {
			return nil, err
		}
		ofs = append(ofs, o)
	}
	srcs := make([]flatdev.Source, len(ofs))
	for i, o := range ofs {
		srcs[i] = flatdev.Source{Name: spec.Blobs[i], R: o.be, Size: o.be.Size}
	}
	var readers []*blobcache.Reader
	if d.shared != nil {
		readers = d.readers(ofs)
		for i, r := range readers {
			srcs[i].R = r
		}
	}
	opt := flatdev.Options{Align: align, VerifyDigests: cf.verifyDigests, OnError: cf.onError}
	if progress != nil && isTerminal(progress) {
		opt.Progress = progressPrinter(progress)
	}
	flat, err := flatdev.New(srcs[0], srcs[1:], opt)
	if err != nil {
		return nil, err
	}
	ex := &servedExport{spec: spec, flat: flat, dev: flat, readers: readers}
	if readers != nil {
		if err := d.contentKeys(spec, ofs, readers); err != nil {
			// Not fatal: the image check reports real problems; the export
			// is then cached by blob identity only.
			d.log.Warn("no file-content cache keys for this export", "export", spec.Name, "err", err)
		}
		ex.dev = blobcache.NewDevice(flat, readers)
	}
	d.exports = append(d.exports, ex)
	return ex, nil
}

// readers builds the caching readers of one export, with blob identities
// from the slot tags.
func (d *daemonState) readers(ofs []*openedFile) []*blobcache.Reader {
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
func (d *daemonState) contentKeys(spec exportSpec, ofs []*openedFile, readers []*blobcache.Reader) error {
	if d.fpMode == blobcache.FingerprintOff {
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
		domain = "export:" + spec.Name // content shared only inside the export
	}
	spans, err := blobcache.FileSpans(img, domain, d.fpMode)
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
func (d *daemonState) metricsSources() metrics.Sources {
	src := metrics.Sources{Backends: func() []metrics.BackendStats {
		out := make([]metrics.BackendStats, 0, len(d.order))
		for _, o := range d.order {
			s := o.be.Stats()
			out = append(out, metrics.BackendStats{Blob: s.Name, Reads: s.Reads, Bytes: s.Bytes, Errors: s.Errors})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Blob < out[j].Blob })
		return out
	}}
	if d.shared != nil {
		src.Cache = func() metrics.CacheStats {
			s := d.shared.Stats()
			return metrics.CacheStats{
				Hits: s.Hits, Misses: s.Misses, Evictions: s.Evictions,
				DedupHits: map[string]uint64{
					blobcache.KindFile: s.DedupFile, blobcache.KindCopy: s.DedupCopy, blobcache.KindContent: s.DedupContent,
				},
				ResidentBytes: s.ResidentBytes, CapacityBytes: s.Capacity, Pages: s.Entries,
			}
		}
	}
	return src
}

// startMetrics serves /metrics on addr ("" = off) and prints its URL.
func startMetrics(addr string, m *metrics.Metrics, stdout io.Writer, log *slog.Logger) (func(), error) {
	if addr == "" {
		return func() {}, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	hs := &http.Server{Handler: m.Mux(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	fmt.Fprintf(stdout, "metrics http://%s/metrics\n", l.Addr())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hs.Shutdown(ctx)
	}, nil
}
