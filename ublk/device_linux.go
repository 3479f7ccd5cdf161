package ublk

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Device is a started ublk device. Close stops and deletes it.
type Device struct {
	cfg    Config
	log    *slog.Logger
	size   int64
	info   devInfo
	ctrlFd int
	ctrl   *ring
	ctrlMu sync.Mutex
	arg    []byte // one page of argument memory for control commands
	charFd int
	queues []*queue
	added  bool // STOP_DEV + DEL_DEV on close
	feat   uint64
	req    Config // the Config as given, before defaults (what was asked for explicitly)

	reattached bool

	closeOnce sync.Once
	closeErr  error
}

// ID returns N of /dev/ublkbN.
func (d *Device) ID() int { return int(d.info.DevID) }

// Path returns /dev/ublkbN.
func (d *Device) Path() string { return fmt.Sprintf("/dev/ublkb%d", d.info.DevID) }

// Queues returns the number of hardware queues the driver accepted.
func (d *Device) Queues() int { return int(d.info.NrHwQueues) }

// Depth returns the queue depth.
func (d *Device) Depth() int { return int(d.info.QueueDepth) }

// MaxIO returns the largest request size in bytes.
func (d *Device) MaxIO() int { return int(d.info.MaxIOBufBytes) }

// Reattached reports whether Start took over an existing device
// (Config.Reattach) rather than creating one.
func (d *Device) Reattached() bool { return d.reattached }

// Recovery reports whether the device survives its server
// (UBLK_F_USER_RECOVERY), and whether the requests a dead server held are
// issued again (UBLK_F_USER_RECOVERY_REISSUE) rather than failed.
func (d *Device) Recovery() (recovery, reissue bool) {
	return d.info.Flags&featUserRecovery != 0, d.info.Flags&featUserRecoveryReissue != 0
}

// Start creates the device (ADD_DEV, SET_PARAMS), starts its queues and
// the block device (START_DEV). On error nothing is left behind.
func Start(cfg Config) (*Device, error) {
	if cfg.Device == nil {
		return nil, errors.New("ublk: no device")
	}
	req := cfg
	if cfg.Reattach && cfg.ID < 0 {
		return nil, errors.New("ublk: reattach needs the device id (/dev/ublkbN)")
	}
	if cfg.Queues <= 0 {
		cfg.Queues = runtime.NumCPU()
	}
	if cfg.Depth <= 0 {
		cfg.Depth = DefaultDepth
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 512
	}
	if cfg.MaxIO == 0 {
		cfg.MaxIO = DefaultMaxIO
	}
	switch {
	case cfg.Queues > 4096:
		return nil, fmt.Errorf("ublk: %d queues (at most 4096)", cfg.Queues)
	case cfg.Depth > maxQueueDepth:
		return nil, fmt.Errorf("ublk: queue depth %d (at most %d)", cfg.Depth, maxQueueDepth)
	case cfg.BlockSize < 512 || cfg.BlockSize > 4096 || cfg.BlockSize&(cfg.BlockSize-1) != 0:
		return nil, fmt.Errorf("ublk: block size %d (want a power of two from 512 to 4096)", cfg.BlockSize)
	case cfg.MaxIO < 4096 || cfg.MaxIO%4096 != 0 || cfg.MaxIO > 32<<20:
		return nil, fmt.Errorf("ublk: maximum I/O %d (want a multiple of 4096, at most 32 MiB)", cfg.MaxIO)
	case cfg.ID < -1:
		return nil, fmt.Errorf("ublk: device id %d", cfg.ID)
	}
	size := cfg.Device.Size()
	bs := int64(cfg.BlockSize)
	if size <= 0 {
		return nil, errors.New("ublk: empty device")
	}
	d := &Device{cfg: cfg, req: req, log: cfg.Logger, ctrlFd: -1, charFd: -1, size: size}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if err := d.start((size + bs - 1) / bs * bs); err != nil {
		d.teardown(true)
		return nil, err
	}
	return d, nil
}

