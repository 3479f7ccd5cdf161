// Package metrics exposes erofs-blockd's Prometheus metrics on /metrics.
// It is told things and never reaches into the data path: the NBD server
// calls it as an nbd.Observer, remote sources as a source.Observer, and the cache and backend counters are read
// at scrape time through snapshot functions the daemon hands to New. All
// names carry the erofs_blockd_ prefix.
package metrics

import (
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/erofs-blockd/erofs-blockd/nbd"
	"github.com/erofs-blockd/erofs-blockd/source"
)

const ns = "erofs_blockd"

// CacheStats is what the daemon reports about the shared cache.
type CacheStats struct {
	Hits, Misses, Evictions             uint64
	DedupHits                           map[string]uint64 // by kind
	ResidentBytes, CapacityBytes, Pages int64
	ContentLocalBytes                   uint64 // missed content read from another blob's stored chunks
}

// BackendStats is what the daemon reports about one input file.
type BackendStats struct {
	Blob                 string
	Reads, Bytes, Errors uint64
}

// Sources are the snapshot functions read at scrape time; nil ones are
// left out.
type Sources struct {
	Cache     func() CacheStats
	Backends  func() []BackendStats
	DiskCache func() DiskCacheStats
	// ChunkDigestFailures counts fetched chunks of image layers that did
	// not match their recorded digest (wrong bytes from a registry).
	ChunkDigestFailures func() uint64
}

// Metrics is the registry plus the nbd.Observer. Safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	conns      prometheus.Gauge
	connsTotal prometheus.Counter
	connErrs   prometheus.Counter
	requests   *prometheus.CounterVec
	errors     *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	inflight   *prometheus.GaugeVec
	latency    *prometheus.HistogramVec

	children sync.Map // reqKey -> *reqMetrics
	src      *sourceMetrics
}

var (
	_ nbd.Observer    = (*Metrics)(nil)
	_ source.Observer = (*Metrics)(nil)
)

type reqKey struct {
	export string
	cmd    nbd.Command
}

type reqMetrics struct {
	requests, errors, bytes prometheus.Counter
	inflight                prometheus.Gauge
	latency                 prometheus.Observer
}

// New builds the registry. version is reported in erofs_blockd_build_info.
func New(version string, src Sources) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), src: newSourceMetrics()}
	m.conns = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "nbd_connections",
		Help: "NBD client connections currently open."})
	m.connsTotal = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "nbd_connections_total",
		Help: "NBD client connections accepted."})
	m.connErrs = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "nbd_connection_errors_total",
		Help: "NBD connections that ended with an error."})
	labels := []string{"export", "command"}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "nbd_requests_total",
		Help: "NBD requests served, by export and command."}, labels)
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "nbd_request_errors_total",
		Help: "NBD requests answered with an error, by export and command."}, labels)
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "nbd_request_bytes_total",
		Help: "Bytes covered by successful NBD requests (READ: bytes sent), by export and command."}, labels)
	m.inflight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "nbd_requests_in_flight",
		Help: "NBD requests being served, by export and command."}, labels)
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "nbd_request_duration_seconds",
		Help:    "Time from decoding an NBD request to sending its reply, by export and command.",
		Buckets: prometheus.ExponentialBuckets(25e-6, 4, 10)}, labels) // 25µs .. 6.5s
	build := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "build_info",
		Help:        "Build information; always 1.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()}})
	build.Set(1)
	m.reg.MustRegister(m.conns, m.connsTotal, m.connErrs, m.requests, m.errors, m.bytes, m.inflight, m.latency, build)
	m.reg.MustRegister(m.src.collectors()...)
	if src.Cache != nil {
		m.reg.MustRegister(&cacheCollector{fn: src.Cache})
	}
	if src.Backends != nil {
		m.reg.MustRegister(&backendCollector{fn: src.Backends})
	}
	if src.DiskCache != nil {
		m.reg.MustRegister(&diskCollector{fn: src.DiskCache})
	}
	if fn := src.ChunkDigestFailures; fn != nil {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Name: "source_chunk_digest_failures_total",
			Help: "Fetched chunks of image layers that did not match the digest recorded in the image's index (refused: EIO to the reader after retries)."},
			func() float64 { return float64(fn()) }))
	}
	return m
}

