package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/source"
)

// imageFlags is the one way every command names an image: --blob repeated,
// first the primary, then its extra devices in slot order; or a single
// positional IMAGE.
type imageFlags struct {
	blobs  []string
	remote remoteFlags
	op     *source.Opener
}

func (f *imageFlags) register(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.blobs, "blob", nil, "image `SOURCE`: a file, http(s)://URL or oci://HOST[:PORT]/REPO@sha256:HEX; repeat: the first is the primary, the rest its devices in slot order")
	f.remote.register(fs)
}

// opener returns the one source opener of this command (shared HTTP
// clients, tokens and per-host limits).
func (f *imageFlags) opener() *source.Opener {
	if f.op == nil {
		f.op = f.remote.opener(nil)
	}
	return f.op
}

// remoteFlags configure http(s):// and oci:// sources.
type remoteFlags struct {
	authFile, certDir, chunk string
	insecure                 []string
	parallel, retries        int
	stall                    time.Duration
}

func (r *remoteFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&r.authFile, "authfile", "", "registry credentials `FILE` (containers auth.json / docker config.json; default: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, $DOCKER_CONFIG/config.json, ~/.docker/config.json)")
	fs.StringVar(&r.certDir, "cert-dir", "", "extra CA certificates (`DIR`/*.crt) for https:// and oci:// sources")
	fs.StringArrayVar(&r.insecure, "insecure-registry", nil, "allow plain HTTP to registry `HOST:PORT` (repeatable)")
	fs.StringVar(&r.chunk, "fetch-chunk", "1M", "fetch unit for remote blobs")
	fs.IntVar(&r.parallel, "fetch-parallel", 8, "concurrent requests per remote host")
	fs.DurationVar(&r.stall, "fetch-stall-timeout", 10*time.Second, "retry a remote request that receives nothing (no answer, no body bytes) for this long")
	fs.IntVar(&r.retries, "fetch-retries", 5, "retries of a failed remote read (exponential backoff with jitter)")
}

// options turns the flags into source options; a bad --fetch-chunk is an
// error.
func (r *remoteFlags) options(log *slog.Logger) (source.Options, error) {
	chunk, err := parseSize(r.chunk)
	if err != nil || chunk < 4096 || chunk > 64<<20 {
		return source.Options{}, fmt.Errorf("--fetch-chunk %q: want 4K..64M", r.chunk)
	}
	if r.parallel < 1 || r.parallel > 1024 {
		return source.Options{}, fmt.Errorf("--fetch-parallel %d: want 1..1024", r.parallel)
	}
	if r.stall < 0 {
		return source.Options{}, fmt.Errorf("--fetch-stall-timeout %v < 0", r.stall)
	}
	if r.retries < 0 || r.retries > 100 {
		return source.Options{}, fmt.Errorf("--fetch-retries %d: want 0..100", r.retries)
	}
	retries := r.retries
	if retries == 0 {
		retries = -1
	}
	return source.Options{AuthFile: r.authFile, CertDir: r.certDir, Insecure: r.insecure,
		Chunk: chunk, Parallel: r.parallel, Retries: retries, StallTimeout: r.stall, Logger: log}, nil
}

// opener returns an opener for the flags (checked by resolve, which every
// command calls first).
func (r *remoteFlags) opener(log *slog.Logger) *source.Opener {
	o, _ := r.options(log)
	return source.NewOpener(o)
}

// resolve merges positional arguments into the blob list. pos are the
// positional arguments that name images (at most one, and only without --blob).
func (f *imageFlags) resolve(pos []string) ([]string, error) {
	if _, err := f.remote.options(nil); err != nil {
		return nil, err
	}
	switch {
	case len(pos) > 1:
		return nil, fmt.Errorf("more than one positional IMAGE (%s); use --blob FILE for each device", strings.Join(pos, " "))
	case len(pos) == 1 && len(f.blobs) > 0:
		return nil, fmt.Errorf("both --blob and a positional IMAGE %q given; use --blob for all files", pos[0])
	case len(pos) == 1:
		return pos, nil
	case len(f.blobs) == 0:
		return nil, fmt.Errorf("no image given: use --blob PRIMARY [--blob DEVICE ...] or a positional IMAGE")
	}
	return f.blobs, nil
}

