package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/erofs-blockd/erofs-blockd/metrics"
	"github.com/erofs-blockd/erofs-blockd/nbd"
	"github.com/erofs-blockd/erofs-blockd/nbd/kernel"
	"github.com/erofs-blockd/erofs-blockd/source"
)

func runServe(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("serve", "[flags] [IMAGE] [/dev/nbdX] [/dev/ublkbN]", stderr)
	var img imageFlags
	var cf composeFlags
	var sec securityFlags
	var ef exportFlags
	img.register(fs)
	cf.register(fs)
	listens := fs.StringArray("listen", nil, "serve NBD on `ADDR`: unix:PATH or tcp:HOST:PORT (repeatable)")
	name := fs.String("name", "", "export name (clients may also use the empty default name)")
	check := fs.String("check", "quick", "image check before serving: quick (superblock, device table, root directory), full (the whole verify walk), off")
	conns := fs.Int("connections", 0, "kernel sockets for /dev/nbdX (default: number of CPUs, at most 16)")
	blockSize := fs.Uint32("block-size", 0, "logical block size for /dev/nbdX (default: the image's block size)")
	timeout := fs.Duration("timeout", 30*time.Second, "kernel request timeout for /dev/nbdX")
	deadConn := fs.Duration("dead-conn-timeout", 0, "how long the kernel waits for a dead connection to be replaced (0: kernel default)")
	backendID := fs.String("backend-id", "", "backend identifier recorded with /dev/nbdX (default: derived from the image)")
	maxConns := fs.Int("max-connections", 1024, "maximum concurrent NBD client connections")
	maxInFlight := fs.Int("max-inflight", 64, "maximum requests served concurrently per connection")
	maxRequest := fs.String("max-request", "32M", "maximum request size")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	sec.register(fs)
	ef.register(fs)
	uf := registerUblkFlags(fs)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	log := newLogger(stderr, *logLevel)
	var device string
	var pos []string
	for _, a := range fs.Args() {
		if uf.takeDevice(a) {
			continue
		}
		if strings.HasPrefix(a, "/dev/nbd") {
			if device != "" {
				fmt.Fprintf(stderr, "erofs-blockd serve: more than one device (%s, %s)\n", device, a)
				return exitUnusable
			}
			device = a
			continue
		}
		pos = append(pos, a)
	}
	var paths []string
	var err error
	if len(pos) > 0 || len(img.blobs) > 0 || (len(ef.exports) == 0 && ef.config == "") {
		paths, err = img.resolve(pos)
	}
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd serve:", err)
		return exitUnusable
	}
	if len(*listens) == 0 && device == "" && !uf.enabled() {
		fmt.Fprintln(stderr, "erofs-blockd serve: nothing to serve on: give --listen unix:PATH / tcp:HOST:PORT and/or a /dev/nbdX device and/or --ublk")
		return exitUnusable
	}
	maxReq, err := parseSize(*maxRequest)
	if err != nil || maxReq < 4096 || maxReq > 1<<30 {
		fmt.Fprintf(stderr, "erofs-blockd serve: --max-request %q: want 4K..1G\n", *maxRequest)
		return exitUnusable
	}
	if err := sec.resolve(); err != nil {
		fmt.Fprintln(stderr, "erofs-blockd serve:", err)
		return exitUnusable
	}
	faults := newBlobFaults(log)
	cf.onError = faults.report
	// Every export (--blob/positional, --export, --config) is composed over
	// files opened once and the one shared cache (serve_exports.go). dev,
	// paths and *name are the first export's: the default export and the
	// one attached to /dev/nbdX.
	specs, err := ef.specs(paths, *name)
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd serve:", err)
		return exitUnusable
	}
	img.op = img.remote.opener(log)
	state, err := ef.newDaemonState(log, img.op)
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd serve:", err)
		return exitUnusable
	}
	defer state.Close()
	for _, sp := range specs {
		ex, err := state.add(sp, cf, stderr)
		if err == nil {
			err = checkImage(ex.flat, *check)
		}
		if err != nil {
			if len(specs) > 1 {
				err = fmt.Errorf("export %q: %w", sp.Name, err)
			}
			fmt.Fprintln(stderr, "erofs-blockd serve:", err)
			return exitUnusable
		}
	}
	dev, paths := state.exports[0].flat, state.exports[0].spec.Blobs
	*name = state.exports[0].spec.Name
	mtr := metrics.New(version(), state.metricsSources())

	ncfg := nbd.Config{
		MaxRequest:     uint32(maxReq),
		MaxInFlight:    *maxInFlight,
		MaxConnections: *maxConns,
		Logger:         log,
	}
	sec.apply(&ncfg)
	ncfg.Observer = mtr
	srv := nbd.NewServer(ncfg)
	for _, ex := range state.exports {
		desc := ex.spec.Description
		if desc == "" {
			desc = defaultDescription(ex.spec.Blobs)
		}
		if err := srv.AddExport(nbd.Export{Name: ex.spec.Name, Description: desc, Device: ex.dev}); err != nil {
			fmt.Fprintln(stderr, "erofs-blockd serve:", err)
			return exitUnusable
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var wg sync.WaitGroup
	var listeners []net.Listener
	serveErr := make(chan error, len(*listens)+1)
	for _, spec := range *listens {
		l, uri, err := sec.listen(spec)
		if err != nil {
			fmt.Fprintln(stderr, "erofs-blockd serve:", err)
			for _, l := range listeners {
				l.Close()
			}
			return exitUnusable
		}
		listeners = append(listeners, l)
		for _, ex := range state.exports {
			u := uri
			if ex.spec.Name != "" {
				u = withExportName(uri, ex.spec.Name)
			}
			fmt.Fprintf(stdout, "serving %s (%d bytes)\n", u, ex.flat.Size())
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, net.ErrClosed) {
				serveErr <- err
			}
		}()
	}

	stopMetrics, err := startMetrics(ef.metricsListen, mtr, stdout, log)
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd serve:", err)
		shutdown(srv, listeners, nil, log)
		return exitUnusable
	}
	defer stopMetrics()

	var kdev *kernel.Device
	if device != "" {
		idx, err := kernel.ParseDevicePath(device)
		if err != nil {
			fmt.Fprintln(stderr, "erofs-blockd serve:", err)
			return exitUnusable
		}
		bsz := *blockSize
		if bsz == 0 {
			bsz = uint32(dev.Superblock().BlockSize())
		}
		n := *conns
		if n <= 0 {
			n = min(max(1, numCPU()), 16)
		}
		id := *backendID
		if id == "" {
			id = "erofs-blockd:" + source.Redacted(paths[:1])[0]
		}
		kdev, err = sec.attach(ctx, kernel.Config{
			Index: idx, Size: dev.Size(), BlockSize: bsz, Connections: n,
			Timeout: *timeout, DeadConnTimeout: *deadConn, BackendID: id, ReadOnly: true, Logger: log,
		}, func(c net.Conn) {
			if err := srv.ServeTransmission(ctx, c, *name); err != nil && ctx.Err() == nil {
				log.Warn("kernel connection ended", "err", err)
			}
		})
		if err != nil {
			fmt.Fprintf(stderr, "erofs-blockd serve: %s %s: %v\n", strings.TrimSuffix(sec.attachVerb(), "ed"), device, err)
			shutdown(srv, listeners, nil, log)
			return exitUnusable
		}
		fmt.Fprintf(stdout, "%s %s (%d bytes, %d connections, read-only)\n", sec.attachVerb(), kdev.Path(), dev.Size(), n)
	}

	if err := uf.attach(state.exports[0].dev, *blockSize, uint32(dev.Superblock().BlockSize()), stdout, log); err != nil {
		fmt.Fprintln(stderr, "erofs-blockd serve:", err)
		shutdown(srv, listeners, kdev, log)
		return exitUnusable
	}

	code := exitOK
	select {
	case <-ctx.Done():
		log.Info("signal received, shutting down")
	case err := <-serveErr:
		log.Error("serve failed", "err", err)
		code = exitUnusable
	}
	stop()
	if err := uf.close(log); err != nil {
		code = exitUnusable
	}
	if err := shutdown(srv, listeners, kdev, log); err != nil {
		code = exitUnusable
	}
	wg.Wait()
	return code
}