func (d *Device) start(devSize int64) error {
	fd, err := unix.Open(ControlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("ublk: %s: %w (load the ublk_drv module)", ControlPath, err)
		}
		return fmt.Errorf("ublk: %s: %w", ControlPath, err)
	}
	d.ctrlFd = fd
	if d.ctrl, err = newRing(4, setupSQE128); err != nil {
		return fmt.Errorf("ublk: control ring: %w", err)
	}
	if d.arg, err = unix.Mmap(-1, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return fmt.Errorf("ublk: %w", err)
	}

	// GET_FEATURES (Linux 6.5+) tells whether ioctl-encoded commands work.
	clear(d.arg[:8])
	if res, err := d.ctrlCmd(cmdGetFeatures, ctrlCmd{DevID: ^uint32(0), QueueID: 0xffff, Len: 8, Addr: d.argAddr()}); err != nil {
		return err
	} else if res < 0 {
		return fmt.Errorf("ublk: GET_FEATURES: %w (the driver predates Linux 6.5)", unix.Errno(-res))
	}
	feat := *(*uint64)(unsafe.Pointer(&d.arg[0]))
	d.log.Debug("ublk features", "flags", fmt.Sprintf("%#x", feat))
	if feat&featCmdIoctlEncode == 0 {
		return errors.New("ublk: driver lacks UBLK_F_CMD_IOCTL_ENCODE")
	}

	d.feat = feat
	if d.cfg.Reattach {
		info, err := d.getDevInfo(uint32(d.cfg.ID))
		if err == nil {
			return d.reattach(devSize, info)
		}
		if !errors.Is(err, unix.ENODEV) {
			return err
		}
		d.log.Info("ublk: no device to reattach; creating it", "device", fmt.Sprintf("/dev/ublkb%d", d.cfg.ID))
	}
	return d.create(devSize)
}

// create adds the device (ADD_DEV, SET_PARAMS), starts the queues and
// the disk (START_DEV).
func (d *Device) create(devSize int64) error {
	id := ^uint32(0)
	if d.cfg.ID >= 0 {
		id = uint32(d.cfg.ID)
	}
	flags := uint64(featCmdIoctlEncode)
	if !d.cfg.NoRecovery {
		flags |= d.feat & (featUserRecovery | featUserRecoveryReissue)
	}
	info := devInfo{
		NrHwQueues:    uint16(d.cfg.Queues),
		QueueDepth:    uint16(d.cfg.Depth),
		MaxIOBufBytes: d.cfg.MaxIO,
		DevID:         id,
		Flags:         flags,
		UblksrvFlags:  serverTag,
	}
	*(*devInfo)(unsafe.Pointer(&d.arg[0])) = info
	res, err := d.ctrlCmd(cmdAddDev, ctrlCmd{DevID: id, QueueID: 0xffff, Len: uint16(unsafe.Sizeof(info)), Addr: d.argAddr()})
	if err != nil {
		return err
	}
	if res < 0 {
		if d.cfg.ID >= 0 && unix.Errno(-res) == unix.EEXIST {
			return d.existsError(id)
		}
		return fmt.Errorf("ublk: ADD_DEV: %w", unix.Errno(-res))
	}
	d.info = *(*devInfo)(unsafe.Pointer(&d.arg[0]))
	d.added = true
	if d.info.QueueDepth == 0 || d.info.NrHwQueues == 0 || d.info.MaxIOBufBytes < 4096 {
		return fmt.Errorf("ublk: ADD_DEV returned %d queues, depth %d, max I/O %d", d.info.NrHwQueues, d.info.QueueDepth, d.info.MaxIOBufBytes)
	}
	if !d.cfg.NoRecovery && d.info.Flags&featUserRecovery == 0 {
		d.log.Warn("ublk: the driver lacks UBLK_F_USER_RECOVERY: the device goes away with this server", "features", fmt.Sprintf("%#x", d.feat))
	}

	lbs := shift(d.cfg.BlockSize)
	p := params{Len: uint32(unsafe.Sizeof(params{})), Types: paramTypeBasic, Basic: paramBasic{
		Attrs:           attrReadOnly,
		LogicalBSShift:  lbs,
		PhysicalBSShift: max(lbs, 12),
		IOOptShift:      12,
		IOMinShift:      lbs,
		MaxSectors:      d.info.MaxIOBufBytes >> 9,
		DevSectors:      uint64(devSize) >> 9,
	}}
	*(*params)(unsafe.Pointer(&d.arg[0])) = p
	if err := d.devCmd("SET_PARAMS", cmdSetParams, ctrlCmd{Len: uint16(p.Len), Addr: d.argAddr()}); err != nil {
		return err
	}
	if err := d.startQueues(); err != nil {
		return err
	}
	return d.devCmd("START_DEV", cmdStartDev, ctrlCmd{Data: uint64(os.Getpid())})
}