// openFiles are the opened sources. The caller closes them.
type openFiles []io.Closer

func (o openFiles) Close() {
	for _, f := range o {
		f.Close()
	}
}

// openSources opens every source (file or remote) as flatdev sources.
func openSources(paths []string, op *source.Opener) ([]flatdev.Source, openFiles, error) {
	if op == nil {
		op = source.NewOpener(source.Options{})
	}
	var files openFiles
	var srcs []flatdev.Source
	for _, p := range paths {
		b, err := op.Open(context.Background(), p)
		if err != nil {
			files.Close()
			return nil, nil, err
		}
		files = append(files, b)
		srcs = append(srcs, flatdev.Source{Name: b.Name(), R: b, Size: b.Size()})
	}
	return srcs, files, nil
}

// composeFlags are the flags that shape the composed device.
type composeFlags struct {
	align         string
	verifyDigests bool
	onError       func(blob string, err error) // flatdev.Options.OnError (serve)
}

func (c *composeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.align, "align", "", "alignment of the unified addresses assigned to devices whose slot has none (e.g. 4096, 512K; default one block)")
	fs.BoolVar(&c.verifyDigests, "verify-digests", false, "hash blobs whose slot tag is a sha256 and refuse a mismatch")
}

// compose opens the blobs and builds the flat device.
func compose(paths []string, op *source.Opener, c composeFlags, progress io.Writer) (*flatdev.Device, openFiles, error) {
	align, err := parseSize(c.align)
	if err != nil {
		return nil, nil, fmt.Errorf("--align: %w", err)
	}
	srcs, files, err := openSources(paths, op)
	if err != nil {
		return nil, nil, err
	}
	opt := flatdev.Options{Align: align, VerifyDigests: c.verifyDigests, OnError: c.onError}
	if progress != nil && isTerminal(progress) {
		opt.Progress = progressPrinter(progress)
	}
	dev, err := flatdev.New(srcs[0], srcs[1:], opt)
	if err != nil {
		files.Close()
		return nil, nil, err
	}
	return dev, files, nil
}

// parseSize parses "4096", "512K", "1M", "2G" (binary units). "" is 0.
func parseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	var v int64
	if _, err := fmt.Sscan(s, &v); err != nil || v < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return v * mult, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func progressPrinter(w io.Writer) func(string, int64, int64) {
	last := int64(-1)
	return func(name string, done, total int64) {
		pct := int64(100)
		if total > 0 {
			pct = done * 100 / total
		}
		if pct != last {
			last = pct
			fmt.Fprintf(w, "\rhashing %s: %3d%%", name, pct)
			if done >= total {
				fmt.Fprintln(w)
			}
		}
	}
}

// openImage opens the primary and its devices (as separate files) with the
// erofs decoder, so data ranges are read from, and checked against, each
// blob's real size.
func openImage(paths []string, op *source.Opener) (*erofs.Image, openFiles, error) {
	srcs, files, err := openSources(paths, op)
	if err != nil {
		return nil, nil, err
	}
	var devs []erofs.Dev
	for _, s := range srcs[1:] {
		devs = append(devs, erofs.Dev{R: s.R, Size: s.Size})
	}
	var opts []erofs.Option
	if len(devs) > 0 {
		opts = append(opts, erofs.WithDevices(devs...))
	}
	img, err := erofs.Open(srcs[0].R, srcs[0].Size, opts...)
	if err != nil {
		files.Close()
		return nil, nil, fmt.Errorf("%s: %w", paths[0], err)
	}
	return img, files, nil
}
