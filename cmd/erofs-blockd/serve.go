package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/erofs-blockd/erofs-blockd/daemon"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
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
	imageRef := fs.String("image", "", "serve the image `REF` (oci://HOST/REPO:TAG or @sha256:..., oci-layout:DIR[:TAG]) as the export named by --name, instead of --blob")
	platform := fs.String("platform", "", "with --image, the platform to pick from an image index: `OS/ARCH[/VARIANT]` (default: this host's)")
	apiListen := fs.String("api", "", "serve the control API (erofs-blockd export add|ls|rm) on `unix:PATH`; serve may then start with no export")
	apiMode := fs.String("api-mode", "0600", "permission bits of the --api socket (octal); whoever can connect can make the daemon open any file it can read")
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
	vf := registerVhostFlags(fs)
	flagUsage := fs.Usage
	fs.Usage = func() { flagUsage(); fmt.Fprint(stderr, activationHelp) }
	if code, ok := parse(fs, args); !ok {
		return code
	}
	activated, err := activatedListeners()
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd serve:", err)
		return exitUnusable
	}
	var apiL net.Listener
	var nbdActivated []net.Listener
	for _, a := range activated {
		switch {
		case a.name == "api" && apiL == nil && *apiListen == "":
			apiL = a.l
		case a.name == "api":
			fmt.Fprintln(stderr, "erofs-blockd serve: socket activation: more than one API socket (an \"api\" socket and --api, or two \"api\" sockets)")
			return exitUnusable
		default:
			nbdActivated = append(nbdActivated, a.l)
		}
	}
	defer func() {
		for _, a := range activated {
			a.l.Close() // those not handed on (each Close is harmless twice)
		}
	}()
	withAPI := apiL != nil || *apiListen != ""
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
	if *imageRef != "" && (len(pos) > 0 || len(img.blobs) > 0) {
		fmt.Fprintln(stderr, "erofs-blockd serve: --image or --blob/IMAGE, not both")
		return exitUnusable
	}
	if *platform != "" && *imageRef == "" {
		fmt.Fprintln(stderr, "erofs-blockd serve: --platform needs --image")
		return exitUnusable
	}
	if len(pos) > 0 || len(img.blobs) > 0 || (len(ef.exports) == 0 && ef.config == "" && *imageRef == "" && !withAPI) {
		paths, err = img.resolve(pos)
	}
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd serve:", err)
		return exitUnusable
	}
	if len(*listens) == 0 && len(nbdActivated) == 0 && device == "" && !uf.enabled() && !vf.enabled() {
		fmt.Fprintln(stderr, "erofs-blockd serve: nothing to serve on: give --listen unix:PATH / tcp:HOST:PORT (or activated sockets) and/or a /dev/nbdX device and/or --ublk")
		return exitUnusable
	}
	apiSockMode, err := strconv.ParseUint(*apiMode, 8, 32)
	if err != nil || apiSockMode&^0o777 != 0 || apiSockMode&0o600 != 0o600 {
		fmt.Fprintf(stderr, "erofs-blockd serve: --api-mode %q: want octal permission bits with owner read and write, such as 0600 or 0660\n", *apiMode)
		return exitUnusable
	}
	if *apiListen != "" && !strings.HasPrefix(*apiListen, "unix:") {
		fmt.Fprintf(stderr, "erofs-blockd serve: --api %q: want unix:PATH (the API has no authentication of its own)\n", *apiListen)
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
	if err == nil && *imageRef != "" {
		specs = append([]daemon.Spec{{Name: *name, Image: *imageRef, Platform: *platform, Domain: ef.domain}}, specs...)
		err = daemon.CheckSpecs(specs)
	}
	if err == nil && len(specs) == 0 && (device != "" || uf.enabled() || vf.enabled()) {
		err = errors.New("a /dev/nbdX or ublk device needs an export at start (--blob, --image, --export or --config)")
	}
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
	var dev *flatdev.Device
	if len(exports) > 0 {
		dev, paths = exports[0].Flat, exports[0].Spec.Blobs
		*name = exports[0].Spec.Name
		if device != "" || uf.enabled() || vf.enabled() {
			dmn.Pin(*name, "attached to a kernel device")
		}
	}
	dmn.SetCheck(func(ex *daemon.Export) error { return checkImage(ex.Flat, *check) })

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
	stopAPI := func() {}
	serveErr := make(chan error, len(*listens)+len(nbdActivated)+2)
	nbdListen := append([]string(nil), *listens...)
	for range nbdActivated {
		nbdListen = append(nbdListen, "")
	}
	for i, spec := range nbdListen {
		var l net.Listener
		var uri string
		var err error
		if i < len(*listens) {
			l, uri, err = sec.listen(spec)
		} else {
			l, uri, err = activatedNBD(&sec, nbdActivated[i-len(*listens)])
		}
		if err != nil {
			fmt.Fprintln(stderr, "erofs-blockd serve:", err)
			for _, l := range listeners {
				l.Close()
			}
			return exitUnusable
		}
		listeners = append(listeners, l)
		if len(exports) == 0 {
			fmt.Fprintf(stdout, "listening %s (no exports yet: add them through the API)\n", uri)
		}
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

	if *apiListen != "" {
		apiL, _, err = nbd.ListenWith(*apiListen, nbd.ListenOptions{SocketMode: os.FileMode(apiSockMode)})
		if err != nil {
			fmt.Fprintln(stderr, "erofs-blockd serve: --api:", strings.TrimPrefix(err.Error(), "nbd: "))
			shutdown(srv, listeners, nil, log)
			return exitUnusable
		}
	}
	if apiL != nil {
		hs := dmn.APIServer()
		hs.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := hs.Serve(apiL); err != nil && !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("api: %w", err)
			}
		}()
		// Stopped before the NBD server: no export comes or goes while it
		// stops.
		stopAPI = sync.OnceFunc(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := hs.Shutdown(ctx); err != nil {
				hs.Close()
			}
		})
		defer stopAPI()
		_, apiAddr := listenerURI(apiL)
		fmt.Fprintf(stdout, "api %s\n", apiAddr)
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

	if uf.enabled() { // (exports[0] exists then)
		if err := uf.attach(exports[0].Dev, *blockSize, uint32(dev.Superblock().BlockSize()), stdout, log); err != nil {
			fmt.Fprintln(stderr, "erofs-blockd serve:", err)
			shutdown(srv, listeners, kdev, log)
			return exitUnusable
		}
	}

	if vf.enabled() { // (exports[0] exists then)
		if err := vf.start(exports[0].Dev, *blockSize, uint32(dev.Superblock().BlockSize()), stdout, log); err != nil {
			fmt.Fprintln(stderr, "erofs-blockd serve:", err)
			uf.close(log)
			shutdown(srv, listeners, kdev, log)
			return exitUnusable
		}
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
	stopAPI()
	if err := uf.close(log); err != nil {
		code = exitUnusable
	}
	if err := vf.close(log); err != nil {
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