// startQueues opens /dev/ublkcN and starts every queue thread (each posts
// a FETCH_REQ per tag).
func (d *Device) startQueues() error {
	char := fmt.Sprintf("/dev/ublkc%d", d.info.DevID)
	var err error
	for i := 0; ; i++ {
		d.charFd, err = unix.Open(char, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err == nil {
			break
		}
		d.charFd = -1
		if !errors.Is(err, unix.ENOENT) || i >= 100 {
			return fmt.Errorf("ublk: %s: %w", char, err)
		}
		time.Sleep(20 * time.Millisecond) // udev/devtmpfs may lag
	}
	for q := 0; q < int(d.info.NrHwQueues); q++ {
		qu, err := newQueue(d, q)
		if err != nil {
			return err
		}
		d.queues = append(d.queues, qu)
		if err := qu.start(); err != nil {
			return err
		}
	}
	return nil
}

// recoverWait bounds the waits of a reattach: for the dead server's
// device to become quiesced (the driver does it once every queue's
// commands are cancelled at the server's exit, or at the block layer's
// request timeout, 30 s, when the server held every tag of a queue) and
// for its /dev/ublkcN to be released (its io_uring is torn down
// asynchronously).
const recoverWait = 75 * time.Second

// reattach takes over the existing device info.DevID: checks, then
// START_USER_RECOVERY, new queues (FETCH_REQ on every tag), and
// END_USER_RECOVERY, which unquiesces the disk: queued and requeued
// requests reach the new queues. A refusal changes nothing; a failure
// after START_USER_RECOVERY leaves the device quiesced (recoverable again
// once this process has exited), never deleted.
func (d *Device) reattach(devSize int64, info devInfo) error {
	id := info.DevID
	path := fmt.Sprintf("/dev/ublkb%d", id)
	refuse := func(format string, a ...any) error {
		return fmt.Errorf("ublk: reattach %s: "+format, append([]any{path}, a...)...)
	}
	if info.UblksrvFlags != serverTag {
		return refuse("the device was not created by erofs-blockd (ublksrv_flags %#x); not touching it", info.UblksrvFlags)
	}
	if info.Flags&featUserRecovery == 0 {
		return refuse("the device was created without UBLK_F_USER_RECOVERY and cannot be recovered; remove it")
	}
	deadline := time.Now().Add(recoverWait)
	for info.State != stateQuiesced {
		pid := int(info.UblksrvPID)
		switch {
		case info.State == stateLive && pid != os.Getpid() && pidAlive(pid):
			return refuse("it is served by pid %d, which is running", pid)
		case info.State == stateLive:
			// Its server has exited; the driver quiesces the device soon.
		default:
			return refuse("device state %s (server pid %d) is not recoverable; remove it", stateName(info.State), pid)
		}
		if time.Now().After(deadline) {
			return refuse("still live %v after its server (pid %d) exited", recoverWait, pid)
		}
		time.Sleep(50 * time.Millisecond)
		var err error
		if info, err = d.getDevInfo(id); err != nil {
			return err
		}
	}
	p, err := d.getParams(id)
	if err != nil {
		return err
	}
	if p.Types&paramTypeBasic == 0 || p.Basic.Attrs&attrReadOnly == 0 {
		return refuse("the device is not read-only (attrs %#x); not an erofs-blockd device", p.Basic.Attrs)
	}
	if got, want := uint32(1)<<p.Basic.LogicalBSShift, d.cfg.BlockSize; got != want {
		return refuse("its logical block size is %d, this composition's %d", got, want)
	}
	if got, want := int64(p.Basic.DevSectors)<<9, devSize; got != want {
		return refuse("it has %d bytes, this composition %d (rounded up to the block size): a different image?", got, want)
	}
	if q := d.req.Queues; q > 0 && q != int(info.NrHwQueues) && min(q, runtime.NumCPU()) != int(info.NrHwQueues) {
		return refuse("it has %d queues, %d asked for", info.NrHwQueues, q)
	}
	if q := d.req.Depth; q > 0 && q != int(info.QueueDepth) {
		return refuse("its queue depth is %d, %d asked for", info.QueueDepth, q)
	}
	if m := d.req.MaxIO; m > 0 && m != info.MaxIOBufBytes {
		return refuse("its maximum I/O is %d, %d asked for", info.MaxIOBufBytes, m)
	}
	if info.QueueDepth == 0 || info.NrHwQueues == 0 || info.MaxIOBufBytes < 4096 || int(info.QueueDepth) > maxQueueDepth {
		return refuse("%d queues, depth %d, max I/O %d", info.NrHwQueues, info.QueueDepth, info.MaxIOBufBytes)
	}
	d.info = info
	d.log.Info("ublk: reattaching", "device", path, "previous_pid", info.UblksrvPID, "queues", info.NrHwQueues, "depth", info.QueueDepth)

	// EBUSY while the dead server's /dev/ublkcN is still open.
	for {
		res, err := d.ctrlCmd(cmdStartUserRecovery, ctrlCmd{DevID: id, QueueID: 0xffff})
		if err != nil {
			return err
		}
		if res == 0 {
			break
		}
		if unix.Errno(-res) != unix.EBUSY || time.Now().After(deadline) {
			return fmt.Errorf("ublk: START_USER_RECOVERY %s: %w", path, unix.Errno(-res))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := d.startQueues(); err != nil {
		return err
	}
	if err := d.devCmd("END_USER_RECOVERY", cmdEndUserRecovery, ctrlCmd{Data: uint64(os.Getpid())}); err != nil {
		return err
	}
	d.added = true
	d.reattached = true
	return nil
}

// getDevInfo runs GET_DEV_INFO for device id; ENODEV (errors.Is) when
// there is none.
func (d *Device) getDevInfo(id uint32) (devInfo, error) {
	clear(d.arg[:unsafe.Sizeof(devInfo{})])
	res, err := d.ctrlCmd(cmdGetDevInfo, ctrlCmd{DevID: id, QueueID: 0xffff, Len: uint16(unsafe.Sizeof(devInfo{})), Addr: d.argAddr()})
	if err != nil {
		return devInfo{}, err
	}
	if res < 0 {
		return devInfo{}, fmt.Errorf("ublk: GET_DEV_INFO /dev/ublkb%d: %w", id, unix.Errno(-res))
	}
	return *(*devInfo)(unsafe.Pointer(&d.arg[0])), nil
}

// getParams runs GET_PARAMS for device id (the head and basic parameters).
func (d *Device) getParams(id uint32) (params, error) {
	n := uint32(unsafe.Sizeof(params{}))
	clear(d.arg[:n])
	*(*params)(unsafe.Pointer(&d.arg[0])) = params{Len: n}
	res, err := d.ctrlCmd(cmdGetParams, ctrlCmd{DevID: id, QueueID: 0xffff, Len: uint16(n), Addr: d.argAddr()})
	if err != nil {
		return params{}, err
	}
	if res < 0 {
		return params{}, fmt.Errorf("ublk: GET_PARAMS /dev/ublkb%d: %w", id, unix.Errno(-res))
	}
	return *(*params)(unsafe.Pointer(&d.arg[0])), nil
}

// existsError describes the device id that ADD_DEV found in place.
func (d *Device) existsError(id uint32) error {
	info, err := d.getDevInfo(id)
	if err != nil {
		return fmt.Errorf("ublk: ADD_DEV /dev/ublkb%d: the device exists already", id)
	}
	e := &ExistsError{ID: int(id), PID: int(info.UblksrvPID), State: stateName(info.State)}
	e.Running = info.State == stateLive && pidAlive(e.PID)
	e.Recoverable = !e.Running && info.Flags&featUserRecovery != 0 && info.UblksrvFlags == serverTag &&
		(info.State == stateQuiesced || info.State == stateLive)
	return e
}

func stateName(s uint16) string {
	switch s {
	case stateDead:
		return "dead"
	case stateLive:
		return "live"
	case stateQuiesced:
		return "quiesced"
	case stateFailIO:
		return "fail-io"
	}
	return fmt.Sprintf("state %d", s)
}

// pidAlive reports whether pid is a process that has not exited (a zombie
// has: its threads, and with them its io_urings, are gone).
func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := unix.Kill(pid, 0); err != nil && err != unix.EPERM {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // no procfs: trust kill
	}
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z' && b[i+2] != 'X'
	}
	return true
}

func shift(v uint32) uint8 {
	var s uint8
	for v > 1 {
		v >>= 1
		s++
	}
	return s
}

func (d *Device) argAddr() uint64 { return uint64(uintptr(unsafe.Pointer(&d.arg[0]))) }

// devCmd runs a control command on this device and turns a negative result
// into an error.
func (d *Device) devCmd(name string, op uint32, c ctrlCmd) error {
	c.DevID = d.info.DevID
	c.QueueID = 0xffff
	res, err := d.ctrlCmd(op, c)
	if err != nil {
		return err
	}
	if res < 0 {
		return fmt.Errorf("ublk: %s /dev/ublkb%d: %w", name, d.info.DevID, unix.Errno(-res))
	}
	return nil
}

// ctrlCmd submits one control command and waits for its completion.
func (d *Device) ctrlCmd(op uint32, c ctrlCmd) (int32, error) {
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	sqe := d.ctrl.getSQE()
	if sqe == nil {
		return 0, errors.New("ublk: control ring full")
	}
	payload := prepUringCmd(sqe, d.ctrlFd, op, uint64(op))
	*(*ctrlCmd)(unsafe.Pointer(&payload[0])) = c
	if err := d.ctrl.submit(1); err != nil {
		return 0, fmt.Errorf("ublk: control command: %w", err)
	}
	for {
		var res int32
		got := false
		d.ctrl.reap(func(c cqe) { res, got = c.Res, true })
		if got {
			return res, nil
		}
		if err := d.ctrl.submit(1); err != nil {
			return 0, fmt.Errorf("ublk: control command: %w", err)
		}
	}
}

// Close stops the device (in-flight requests finish first), waits for the
// queue threads, and deletes it; /dev/ublkbN and /dev/ublkcN disappear.
func (d *Device) Close() error {
	d.closeOnce.Do(func() { d.closeErr = d.teardown(false) })
	return d.closeErr
}

func (d *Device) teardown(failed bool) error {
	var errs []error
	if d.added && !failed {
		if err := d.devCmd("STOP_DEV", cmdStopDev, ctrlCmd{}); err != nil {
			errs = append(errs, err)
		}
	}
	// After STOP_DEV the driver aborts every fetch and the queues end by
	// themselves; on failure (or if that does not happen) make them stop.
	for _, q := range d.queues {
		q.wait(failed)
	}
	for _, q := range d.queues {
		q.release()
	}
	if d.charFd >= 0 {
		unix.Close(d.charFd)
		d.charFd = -1
	}
	if d.added {
		if err := d.devCmd("DEL_DEV", cmdDelDev, ctrlCmd{}); err != nil {
			errs = append(errs, err)
		}
		d.added = false
	}
	d.ctrl.close()
	if d.ctrlFd >= 0 {
		unix.Close(d.ctrlFd)
		d.ctrlFd = -1
	}
	if d.arg != nil {
		unix.Munmap(d.arg)
		d.arg = nil
	}
	return errors.Join(errs...)
}