// Registry returns the registry (tests, extra collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Mux returns a handler with /metrics and a plain / page.
func (m *Metrics) Mux() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte("erofs-blockd: metrics at /metrics\n"))
	})
	return mux
}

func (m *Metrics) child(export string, cmd nbd.Command) *reqMetrics {
	k := reqKey{export, cmd}
	if v, ok := m.children.Load(k); ok {
		return v.(*reqMetrics)
	}
	c := cmd.String()
	r := &reqMetrics{
		requests: m.requests.WithLabelValues(export, c),
		errors:   m.errors.WithLabelValues(export, c),
		bytes:    m.bytes.WithLabelValues(export, c),
		inflight: m.inflight.WithLabelValues(export, c),
		latency:  m.latency.WithLabelValues(export, c),
	}
	v, _ := m.children.LoadOrStore(k, r)
	return v.(*reqMetrics)
}

// ConnOpen implements nbd.Observer.
func (m *Metrics) ConnOpen(remote string) {
	m.conns.Inc()
	m.connsTotal.Inc()
}

// ConnClose implements nbd.Observer.
func (m *Metrics) ConnClose(remote string, err error) {
	m.conns.Dec()
	if err != nil {
		m.connErrs.Inc()
	}
}

// RequestStart implements nbd.Observer.
func (m *Metrics) RequestStart(export string, cmd nbd.Command, length uint32) {
	m.child(export, cmd).inflight.Inc()
}

// RequestDone implements nbd.Observer.
func (m *Metrics) RequestDone(info nbd.RequestInfo) {
	r := m.child(info.Export, info.Command)
	r.inflight.Dec()
	r.requests.Inc()
	if info.Errno != 0 {
		r.errors.Inc()
	} else {
		r.bytes.Add(float64(info.Length))
	}
	r.latency.Observe(info.Duration.Seconds())
}

// cacheCollector reads CacheStats at scrape time.
type cacheCollector struct{ fn func() CacheStats }

var (
	descHits      = prometheus.NewDesc(ns+"_cache_hits_total", "Cache lookups served from the cache (including waits on another request's fetch).", nil, nil)
	descMisses    = prometheus.NewDesc(ns+"_cache_misses_total", "Cache lookups that fetched from a backend.", nil, nil)
	descDedup     = prometheus.NewDesc(ns+"_cache_dedup_hits_total", "Cache hits on pages another export or blob brought in, by kind: file (same input file), copy (same blob tag and size), content (same file fingerprint).", []string{"kind"}, nil)
	descEvictions = prometheus.NewDesc(ns+"_cache_evictions_total", "Pages evicted from the cache.", nil, nil)
	descResident  = prometheus.NewDesc(ns+"_cache_resident_bytes", "Bytes of page data held by the cache.", nil, nil)
	descCapacity  = prometheus.NewDesc(ns+"_cache_capacity_bytes", "The cache's byte bound (--cache-size).", nil, nil)
	descPages     = prometheus.NewDesc(ns+"_cache_pages", "Pages held by the cache.", nil, nil)
	descLocal     = prometheus.NewDesc(ns+"_cache_content_local_bytes_total", "Bytes of fingerprinted file content missing from the cache that were read from another blob's disk-cached chunks instead of fetching the blob being read.", nil, nil)
	descBReads    = prometheus.NewDesc(ns+"_backend_reads_total", "Reads issued to an input file (primary or blob).", []string{"blob"}, nil)
	descBBytes    = prometheus.NewDesc(ns+"_backend_read_bytes_total", "Bytes read from an input file (primary or blob).", []string{"blob"}, nil)
	descBErrors   = prometheus.NewDesc(ns+"_backend_errors_total", "Failed or short reads of an input file.", []string{"blob"}, nil)
)

func (c *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHits, descMisses, descDedup, descEvictions, descResident, descCapacity, descPages, descLocal} {
		ch <- d
	}
}

