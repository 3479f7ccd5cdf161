// Package vmtest boots a throwaway QEMU guest (TCG, Debian's 6.12 kernel)
// that runs one shell script and reports its exit status. It exists because
// the build machines' kernel has no nbd or ublk driver and cannot load
// modules: tests that need /dev/nbdN, ublk or a particular kernel run inside
// the guest instead.
//
// Setup (root, Debian 12; once per machine, CI runs it before the tests):
//
//	scripts/vm/kernel.sh   # backports kernel into /var/cache/erofs-blockd-vm
//
// The guest is an initramfs only: busybox (every applet symlinked into
// /bin), the kernel modules (DefaultModules plus their dependencies,
// decompressed and loaded with insmod by /init), the files the test asks for,
// and /test.sh. /init mounts proc, sysfs, devtmpfs and a tmpfs on /tmp, loads
// the modules, exports EROFS_BLOCKD_IN_GUEST=1, runs /test.sh with
// busybox sh in /, prints a result marker (and the tail of dmesg when the
// script failed) and powers off. Larger inputs go on
// virtio disks (/dev/vda, /dev/vdb, ... in the order of Guest.Disks).
//
// A typical host-side test:
//
//	func TestGuestSomething(t *testing.T) {
//		vmtest.Require(t) // skips only if EROFS_BLOCKD_SKIP_VM=1
//		bin := vmtest.BuildStatic(t, "github.com/erofs-blockd/erofs-blockd/cmd/erofs-blockd")
//		res := vmtest.RunT(t, &vmtest.Guest{
//			Files:  map[string]string{"/bin/erofs-blockd": bin},
//			Disks:  []string{primary, blob},
//			Script: "erofs-blockd serve --blob /dev/vda --blob /dev/vdb /dev/nbd0 & ...",
//		})
//		if !res.Passed { t.Fatalf("guest failed (exit %d)", res.ExitCode) }
//	}
//
// Test binaries compiled with BuildTest can run inside the guest; code that
// must only run there checks InGuest.
package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Environment variables.
const (
	// EnvSkip set to 1 makes Require skip guest tests.
	EnvSkip = "EROFS_BLOCKD_SKIP_VM"
	// EnvCache overrides the kernel cache directory of scripts/vm/kernel.sh.
	EnvCache = "EROFS_BLOCKD_VM_CACHE"
	// EnvKernelDir points at an unpacked kernel package directly
	// (boot/vmlinuz-*, lib/modules/<version>/modules.dep).
	EnvKernelDir = "EROFS_BLOCKD_VM_KERNEL"
	// EnvConsole set to 1 makes RunT stream the guest console to stderr.
	EnvConsole = "EROFS_BLOCKD_VM_CONSOLE"
	// EnvInGuest is set to 1 by the guest's /init.
	EnvInGuest = "EROFS_BLOCKD_IN_GUEST"

	// DefaultCache is where scripts/vm/kernel.sh puts the kernel.
	DefaultCache = "/var/cache/erofs-blockd-vm"

	markerStart = "VMTEST-START"
	markerPass  = "VMTEST-RESULT: PASS"
	markerFail  = "VMTEST-RESULT: FAIL exit="
)

// DefaultAccel is the QEMU accelerator: TCG (nested KVM hangs on the build
// machines).
const DefaultAccel = "tcg"

// InGuest reports whether the process runs inside a vmtest guest.
func InGuest() bool { return os.Getenv(EnvInGuest) == "1" }

// Guest describes one guest boot.
type Guest struct {
	// KernelDir is an unpacked linux-image package; empty means
	// $EROFS_BLOCKD_VM_KERNEL, else $EROFS_BLOCKD_VM_CACHE/current, else
	// /var/cache/erofs-blockd-vm/current.
	KernelDir string
	// Modules to load, each "name [param=value ...]"; nil means
	// DefaultModules. Dependencies are added automatically.
	Modules []string
	// Files maps guest paths to host files copied into the initramfs
	// (permission bits are kept, so executables stay executable).
	Files map[string]string
	// Data maps guest paths to file contents (mode 0755).
	Data map[string][]byte
	// Script is the busybox sh script run as /test.sh. Its exit status is
	// the verdict. It runs in / with PATH=/bin:/sbin:/usr/bin:/usr/sbin.
	Script string
	// Disks are host files attached read-only as raw virtio disks:
	// /dev/vda, /dev/vdb, ...
	Disks []string
	// MemoryMiB defaults to 1024, CPUs to 2.
	MemoryMiB int
	CPUs      int
	// Timeout bounds the whole boot; zero means 5 minutes.
	Timeout time.Duration
	// Append is added to the kernel command line.
	Append string
	// Accel is the -accel argument; empty means DefaultAccel.
	Accel string
	// QEMUArgs are extra qemu-system-x86_64 arguments.
	QEMUArgs []string
	// Console, if set, receives the console output as it arrives.
	Console io.Writer
	// WorkDir holds the initramfs; empty means a temporary directory that
	// Run removes.
	WorkDir string
}

