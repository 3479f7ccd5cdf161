package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/erofs-blockd/erofs-blockd/blobcache"
	"github.com/erofs-blockd/erofs-blockd/daemon"
)

// exportFlags are serve's flags for many exports in one daemon, the shared
// content cache and metrics. The exports themselves live in package daemon.
type exportFlags struct {
	exports       []string
	config        string
	domain        string
	cacheSize     string
	fingerprints  string
	metricsListen string
	backendDelay  time.Duration
	prefetch      string
	cacheDir      string
	cacheDirSize  string
	prefetchRate  string
	recordTrace   string
	prefetchTrace string
}

// defaultCacheSize is off: on local, page-cached blobs the cache's first
// pass (every page a miss: one more copy and the index, ~3x the server CPU
// per byte of a direct read) measurably slows reads,
// while a warm pass is no faster than the page cache; it pays off only when
// backend reads are expensive (README "Shared cache" has the figures).
const defaultCacheSize = "0"

// defaultCacheDirSize bounds --cache-dir: room for a few typical images'
// layers without surprising anyone's disk.
const defaultCacheDirSize = "10G"

func (e *exportFlags) register(fs *pflag.FlagSet) {
	fs.StringArrayVar(&e.exports, "export", nil, "serve export `NAME=SOURCE,SOURCE,...` (repeatable; first the primary, the rest its devices in slot order; files, gzip:/zstd:, http(s):// or oci://) or NAME=image:REF[,platform=OS/ARCH]")
	fs.StringVar(&e.config, "config", "", "JSON `FILE` listing exports: {\"exports\":[{\"name\":..., \"blobs\":[...], \"domain\":...}]}")
	fs.StringVar(&e.domain, "domain", "", "dedup domain of the --blob/--export exports: exports in the same non-empty domain share cached file contents by fingerprint (like the kernel's domain_id)")
	fs.StringVar(&e.cacheSize, "cache-size", defaultCacheSize, "size of the content cache shared by all exports, e.g. 256M; 0 = off (default: worth it when blob reads are slow or remote, not for local page-cached files)")
	fs.StringVar(&e.fingerprints, "fingerprints", blobcache.FingerprintXattr, "file-content keys for the cache: xattr (ishare fingerprint xattrs), compute (xattrs, else sha256 every uncompressed file at startup), off")
	fs.StringVar(&e.metricsListen, "metrics-listen", "", "serve Prometheus metrics on http://`HOST:PORT`/metrics")
	fs.StringVar(&e.cacheDir, "cache-dir", "", "persistent cache of remote blob chunks in `DIR` (kept across restarts, shared by every export; one daemon per DIR)")
	fs.StringVar(&e.cacheDirSize, "cache-dir-size", defaultCacheDirSize, "bound of --cache-dir's chunk bytes on disk")
	fs.StringVar(&e.prefetch, "prefetch", "none", "background fill of remote blobs: none, or all (every chunk of every remote blob, after demand reads)")
	fs.StringVar(&e.prefetchRate, "prefetch-rate", "0", "limit --prefetch all to `SIZE` per second, e.g. 50M (0: no limit)")
	fs.StringVar(&e.recordTrace, "record-trace", "", "record the NBD reads of every export to `FILE` in first-access order (64 KiB granules)")
	fs.StringVar(&e.prefetchTrace, "prefetch-trace", "", "at start, prefetch the ranges of a trace `FILE` written by --record-trace (in parallel, after demand reads)")
	fs.DurationVar(&e.backendDelay, "debug-backend-delay", 0, "add this latency to every read of an input file (benchmarks: models a remote blob store)")
	fs.MarkHidden("debug-backend-delay")
}

// specs gathers the exports: first the --blob/positional one (named name),
// then --export flags, then the config file's.
func (e *exportFlags) specs(single []string, name string) ([]daemon.Spec, error) {
	var out []daemon.Spec
	if len(single) > 0 {
		out = append(out, daemon.Spec{Name: name, Blobs: single, Domain: e.domain})
	}
	for _, s := range e.exports {
		sp, err := daemon.ParseExport(s, e.domain)
		if err != nil {
			return nil, err
		}
		out = append(out, sp)
	}
	if e.config != "" {
		c, err := daemon.LoadConfig(e.config)
		if err != nil {
			return nil, err
		}
		out = append(out, c...)
	}
	return out, daemon.CheckSpecs(out)
}

// newDaemon turns the flags into a daemon.
func (e *exportFlags) newDaemon(log *slog.Logger, img *imageFlags, cf composeFlags) (*daemon.Daemon, error) {
	size, err := parseSize(e.cacheSize)
	if err != nil {
		return nil, fmt.Errorf("--cache-size: %w", err)
	}
	switch e.prefetch {
	case "none", "all":
	default:
		return nil, fmt.Errorf("--prefetch %q: want none or all", e.prefetch)
	}
	dirSize, err := parseSize(e.cacheDirSize)
	if err != nil || (e.cacheDir != "" && dirSize < 1<<20) {
		return nil, fmt.Errorf("--cache-dir-size %q: want at least 1M", e.cacheDirSize)
	}
	if e.prefetch == "all" && e.cacheDir == "" {
		return nil, fmt.Errorf("--prefetch all needs --cache-dir (there is nowhere to keep what it fetches)")
	}
	if _, err := parseSize(e.prefetchRate); err != nil {
		return nil, fmt.Errorf("--prefetch-rate: %w", err)
	}
	align, err := parseSize(cf.align)
	if err != nil {
		return nil, fmt.Errorf("--align: %w", err)
	}
	so, err := img.remote.options(log)
	if err != nil {
		return nil, err
	}
	return daemon.New(daemon.Config{
		CacheSize: size, Fingerprints: e.fingerprints, BackendDelay: e.backendDelay,
		Align: align, VerifyDigests: cf.verifyDigests, OnError: cf.onError,
		Source: so, Logger: log, Version: version(), RecordTrace: e.recordTrace,
		CacheDir: e.cacheDir, CacheDirSize: dirSize,
	})
}

// startPrefetch runs --prefetch-trace and --prefetch all in the
// background; they stop with ctx.
func (e *exportFlags) startPrefetch(ctx context.Context, d *daemon.Daemon, log *slog.Logger) {
	if e.prefetchTrace != "" {
		go func() {
			st, err := d.ReplayTrace(ctx, e.prefetchTrace, 8)
			if err == nil {
				err = st.Err
			}
			if err != nil {
				log.Warn("prefetch trace", "file", e.prefetchTrace, "err", err)
			}
			log.Info("prefetch trace done", "ranges", st.Ranges, "bytes", st.Bytes, "took", st.Took.Round(time.Millisecond))
		}()
	}
	if e.prefetch == "all" {
		rate, _ := parseSize(e.prefetchRate)
		go func() {
			st := d.PrefetchAll(ctx, 0, rate, 2)
			if st.Err != nil {
				log.Warn("prefetch all", "err", st.Err)
			}
			log.Info("prefetch all done", "bytes", st.Bytes, "took", st.Took.Round(time.Millisecond))
		}()
	}
}
