// Package source turns a blob source spec into a readable blob: a local
// path, an http(s):// URL served with Range support, or an OCI registry
// blob (oci://HOST[:PORT]/REPO@sha256:HEX). Every blob is an io.ReaderAt
// with a size; remote ones are read lazily in aligned chunks with checked,
// retried ranged GETs (fetch.go), registries authenticated the way
// skopeo/podman/containerd users expect (registry.go, authfile.go, tls.go).
// It knows nothing of EROFS or NBD.
package source

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Blob is one opened source.
type Blob interface {
	io.ReaderAt
	Size() int64
	// Name is the spec with anything secret (URL query, user info) removed:
	// safe for logs, metrics and errors.
	Name() string
	// Identity names the content: device+inode for files, the digest for
	// OCI blobs, URL + validator + size for HTTP objects.
	Identity() string
	Close() error
}

// Options configure remote sources. The zero value works: anonymous
// access, system TLS roots, default chunking.
type Options struct {
	// AuthFile is a containers auth.json / docker config.json; "" searches
	// $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
	// $DOCKER_CONFIG/config.json, ~/.docker/config.json.
	AuthFile string
	// CertDir holds extra CA certificates (*.crt) trusted for every host.
	CertDir string
	// Insecure lists HOST:PORT registries that may be reached over plain HTTP.
	Insecure []string
	// Chunk is the fetch unit in bytes (default 1 MiB).
	Chunk int64
	// Parallel bounds concurrent requests per host (default 8).
	Parallel int
	// Retries is the number of retries after a failed attempt (default 5).
	Retries int
	// RetryBase is the first backoff delay, doubled per retry up to 5 s
	// (default 100 ms).
	RetryBase time.Duration
	// StallTimeout cancels (and retries) a request that receives nothing
	// for this long: no response, or no body bytes (default 10 s).
	StallTimeout time.Duration
	Logger       *slog.Logger
	// Store, if set, keeps fetched chunks across restarts (package
	// diskcache): OCI blobs by digest, HTTP objects by URL, validator and
	// size; blob sizes are kept too, so a cached blob opens while its
	// server is unreachable.
	Store ChunkStore
	// Observer is told about every request to a remote source (metrics).
	Observer Observer
	// IndexDir keeps the random-access indexes of gzip:/zstd: sources
	// (and zstd blobs decoded whole); "" keeps them next to local files
	// and only in memory for remote blobs (decode.go).
	IndexDir string
	// certsRoot overrides /etc (tests).
	certsRoot string
}

// ChunkStore is a persistent store of fetched chunks (package diskcache).
// Get fills p and reports success only for an intact chunk; Put is best
// effort. Keys are opaque.
type ChunkStore interface {
	Get(key string, idx int64, p []byte) (int, bool)
	Put(key string, idx int64, data []byte)
	GetMeta(key string) ([]byte, bool)
	PutMeta(key string, val []byte)
	// Drop forgets every chunk of key.
	Drop(key string)
}

// ChunkLeaser is a ChunkStore that can lend the file holding a stored
// chunk, so its bytes go to a socket with sendfile (diskcache.Cache.Lease):
// the chunk's data are the n bytes of f at off, checked as Get checks
// them; the caller closes f. A miss is not counted (the caller then reads
// with Get, which counts it).
type ChunkLeaser interface {
	Lease(key string, idx int64) (f *os.File, off, n int64, ok bool)
}

// Observer is told about the requests of remote sources; source is the
// blob's redacted name. Package metrics implements it. Calls come from many
// goroutines at once.
type Observer interface {
	// FetchStart is called when a ranged GET is sent.
	FetchStart(source string)
	// FetchDone is called when it has ended: bytes received and checked
	// (0 on error), the time it took, and its error if any.
	FetchDone(source string, bytes int, took time.Duration, err error)
	// FetchRetry is called before a failed request is retried.
	FetchRetry(source string)
	// FetchFailed is called when a read gives up (its caller gets EIO).
	FetchFailed(source string)
}

type nopObserver struct{}