// Result is the outcome of a boot.
type Result struct {
	// Log is the serial console output, with "\r\n" turned into "\n".
	Log string
	// Passed is true when /test.sh exited 0.
	Passed bool
	// ExitCode is /test.sh's exit status, or -1 if the guest never reported
	// one (crash, panic, timeout).
	ExitCode int
	// Boot is the time from starting QEMU to /init running; Total the time
	// until QEMU exited.
	Boot, Total time.Duration
	// TimedOut is set when the guest was killed at Guest.Timeout.
	TimedOut bool
	// Attempts counts boots: Run boots again (twice at most) when the
	// kernel died before /init started; Log then holds every attempt.
	Attempts int

	started bool
}

// KernelDir returns the unpacked kernel to boot, or an error saying how to
// get one.
func KernelDir() (string, error) {
	dir := os.Getenv(EnvKernelDir)
	if dir == "" {
		cache := os.Getenv(EnvCache)
		if cache == "" {
			cache = DefaultCache
		}
		dir = filepath.Join(cache, "current")
	}
	if _, err := vmlinuz(dir); err != nil {
		return "", err
	}
	return dir, nil
}

func vmlinuz(dir string) (string, error) {
	m, _ := filepath.Glob(filepath.Join(dir, "boot/vmlinuz-*"))
	if len(m) != 1 {
		return "", fmt.Errorf("vmtest: no guest kernel in %s (run scripts/vm/kernel.sh as root)", dir)
	}
	return m[0], nil
}

const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /mnt /run /root /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo "` + markerStart + ` uptime=$(cut -d' ' -f1 /proc/uptime)"
while read -r m params; do
	insmod "/lib/modules/$m.ko" $params || echo "VMTEST-WARN: insmod $m failed"
