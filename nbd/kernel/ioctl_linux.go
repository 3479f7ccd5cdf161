package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ioctls from include/uapi/linux/nbd.h: _IO(0xab, n).
const (
	ioSetSock       = 0xab00
	ioSetBlksize    = 0xab01
	ioDoIt          = 0xab03
	ioClearSock     = 0xab04
	ioSetSizeBlocks = 0xab07
	ioDisconnect    = 0xab08
	ioSetTimeout    = 0xab09
	ioSetFlags      = 0xab0a
)

// ioctlState tracks the OS thread parked in NBD_DO_IT.
type ioctlState struct {
	mu     sync.Mutex
	fd     int // /dev/nbdN, owned by the thread; -1 once closed
	tid    int // the thread parked in NBD_DO_IT
	exited chan struct{}
	err    error // NBD_DO_IT's result, valid after exited is closed
}

// earlyExit reports NBD_DO_IT's error if it already returned.
func (s *ioctlState) earlyExit() error {
	select {
	case <-s.exited:
		if s.err != nil {
			return fmt.Errorf("NBD_DO_IT: %w", s.err)
		}
		return errors.New("NBD_DO_IT returned")
	default:
		return nil
	}
}

func (s *ioctlState) ioctl(req uint, arg uintptr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return os.ErrClosed
	}
	return ioctl(s.fd, req, arg)
}

func ioctl(fd int, req uint, arg uintptr) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), arg)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}

// attachIoctl configures the device with ioctls, trying free devices in
// turn when cfg.Index is -1.
func (d *Device) attachIoctl(ctx context.Context, kfds []int) error {
	candidates := []int{d.cfg.Index}
	if d.cfg.Index < 0 {
		candidates = freeDevices()
		if len(candidates) == 0 {
			return errors.New("nbd: no free /dev/nbdN (is the nbd module loaded?)")
		}
	}
	var errs []error
	for _, idx := range candidates {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := d.tryIoctl(ctx, idx, kfds)
		if err == nil {
			d.index = idx
			return nil
		}
		errs = append(errs, err)
		if d.cfg.Index >= 0 || !errors.Is(err, unix.EBUSY) {
			break
		}
	}
	return errors.Join(errs...)
}

// tryIoctl runs the setup ioctls and NBD_DO_IT on a dedicated OS thread and
// returns once setup is done.
func (d *Device) tryIoctl(ctx context.Context, idx int, kfds []int) error {
	path := DevicePath(idx)
	if _, err := os.Stat(filepath.Join("/sys/block", filepath.Base(path), "pid")); err == nil {
		return fmt.Errorf("nbd: %s: %w (already connected)", path, unix.EBUSY)
	}
	st := &ioctlState{fd: -1, exited: make(chan struct{})}
	setup := make(chan error, 1)
	go func() {
		// The thread stays locked and dies with this goroutine, taking its
		// signal mask with it. Signals must stay blocked: a signal arriving
		// during NBD_DO_IT makes the kernel shut the device down.
		runtime.LockOSThread()
		var all unix.Sigset_t
		for i := range all.Val {
			all.Val[i] = ^all.Val[i] // every signal (SIGKILL and SIGSTOP are ignored)
		}
		if err := unix.PthreadSigmask(unix.SIG_BLOCK, &all, nil); err != nil {
			setup <- fmt.Errorf("nbd: block signals: %w", err)
			close(st.exited)
			return
		}
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				err = fmt.Errorf("%w (is the nbd module loaded? nbds_max too small?)", err)
			}
			setup <- fmt.Errorf("nbd: open %s: %w", path, err)
			close(st.exited)
			return
		}
		st.mu.Lock()
		st.fd = fd
		st.mu.Unlock()
		closeFD := func() {
			st.mu.Lock()
			unix.Close(st.fd)
			st.fd = -1
			st.mu.Unlock()
		}
		if err := d.setupIoctls(fd, kfds); err != nil {
			closeFD()
			setup <- fmt.Errorf("nbd: %s: %w", path, err)
			close(st.exited)
			return
		}
		st.tid = unix.Gettid()
		setup <- nil
		err = ioctl(fd, ioDoIt, 0)
		d.log.Debug("nbd: NBD_DO_IT returned", "device", path, "err", err)
		if cerr := ioctl(fd, ioClearSock, 0); cerr != nil {
			d.log.Debug("nbd: NBD_CLEAR_SOCK", "device", path, "err", cerr)
		}
		closeFD()
		st.err = err
		close(st.exited)
	}()
	select {
	case err := <-setup:
		if err != nil {
			return err
		}
	case <-ctx.Done():
		// Setup ioctls do not block for long; wait for the thread so that
		// it does not outlive the kernel fds, then undo.
		if err := <-setup; err == nil {
			d.ioc = st
			d.detachIoctl(context.Background())
			d.ioc = nil
		}
		return ctx.Err()
	}
	d.ioc = st
	return nil
}