func (c *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.fn()
	ch <- prometheus.MustNewConstMetric(descHits, prometheus.CounterValue, float64(s.Hits))
	ch <- prometheus.MustNewConstMetric(descMisses, prometheus.CounterValue, float64(s.Misses))
	for _, k := range []string{"file", "copy", "content"} {
		ch <- prometheus.MustNewConstMetric(descDedup, prometheus.CounterValue, float64(s.DedupHits[k]), k)
	}
	ch <- prometheus.MustNewConstMetric(descEvictions, prometheus.CounterValue, float64(s.Evictions))
	ch <- prometheus.MustNewConstMetric(descResident, prometheus.GaugeValue, float64(s.ResidentBytes))
	ch <- prometheus.MustNewConstMetric(descCapacity, prometheus.GaugeValue, float64(s.CapacityBytes))
	ch <- prometheus.MustNewConstMetric(descPages, prometheus.GaugeValue, float64(s.Pages))
	ch <- prometheus.MustNewConstMetric(descLocal, prometheus.CounterValue, float64(s.ContentLocalBytes))
}

type backendCollector struct{ fn func() []BackendStats }

func (c *backendCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descBReads
	ch <- descBBytes
	ch <- descBErrors
}

func (c *backendCollector) Collect(ch chan<- prometheus.Metric) {
	for _, b := range c.fn() {
		ch <- prometheus.MustNewConstMetric(descBReads, prometheus.CounterValue, float64(b.Reads), b.Blob)
		ch <- prometheus.MustNewConstMetric(descBBytes, prometheus.CounterValue, float64(b.Bytes), b.Blob)
		ch <- prometheus.MustNewConstMetric(descBErrors, prometheus.CounterValue, float64(b.Errors), b.Blob)
	}
}

// sourceMetrics are the per-source counters of remote blobs; *Metrics is a
// source.Observer through them.
type sourceMetrics struct {
	requests, reqErrors, bytes, retries, failures *prometheus.CounterVec
	inflight                                      *prometheus.GaugeVec
	latency                                       *prometheus.HistogramVec
}

func newSourceMetrics() *sourceMetrics {
	l := []string{"source"}
	return &sourceMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "source_requests_total",
			Help: "Ranged GETs sent to remote sources, by source."}, l),
		reqErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "source_request_errors_total",
			Help: "Ranged GETs to remote sources that failed (status, transport, a short or wrong answer), by source."}, l),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "source_fetched_bytes_total",
			Help: "Bytes received and checked from remote sources, by source."}, l),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "source_retries_total",
			Help: "Failed ranged GETs retried, by source."}, l),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "source_read_failures_total",
			Help: "Remote reads that failed after every retry (answered with EIO), by source."}, l),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "source_requests_in_flight",
			Help: "Ranged GETs to remote sources in flight, by source."}, l),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "source_request_duration_seconds",
			Help:    "Time of one ranged GET to a remote source, from sending it to its last byte checked, by source.",
			Buckets: prometheus.ExponentialBuckets(250e-6, 4, 10)}, l), // 250µs .. 65s
	}
}

func (s *sourceMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{s.requests, s.reqErrors, s.bytes, s.retries, s.failures, s.inflight, s.latency}
}

// FetchStart implements source.Observer.
func (m *Metrics) FetchStart(src string) {
	m.src.requests.WithLabelValues(src).Inc()
	m.src.inflight.WithLabelValues(src).Inc()
}

// FetchDone implements source.Observer.
func (m *Metrics) FetchDone(src string, n int, took time.Duration, err error) {
	m.src.inflight.WithLabelValues(src).Dec()
	m.src.latency.WithLabelValues(src).Observe(took.Seconds())
	if err != nil {
		m.src.reqErrors.WithLabelValues(src).Inc()
		return
	}
	m.src.bytes.WithLabelValues(src).Add(float64(n))
}

// FetchRetry implements source.Observer.
func (m *Metrics) FetchRetry(src string) { m.src.retries.WithLabelValues(src).Inc() }

