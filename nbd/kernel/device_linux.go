package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Device is an attached /dev/nbdN.
type Device struct {
	index  int
	method Method
	cfg    Config
	log    *slog.Logger
	serve  func(net.Conn)

	mu       sync.Mutex
	conns    []net.Conn // server ends, closed on forced teardown
	detached bool

	wg   sync.WaitGroup // serve goroutines
	done chan struct{}  // closed when every serve goroutine returned

	ioc *ioctlState // ioctl method only
}

// Attach configures a /dev/nbdN device backed by serve and returns once the
// kernel has accepted it. serve runs once per connection, in its own
// goroutine, with the server end of a socketpair; it must speak the NBD
// transmission phase (no handshake) until the connection closes. serve may be
// called before Attach returns, and is called with a connection that closes
// at once if Attach fails.
//
// ctx bounds the attach only; the device stays attached until Detach (or
// until every serve callback returned and the kernel gave up on the sockets).
func Attach(ctx context.Context, cfg Config, serve func(net.Conn)) (*Device, error) {
	if serve == nil {
		return nil, errors.New("nbd: nil serve function")
	}
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	method := cfg.Method
	var nl *nlClient
	if method != MethodIoctl {
		c, err := dialNetlink(ctx, cfg.OpTimeout)
		switch {
		case err == nil:
			nl = c
			method = MethodNetlink
		case method == MethodAuto && errors.Is(err, errNoFamily):
			cfg.Logger.Debug("nbd: no netlink family, using ioctls", "err", err)
			method = MethodIoctl
		default:
			return nil, err
		}
	}
	if nl != nil {
		defer nl.close()
	}

	d := &Device{index: cfg.Index, method: method, cfg: cfg, log: cfg.Logger, serve: serve, done: make(chan struct{})}
	kfds, err := d.startConns(cfg.Connections)
	if err != nil {
		return nil, err
	}
	defer closeFDs(kfds) // the kernel holds its own references

	switch method {
	case MethodNetlink:
		idx, err := nl.connect(ctx, &cfg, kfds)
		if err != nil {
			d.abort()
			if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
				// The kernel may have connected a device whose reply we
				// did not wait for: undo it.
				undoLostConnect(&cfg)
			}
			return nil, fmt.Errorf("nbd: netlink connect %s: %w", indexName(cfg.Index), err)
		}
		d.index = idx
	case MethodIoctl:
		if err := d.attachIoctl(ctx, kfds); err != nil {
			d.abort()
			return nil, err
		}
	}
	if err := d.waitSize(ctx, true, func(n int64) bool { return n > 0 }); err != nil {
		d.log.Warn("nbd: device did not come up; detaching", "device", d.Path(), "err", err)
		if derr := d.Detach(); derr != nil {
			d.log.Warn("nbd: detach after failed attach", "device", d.Path(), "err", derr)
		}
		return nil, fmt.Errorf("nbd: %s did not come up: %w", d.Path(), err)
	}
	d.log.Debug("nbd: attached", "device", d.Path(), "method", method.String(),
		"size", cfg.Size, "connections", cfg.Connections)
	return d, nil
}

func indexName(i int) string {
	if i < 0 {
		return "(any device)"
	}
	return DevicePath(i)
}

// Path returns "/dev/nbdN".
func (d *Device) Path() string { return DevicePath(d.index) }

// Index returns N of /dev/nbdN.
func (d *Device) Index() int { return d.index }

// Method returns the method that configured the device.
func (d *Device) Method() Method { return d.method }

// Size returns the device size in bytes (the configured size rounded up to
// the block size).
func (d *Device) Size() int64 { return d.cfg.Size }

// Done is closed once every serve callback has returned: after Detach, or
// when all connections died. A netlink device stays configured (its I/O
// failing, or waiting DeadConnTimeout for Reattach) until Detach.
func (d *Device) Done() <-chan struct{} { return d.done }

// Detach disconnects the device (NBD_CMD_DISCONNECT or NBD_DISCONNECT and
// NBD_CLEAR_SOCK), waits for the serve callbacks to return, and waits for the
// kernel to drop the device size to 0. It fails, after Config.OpTimeout, if
// the device is still open (mounted, for instance). Detach is idempotent.
func (d *Device) Detach() error {
	return d.DetachContext(context.Background())
}