// shutdown detaches the kernel device, stops listening and lets in-flight
// replies finish (bounded by 5 s).
func shutdown(srv *nbd.Server, listeners []net.Listener, kdev *kernel.Device, log interface {
	Error(string, ...any)
}) error {
	var firstErr error
	if kdev != nil {
		if err := kdev.Detach(); err != nil {
			log.Error("detach", "device", kdev.Path(), "err", err)
			firstErr = err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && firstErr == nil {
		log.Error("shutdown", "err", err)
		firstErr = err
	}
	for _, l := range listeners {
		l.Close()
	}
	return firstErr
}

func withExportName(uri, name string) string {
	// nbd+unix:///?socket=... -> nbd+unix:///NAME?socket=...; nbd://h:p -> nbd://h:p/NAME
	if i := strings.Index(uri, ":///"); i >= 0 {
		return uri[:i+4] + name + uri[i+4:]
	}
	return uri + "/" + name
}

// defaultDescription names the primary and the blobs, shortened so it stays
// well inside NBD's 4096-byte limit for any number of blobs.
func defaultDescription(blobs []string) string {
	blobs = source.Redacted(blobs)
	desc := "erofs-blockd: " + strings.Join(blobs, " + ")
	if len(desc) <= 1024 || len(blobs) == 0 {
		return desc
	}
	return fmt.Sprintf("erofs-blockd: %s + %d blobs", blobs[0], len(blobs)-1)
}