// FetchFailed implements source.Observer.
func (m *Metrics) FetchFailed(src string) { m.src.failures.WithLabelValues(src).Inc() }

// AddSource creates a source's series at zero, so a scrape shows every
// remote source before its first request.
func (m *Metrics) AddSource(src string) {
	for _, v := range []*prometheus.CounterVec{m.src.requests, m.src.reqErrors, m.src.bytes, m.src.retries, m.src.failures} {
		v.WithLabelValues(src)
	}
	m.src.inflight.WithLabelValues(src)
	m.src.latency.WithLabelValues(src)
}

// DiskCacheStats is what the daemon reports about the disk cache
// (--cache-dir).
type DiskCacheStats struct {
	Bytes, CapacityBytes, Entries                                   int64
	Hits, Misses, Evictions, CheckFailures, WriteErrors, DigestFail uint64
	Checks                                                          uint64
}

type diskCollector struct{ fn func() DiskCacheStats }

var (
	descDBytes    = prometheus.NewDesc(ns+"_disk_cache_bytes", "Chunk bytes on disk in the disk cache (--cache-dir).", nil, nil)
	descDCap      = prometheus.NewDesc(ns+"_disk_cache_capacity_bytes", "The disk cache's byte bound (--cache-dir-size).", nil, nil)
	descDEntries  = prometheus.NewDesc(ns+"_disk_cache_entries", "Chunks held by the disk cache.", nil, nil)
	descDHits     = prometheus.NewDesc(ns+"_disk_cache_hits_total", "Chunks served from the disk cache.", nil, nil)
	descDMisses   = prometheus.NewDesc(ns+"_disk_cache_misses_total", "Chunk lookups the disk cache could not serve (fetched from the source).", nil, nil)
	descDEvict    = prometheus.NewDesc(ns+"_disk_cache_evictions_total", "Chunks evicted from the disk cache to stay under its bound.", nil, nil)
	descDCheck    = prometheus.NewDesc(ns+"_disk_cache_check_failures_total", "Chunks found damaged on disk (checksum, length, key) and dropped; they are refetched.", nil, nil)
	descDWriteErr = prometheus.NewDesc(ns+"_disk_cache_write_errors_total", "Chunk writes that failed (disk full, read-only, I/O error); serving continues from the network.", nil, nil)
	descDDigest   = prometheus.NewDesc(ns+"_disk_cache_digest_failures_total", "Fully cached OCI blobs whose bytes did not match their digest (their chunks were dropped).", nil, nil)
	descDChecks   = prometheus.NewDesc(ns+"_disk_cache_checks_total", "Chunk files read whole and checksummed (the first read in a boot, or after the file changed); later reads trust the file while it is unchanged.", nil, nil)
)

func (c *diskCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDBytes, descDCap, descDEntries, descDHits, descDMisses, descDEvict, descDCheck, descDWriteErr, descDDigest, descDChecks} {
		ch <- d
	}
}

func (c *diskCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.fn()
	ch <- prometheus.MustNewConstMetric(descDBytes, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(descDCap, prometheus.GaugeValue, float64(s.CapacityBytes))
	ch <- prometheus.MustNewConstMetric(descDEntries, prometheus.GaugeValue, float64(s.Entries))
	ch <- prometheus.MustNewConstMetric(descDHits, prometheus.CounterValue, float64(s.Hits))
	ch <- prometheus.MustNewConstMetric(descDMisses, prometheus.CounterValue, float64(s.Misses))
	ch <- prometheus.MustNewConstMetric(descDEvict, prometheus.CounterValue, float64(s.Evictions))
	ch <- prometheus.MustNewConstMetric(descDCheck, prometheus.CounterValue, float64(s.CheckFailures))
	ch <- prometheus.MustNewConstMetric(descDWriteErr, prometheus.CounterValue, float64(s.WriteErrors))
	ch <- prometheus.MustNewConstMetric(descDDigest, prometheus.CounterValue, float64(s.DigestFail))
	ch <- prometheus.MustNewConstMetric(descDChecks, prometheus.CounterValue, float64(s.Checks))
}