// DetachContext is Detach with a context bounding the waits.
func (d *Device) DetachContext(ctx context.Context) error {
	d.mu.Lock()
	already := d.detached
	d.detached = true
	d.mu.Unlock()

	var errs []error
	if !already {
		switch d.method {
		case MethodNetlink:
			err := func() error {
				nl, err := dialNetlink(ctx, d.cfg.OpTimeout)
				if err != nil {
					return err
				}
				defer nl.close()
				return nl.disconnect(ctx, d.index)
			}()
			if err != nil {
				errs = append(errs, fmt.Errorf("nbd: netlink disconnect %s: %w", d.Path(), err))
			}
		case MethodIoctl:
			if err := d.detachIoctl(ctx); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// The kernel sends NBD_CMD_DISC and shuts its socket ends down, so the
	// serve callbacks see EOF. Force them if they do not return in time.
	if err := d.waitServe(ctx, d.cfg.OpTimeout); err != nil {
		d.log.Warn("nbd: serve callbacks did not return; closing connections", "device", d.Path())
		d.closeConns()
		if err := d.waitServe(ctx, d.cfg.OpTimeout); err != nil {
			errs = append(errs, fmt.Errorf("nbd: %s: serve callbacks still running after close: %w", d.Path(), err))
		}
	}
	if err := d.waitSize(ctx, false, func(n int64) bool { return n == 0 }); err != nil {
		errs = append(errs, fmt.Errorf("nbd: %s: size did not drop to 0 (still open or mounted?): %w", d.Path(), err))
	}
	if len(errs) == 0 {
		d.log.Debug("nbd: detached", "device", d.Path())
	}
	return errors.Join(errs...)
}

// startConns makes n socketpairs, starts serve on the server ends, and
// returns the kernel ends.
func (d *Device) startConns(n int) (kfds []int, err error) {
	var srv []net.Conn
	defer func() {
		if err != nil {
			closeFDs(kfds)
			for _, c := range srv {
				c.Close()
			}
		}
	}()
	for i := 0; i < n; i++ {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return kfds, fmt.Errorf("nbd: socketpair: %w", err)
		}
		kfds = append(kfds, fds[0])
		f := os.NewFile(uintptr(fds[1]), "nbd-server-"+strconv.Itoa(i))
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return kfds, fmt.Errorf("nbd: wrap socket: %w", err)
		}
		srv = append(srv, c)
	}
	d.mu.Lock()
	d.conns = srv
	d.mu.Unlock()
	d.wg.Add(len(srv))
	for _, c := range srv {
		go func(c net.Conn) {
			defer d.wg.Done()
			defer c.Close()
			d.serve(c)
		}(c)
	}
	go func() {
		d.wg.Wait()
		close(d.done)
	}()
	return kfds, nil
}

// abort tears down the serve side after a failed attach.
func (d *Device) abort() {
	d.mu.Lock()
	d.detached = true
	d.mu.Unlock()
	d.closeConns()
	<-d.done
}

func (d *Device) closeConns() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		c.Close()
	}
}

func (d *Device) waitServe(ctx context.Context, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-d.done:
		return nil
	case <-t.C:
		return context.DeadlineExceeded
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitSize polls /sys/block/nbdN/size until ok(size in bytes) or timeout.
// While attaching, an NBD_DO_IT that already returned ends the wait.
func (d *Device) waitSize(ctx context.Context, attaching bool, ok func(int64) bool) error {
	deadline := time.Now().Add(d.cfg.OpTimeout)
	delay := time.Millisecond
	var last int64 = -1
	var lastErr error
	for {
		n, err := sysfsSize(d.index)
		if err == nil && ok(n) {
			return nil
		}
		last, lastErr = n, err
		if attaching && d.ioc != nil {
			if err := d.ioc.earlyExit(); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			if lastErr != nil {
				return lastErr
			}
			return fmt.Errorf("timed out, size %d bytes", last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		if delay < 50*time.Millisecond {
			delay *= 2
		}
	}
}

// sysfsSize returns the size of /dev/nbdN in bytes.
func sysfsSize(index int) (int64, error) {
	b, err := os.ReadFile("/sys/block/nbd" + strconv.Itoa(index) + "/size")
	if err != nil {
		return 0, err
	}
	sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, err
	}
	return sectors * 512, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// undoLostConnect disconnects devices this process connected but never heard
// back about: configured by one of our threads, with our backend identifier. Without a
// backend identifier only a named index is considered.
func undoLostConnect(cfg *Config) {
	var candidates []int
	if cfg.Index >= 0 {
		candidates = []int{cfg.Index}
	} else if cfg.BackendID != "" {
		ents, _ := os.ReadDir("/sys/block")
		for _, e := range ents {
			if n, err := ParseDevicePath(e.Name()); err == nil {
				candidates = append(candidates, n)
			}
		}
	}
	for _, idx := range candidates {
		dir := "/sys/block/nbd" + strconv.Itoa(idx) + "/"
		// The kernel records the thread that connected (a TID).
		pid, err := os.ReadFile(dir + "pid")
		if err != nil {
			continue
		}
		if tid := strings.TrimSpace(string(pid)); tid == "" || strings.ContainsRune(tid, '/') {
			continue
		} else if _, err := os.Stat("/proc/self/task/" + tid); err != nil {
			continue
		}
		if cfg.BackendID != "" {
			b, err := os.ReadFile(dir + "backend")
			if err != nil || strings.TrimSpace(string(b)) != cfg.BackendID {
				continue
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), cfg.OpTimeout)
		nl, err := dialNetlink(ctx, cfg.OpTimeout)
		if err == nil {
			err = nl.disconnect(ctx, idx)
			nl.close()
		}
		cancel()
		cfg.Logger.Warn("nbd: undid a connect whose reply was lost", "device", DevicePath(idx), "err", err)
	}
}
