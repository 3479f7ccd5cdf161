package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

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
	cpuProfile := fs.String("debug-cpuprofile", "", "write a Go CPU profile of the whole run to `FILE` (benchmarks)")
	fs.MarkHidden("debug-cpuprofile")
	sec.register(fs)
	ef.register(fs)
	uf := registerUblkFlags(fs)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	log := newLogger(stderr, *logLevel)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "erofs-blockd serve:", err)
			return exitUnusable
		}
		pprof.StartCPUProfile(f)
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
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
	dmn, err := ef.newDaemon(log, &img, cf)
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd serve:", err)
		return exitUnusable
	}
	defer dmn.Close()
	for _, sp := range specs {
		ex, err := dmn.Add(sp)
		if err == nil {
			err = checkImage(ex.Flat, *check)
		}
		if err != nil {
			if len(specs) > 1 {
				err = fmt.Errorf("export %q: %w", sp.Name, err)
			}
			fmt.Fprintln(stderr, "erofs-blockd serve:", err)
			return exitUnusable
		}
	}
	exports := dmn.Exports()
	dev, paths := exports[0].Flat, exports[0].Spec.Blobs
	*name = exports[0].Spec.Name

	ncfg := nbd.Config{
		MaxRequest:     uint32(maxReq),
		MaxInFlight:    *maxInFlight,
		MaxConnections: *maxConns,
		Logger:         log,
	}
	sec.apply(&ncfg)
	srv, err := dmn.NBDServer(ncfg)
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd serve:", err)
		return exitUnusable
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
		for _, ex := range exports {
			u := uri
			if ex.Spec.Name != "" {
				u = withExportName(uri, ex.Spec.Name)
			}
			fmt.Fprintf(stdout, "serving %s (%d bytes)\n", u, ex.Flat.Size())
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, net.ErrClosed) {
				serveErr <- err
			}
		}()
	}

	if ef.metricsListen != "" {
		addr, stopMetrics, err := dmn.ServeMetrics(ef.metricsListen)
		if err != nil {
			fmt.Fprintln(stderr, "erofs-blockd serve:", err)
			shutdown(srv, listeners, nil, log)
			return exitUnusable
		}
		defer stopMetrics()
		fmt.Fprintf(stdout, "metrics http://%s/metrics\n", addr)
	}

	ef.startPrefetch(ctx, dmn, log)

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

	if err := uf.attach(exports[0].Dev, *blockSize, uint32(dev.Superblock().BlockSize()), stdout, log); err != nil {
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