func (nopObserver) FetchStart(string)                           {}
func (nopObserver) FetchDone(string, int, time.Duration, error) {}
func (nopObserver) FetchRetry(string)                           {}
func (nopObserver) FetchFailed(string)                          {}

// IsRemote reports whether spec names a remote source (also under
// gzip:/zstd:).
func IsRemote(spec string) bool {
	spec = Inner(spec)
	return strings.HasPrefix(spec, "oci://") || strings.HasPrefix(spec, "http://") || strings.HasPrefix(spec, "https://")
}

// Opener opens sources with shared state (HTTP clients, tokens, per-host
// limits), so many blobs on one registry share connections and tokens.
type Opener struct {
	opt     Options
	hosts   *hostPool
	keep    *keeper
	regs    map[string]*registry    // guarded by hosts.mu
	clients map[string]*http.Client // plain HTTP(S) sources by origin; guarded by hosts.mu

	digestOK, digestBad atomic.Uint64
	sums                chunkSums // chunk digests by identity (chunksums.go)
	memIndex            sync.Map  // "gzip:"/"zstd:" + identity -> index (decode.go)
	knownSizes          sync.Map  // OCI identity -> size from a checked manifest
}

// KnowSize tells the size of the OCI blob with this digest (from a
// digest-checked manifest), so opening it sends no probe.
func (o *Opener) KnowSize(digest string, size int64) {
	if size > 0 {
		o.knownSizes.Store("oci:"+digest, size)
	}
}

// NewOpener returns an Opener. It is safe for concurrent use.
func NewOpener(opt Options) *Opener {
	warmSystemPool()
	if opt.Chunk <= 0 {
		opt.Chunk = 1 << 20
	}
	if opt.Parallel <= 0 {
		opt.Parallel = 8
	}
	if opt.RetryBase <= 0 {
		opt.RetryBase = 100 * time.Millisecond
	}
	if opt.StallTimeout <= 0 {
		opt.StallTimeout = 10 * time.Second
	}
	if opt.Retries < 0 {
		opt.Retries = 0
	} else if opt.Retries == 0 {
		opt.Retries = 5
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opt.Observer == nil {
		opt.Observer = nopObserver{}
	}
	return &Opener{opt: opt, hosts: newHostPool(opt), keep: newKeeper(opt.Chunk)}
}

// DigestChecks counts the whole-blob digest checks of fully stored OCI
// blobs: passed and failed (whose chunks were dropped).
func (o *Opener) DigestChecks() (ok, bad uint64) { return o.digestOK.Load(), o.digestBad.Load() }

func (o *Opener) digestChecked(name string, err error) {
	if err != nil {
		o.digestBad.Add(1)
		o.opt.Logger.Error("digest check of a cached blob failed", "source", name, "err", err)
		return
	}
	o.digestOK.Add(1)
	o.opt.Logger.Info("cached blob matches its digest", "source", name)
}

// Open opens spec.
func (o *Opener) Open(ctx context.Context, spec string) (Blob, error) {
	switch {
	case IsDecoded(spec):
		return o.openDecoded(ctx, spec)
	case strings.HasPrefix(spec, "oci://"):
		return o.openOCI(ctx, spec)
	case strings.HasPrefix(spec, "http://"), strings.HasPrefix(spec, "https://"):
		return o.openHTTP(ctx, spec)
	}
	return OpenFile(spec)
}

// File is a local file or block device.
type File struct {
	*os.File
	size int64
	id   string
}

// OpenFile opens a regular file or block device read-only.
func OpenFile(path string) (*File, error) {
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
	id := "file:" + path
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		id = fmt.Sprintf("file:%d:%d", s.Dev, s.Ino)
	}
	return &File{File: f, size: size, id: id}, nil
}

func (f *File) Size() int64      { return f.size }
func (f *File) Identity() string { return f.id }

// Redacted returns the specs with URL queries and user info removed, for
// descriptions and logs.
func Redacted(specs []string) []string {
	out := make([]string, len(specs))
	for i, s := range specs {
		if in := Inner(s); strings.HasPrefix(in, "http://") || strings.HasPrefix(in, "https://") {
			s = WithInner(s, redactSpec(in))
		}
		out[i] = s
	}
	return out
}
