package ublk

import (
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
	added  bool

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

// Start creates the device (ADD_DEV, SET_PARAMS), starts its queues and
// the block device (START_DEV). On error nothing is left behind.
func Start(cfg Config) (*Device, error) {
	if cfg.Device == nil {
		return nil, errors.New("ublk: no device")
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
	d := &Device{cfg: cfg, log: cfg.Logger, ctrlFd: -1, charFd: -1, size: size}
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

	id := ^uint32(0)
	if d.cfg.ID >= 0 {
		id = uint32(d.cfg.ID)
	}
	info := devInfo{
		NrHwQueues:    uint16(d.cfg.Queues),
		QueueDepth:    uint16(d.cfg.Depth),
		MaxIOBufBytes: d.cfg.MaxIO,
		DevID:         id,
		Flags:         featCmdIoctlEncode,
	}
	*(*devInfo)(unsafe.Pointer(&d.arg[0])) = info
	res, err := d.ctrlCmd(cmdAddDev, ctrlCmd{DevID: id, QueueID: 0xffff, Len: uint16(unsafe.Sizeof(info)), Addr: d.argAddr()})
	if err != nil {
		return err
	}
	if res < 0 {
		if d.cfg.ID >= 0 && unix.Errno(-res) == unix.EEXIST {
			return fmt.Errorf("ublk: ADD_DEV /dev/ublkb%d: the device exists already", d.cfg.ID)
		}
		return fmt.Errorf("ublk: ADD_DEV: %w", unix.Errno(-res))
	}
	d.info = *(*devInfo)(unsafe.Pointer(&d.arg[0]))
	d.added = true
	if d.info.QueueDepth == 0 || d.info.NrHwQueues == 0 || d.info.MaxIOBufBytes < 4096 {
		return fmt.Errorf("ublk: ADD_DEV returned %d queues, depth %d, max I/O %d", d.info.NrHwQueues, d.info.QueueDepth, d.info.MaxIOBufBytes)
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

	char := fmt.Sprintf("/dev/ublkc%d", d.info.DevID)
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
	return d.devCmd("START_DEV", cmdStartDev, ctrlCmd{Data: uint64(os.Getpid())})
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