done < /modules.list
export EROFS_BLOCKD_IN_GUEST=1 HOME=/root TMPDIR=/tmp
cd /
sh /test.sh
rc=$?
echo "VMTEST-END uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ "$rc" != 0 ]; then echo "VMTEST-DMESG (last 60 lines):"; dmesg | tail -n 60; fi
if [ "$rc" = 0 ]; then echo "` + markerPass + `"; else echo "` + markerFail + `$rc"; fi
sync
poweroff -f
`

// BuildInitramfs writes the guest's initramfs (an uncompressed newc cpio)
// to dst.
func (g *Guest) BuildInitramfs(kernelDir, dst string) error {
	idx, err := loadModIndex(kernelDir)
	if err != nil {
		return err
	}
	mods := g.Modules
	if mods == nil {
		mods = DefaultModules
	}
	order, params, err := idx.resolve(mods)
	if err != nil {
		return err
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		busybox = "/bin/busybox"
	}
	if _, err := os.Stat(busybox); err != nil {
		return fmt.Errorf("vmtest: busybox: %w (apt-get install busybox-static)", err)
	}
	a := archive{}
	for _, d := range []string{"/bin", "/sbin", "/usr/bin", "/usr/sbin", "/proc", "/sys", "/dev", "/tmp", "/mnt", "/run", "/root", "/etc"} {
		a.addDir(d)
	}
	a.addHost("/bin/busybox", busybox, 0o755)
	a.addSymlink("/bin/sh", "busybox")
	a.addData("/init", 0o755, []byte(initScript))
	a.addData("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	a.addData("/etc/group", 0o644, []byte("root:x:0:\n"))

	modDir := filepath.Join(filepath.Dir(dst), "modules")
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		return err
	}
	var list strings.Builder
	for _, m := range order {
		out := filepath.Join(modDir, m+".ko")
		if err := idx.extract(m, out); err != nil {
			return err
		}
		a.addHost("/lib/modules/"+m+".ko", out, 0o644)
		fmt.Fprintf(&list, "%s %s\n", m, params[m])
	}
	a.addData("/modules.list", 0o644, []byte(list.String()))

	for gp, hp := range g.Files {
		st, err := os.Stat(hp)
		if err != nil {
			return fmt.Errorf("vmtest: file for %s: %w", gp, err)
		}
		a.addHost(gp, hp, uint32(st.Mode().Perm()))
	}
	for gp, b := range g.Data {
		a.addData(gp, 0o755, b)
	}
	a.addData("/test.sh", 0o755, []byte(g.Script))
	for p := range a {
		if !path.IsAbs(p) {
			return fmt.Errorf("vmtest: bad guest path %q", p)
		}
	}
	return a.writeFile(dst)
}

// Run builds the initramfs, boots the guest and waits for it to power off
// (or for Timeout, or ctx). An error means the harness itself failed; a
// failing script is reported in Result.
func (g *Guest) Run(ctx context.Context) (*Result, error) {
	kdir := g.KernelDir
	if kdir == "" {
		var err error
		if kdir, err = KernelDir(); err != nil {
			return nil, err
		}
	}
	kernel, err := vmlinuz(kdir)
	if err != nil {
		return nil, err
	}
	work := g.WorkDir
	if work == "" {
		work, err = os.MkdirTemp("", "vmtest-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(work)
	}
	initrd := filepath.Join(work, "initramfs.cpio")
	if err := g.BuildInitramfs(kdir, initrd); err != nil {
		return nil, err
	}

	mem, cpus := g.MemoryMiB, g.CPUs
	if mem == 0 {
		mem = 1024
	}
	if cpus == 0 {
		cpus = 2
	}
	timeout := g.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	accel := g.Accel
	if accel == "" {
		accel = DefaultAccel
	}
	appendLine := "console=ttyS0 loglevel=3 panic=-1 edd=off"
	if g.Append != "" {
		appendLine += " " + g.Append
	}
	args := []string{
		"-accel", accel, "-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-nographic", "-no-reboot", "-nic", "none",
		"-kernel", kernel, "-initrd", initrd, "-append", appendLine,
	}
	for _, d := range g.Disks {
		if strings.ContainsAny(d, ",") {
			return nil, fmt.Errorf("vmtest: disk path %q contains a comma", d)
		}
		args = append(args, "-drive", "file="+d+",if=virtio,format=raw,readonly=on")
	}
	args = append(args, g.QEMUArgs...)

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var earlier strings.Builder
	for attempt := 1; ; attempt++ {
		res, err := g.boot(ctx, args)
		res.Attempts = attempt
		// A kernel that dies before /init ran (TCG occasionally trips over
		// cross-CPU code patching in early boot) is a harness flake, not a
		// test result: the script never started. Boot again.
		if err == nil && !res.started && ctx.Err() == nil && attempt <= bootRetries {
			fmt.Fprintf(&earlier, "=== vmtest: boot attempt %d died before /init ===\n%s\n", attempt, res.Log)
			continue
		}
		if earlier.Len() > 0 {
			res.Log = earlier.String() + "=== vmtest: boot attempt " + strconv.Itoa(attempt) + " ===\n" + res.Log
		}
		return res, err
	}
}

// bootRetries is how often Run boots again when the guest died before /init.
const bootRetries = 2

func (g *Guest) boot(ctx context.Context, args []string) (*Result, error) {
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.WaitDelay = 5 * time.Second
	cmd.Stdin = nil
	con := &console{tee: g.Console, start: time.Now()}
	cmd.Stdout = con
	cmd.Stderr = con
	start := time.Now()
	runErr := cmd.Run()
	res := &Result{Total: time.Since(start), ExitCode: -1}
	res.Log = strings.ReplaceAll(con.String(), "\r\n", "\n")
	res.Boot = con.bootAt()
	res.started = strings.Contains(res.Log, markerStart)
	if ctx.Err() != nil {
		res.TimedOut = errors.Is(ctx.Err(), context.DeadlineExceeded)
		return res, nil
	}
	switch {
	case strings.Contains(res.Log, markerPass):
		res.Passed, res.ExitCode = true, 0
	case strings.Contains(res.Log, markerFail):
		m := failRE.FindStringSubmatch(res.Log)
		if m != nil {
			res.ExitCode, _ = strconv.Atoi(m[1])
		}
	default:
		if runErr != nil && res.started {
			return res, fmt.Errorf("vmtest: qemu: %w", runErr)
		}
	}
	return res, nil
}

var failRE = regexp.MustCompile(regexp.QuoteMeta(markerFail) + `(\d+)`)

// console collects QEMU's output and notes when /init started.
type console struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	tee   io.Writer
	start time.Time
	boot  time.Duration
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if c.boot == 0 && bytes.Contains(c.buf.Bytes(), []byte(markerStart)) {
		c.boot = time.Since(c.start)
	}
	if c.tee != nil {
		c.tee.Write(p)
	}
	return len(p), nil
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func (c *console) bootAt() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.boot
}