func (d *Device) setupIoctls(fd int, kfds []int) error {
	cfg := &d.cfg
	if err := ioctl(fd, ioSetBlksize, uintptr(cfg.BlockSize)); err != nil {
		return fmt.Errorf("NBD_SET_BLKSIZE %d: %w", cfg.BlockSize, err)
	}
	blocks := uint64(cfg.Size) / uint64(cfg.BlockSize)
	if err := ioctl(fd, ioSetSizeBlocks, uintptr(blocks)); err != nil {
		return fmt.Errorf("NBD_SET_SIZE_BLOCKS %d: %w", blocks, err)
	}
	if t := seconds(cfg.Timeout); t > 0 {
		if err := ioctl(fd, ioSetTimeout, uintptr(t)); err != nil {
			return fmt.Errorf("NBD_SET_TIMEOUT %d: %w", t, err)
		}
	}
	if err := ioctl(fd, ioSetFlags, uintptr(cfg.serverFlags())); err != nil {
		return fmt.Errorf("NBD_SET_FLAGS: %w", err)
	}
	for i, k := range kfds {
		if err := ioctl(fd, ioSetSock, uintptr(k)); err != nil {
			if i > 0 {
				ioctl(fd, ioClearSock, 0)
			}
			return fmt.Errorf("NBD_SET_SOCK (socket %d): %w", i, err)
		}
	}
	return nil
}

// detachIoctl asks the server side to disconnect (NBD_DISCONNECT), waits for
// NBD_DO_IT to return, and forces it with NBD_CLEAR_SOCK if it does not.
func (d *Device) detachIoctl(ctx context.Context) error {
	st := d.ioc
	if st == nil {
		return nil
	}
	if err := st.ioctl(ioDisconnect, 0); err != nil && !errors.Is(err, os.ErrClosed) {
		d.log.Debug("nbd: NBD_DISCONNECT", "device", d.Path(), "err", err)
	}
	wait := func(t time.Duration) bool {
		tm := time.NewTimer(t)
		defer tm.Stop()
		select {
		case <-st.exited:
			return true
		case <-tm.C:
		case <-ctx.Done():
		}
		return false
	}
	if wait(d.cfg.OpTimeout / 3) {
		return nil
	}
	d.log.Warn("nbd: NBD_DO_IT still running after NBD_DISCONNECT; clearing sockets", "device", d.Path())
	if err := st.ioctl(ioClearSock, 0); err != nil && !errors.Is(err, os.ErrClosed) {
		d.log.Debug("nbd: NBD_CLEAR_SOCK", "device", d.Path(), "err", err)
	}
	d.closeConns()
	if wait(d.cfg.OpTimeout) {
		return nil
	}
	return fmt.Errorf("nbd: %s: NBD_DO_IT did not return", d.Path())
}

// freeDevices lists the indexes of /sys/block/nbdN that are not connected,
// in numeric order.
func freeDevices() []int {
	ents, _ := os.ReadDir("/sys/block")
	var out []int
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "nbd") {
			continue
		}
		n, err := strconv.Atoi(name[3:])
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join("/sys/block", name, "pid")); err == nil {
			continue
		}
		if size, err := sysfsSize(n); err != nil || size != 0 {
			continue
		}
		out = append(out, n)
	}
	sort.Ints(out)
	return out
}
