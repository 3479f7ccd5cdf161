// Command benchdev is the support tool of scripts/bench.sh (make bench).
// It never changes an input file. Subcommands:
//
//	gentree DIR BYTES            deterministic tree of files totalling ~BYTES
//	pieces -o DIR --blob P --blob B1 ...
//	                             cut the composed device into the files
//	                             `nbdkit split` concatenates: the primary with
//	                             the rewritten table, each blob (the input file
//	                             itself when it fills its extent), and each hole
//	                             as a sparse zero file; prints them in order
//	serve --listen unix:PATH [--cpuprofile-dir DIR] --blob P --blob B1 ...
//	                             serve the device in-process as `erofs-blockd
//	                             serve --check quick` does (same flatdev and
//	                             nbd.Config; no export description, no
//	                             logging) with CPU profiling: SIGUSR1 starts a
//	                             profile DIR/cpu-N.prof, SIGUSR2 stops it
//	many -o DIR --primary P --blob B -n 1000
//	                             a device with N extra blobs: P's device table
//	                             replaced by N zero slots, blob1 = B, blobs
//	                             2..N one 4 KiB block each (start-up benchmark)
//	idle --socket PATH -n 64 --hold 5s
//	                             open N NBD connections, finish the handshake
//	                             (NBD_OPT_EXPORT_NAME), hold them idle, print
//	                             "ready" once all are up
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/mapping"
	"github.com/erofs-blockd/erofs-blockd/nbd"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "gentree":
		err = gentree(os.Args[2:])
	case "pieces":
		err = pieces(os.Args[2:])
	case "serve":
		err = serve(os.Args[2:])
	case "many":
		err = many(os.Args[2:])
	case "idle":
		err = idle(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchdev:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: benchdev gentree|pieces|serve|many|idle ... (see the package comment)")
	os.Exit(2)
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

// gentree writes files of log-uniform sizes (4 KiB .. 8 MiB, some with an
// odd tail) of random bytes in 16 directories until ~total bytes.
func gentree(args []string) error {
	if len(args) != 2 {
		return errors.New("gentree DIR BYTES")
	}
	dir := args[0]
	total, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewChaCha8([32]byte{42}))
	buf := make([]byte, 8<<20)
	var done int64
	for i := 0; done < total; i++ {
		size := int64(4096) << rng.IntN(12) // 4 KiB .. 8 MiB
		size += rng.Int64N(size)
		if i%3 == 0 {
			size += rng.Int64N(4096) // not block-aligned
		}
		size = min(size, total-done, int64(len(buf)))
		d := filepath.Join(dir, fmt.Sprintf("d%02d", i%16))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		fillRandom(rng, buf[:size])
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d", i)), buf[:size], 0o644); err != nil {
			return err
		}
		done += size
	}
	return nil
}

func fillRandom(rng *rand.Rand, b []byte) {
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, rng.Uint64())
		b = b[8:]
	}
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
}

func openDevice(paths []string) (*flatdev.Device, []*os.File, error) {
	if len(paths) == 0 {
		return nil, nil, errors.New("no --blob given")
	}
	var srcs []flatdev.Source
	var files []*os.File
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, nil, err
		}
		st, err := f.Stat()
		if err != nil {
			return nil, nil, err
		}
		files = append(files, f)
		srcs = append(srcs, flatdev.Source{Name: p, R: f, Size: st.Size()})
	}
	dev, err := flatdev.New(srcs[0], srcs[1:], flatdev.Options{})
	return dev, files, err
}

func pieces(args []string) error {
	fs := flag.NewFlagSet("pieces", flag.ExitOnError)
	var blobs multi
	fs.Var(&blobs, "blob", "primary, then blobs in slot order (repeat)")
	out := fs.String("o", "", "output directory")
	fs.Parse(args)
	if *out == "" {
		return errors.New("pieces: -o DIR required")
	}
	dev, _, err := openDevice(blobs)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	srcs := dev.Sources()
	k := 0
	return dev.Map().Runs(0, dev.Size(), func(r mapping.Run) error {
		k++
		name := filepath.Join(*out, fmt.Sprintf("%03d", k))
		switch {
		case r.Hole:
			name += "-hole"
			f, err := os.Create(name)
			if err != nil {
				return err
			}
			if err := f.Truncate(r.Len); err != nil {
				return err
			}
			f.Close()
		case r.Dev != 0 && r.DevOff == 0 && r.Len == srcs[r.Dev].Size:
			name = srcs[r.Dev].Name // the input itself, unchanged
		default:
			name += fmt.Sprintf("-dev%d", r.Dev)
			f, err := os.Create(name)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, io.NewSectionReader(dev, r.Off, r.Len))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		}
		abs, err := filepath.Abs(name)
		if err != nil {
			return err
		}
		fmt.Println(abs)
		return nil
	})
}

// serve mirrors cmd/erofs-blockd serve (--check off) with profiling hooks.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	var blobs multi
	fs.Var(&blobs, "blob", "primary, then blobs in slot order (repeat)")
	listen := fs.String("listen", "", "unix:PATH or tcp:HOST:PORT")
	profDir := fs.String("cpuprofile-dir", "", "where SIGUSR1/SIGUSR2 write cpu-N.prof")
	maxInFlight := fs.Int("max-inflight", 64, "as erofs-blockd serve --max-inflight")
	fs.Parse(args)
	dev, _, err := openDevice(blobs)
	if err != nil {
		return err
	}
	// As serve --check quick: superblock, root inode and root directory
	// read back through the composed device.
	img, err := erofs.Open(dev, dev.Size(), erofs.WithFlat())
	if err != nil {
		return err
	}
	if _, err := img.ReadDir(img.Root()); err != nil {
		return err
	}
	srv := nbd.NewServer(nbd.Config{MaxRequest: 32 << 20, MaxInFlight: *maxInFlight, MaxConnections: 1024})
	if err := srv.AddExport(nbd.Export{Device: dev}); err != nil {
		return err
	}
	l, uri, err := nbd.Listen(*listen)
	if err != nil {
		return err
	}
	fmt.Printf("serving %s (%d bytes)\n", uri, dev.Size())
	go srv.Serve(l)

	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGINT, syscall.SIGTERM)
	var prof *os.File
	n := 0
	stopProf := func() {
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
			fmt.Fprintln(os.Stderr, "benchdev: wrote", prof.Name())
			prof = nil
		}
	}
	for s := range sig {
		switch s {
		case syscall.SIGUSR1:
			if *profDir == "" || prof != nil {
				continue
			}
			n++
			f, err := os.Create(filepath.Join(*profDir, fmt.Sprintf("cpu-%d.prof", n)))
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			prof = f
		case syscall.SIGUSR2:
			stopProf()
		default:
			stopProf()
			l.Close()
			return nil
		}
	}
	return nil
}

// many builds a device with n extra blobs from a single-blob --blobdev
// image: the device table moves to a new area appended to the primary.
func many(args []string) error {
	fs := flag.NewFlagSet("many", flag.ExitOnError)
	primary := fs.String("primary", "", "mkfs.erofs --blobdev primary")
	blob := fs.String("blob", "", "its blob")
	n := fs.Int("n", 1000, "number of blobs")
	out := fs.String("o", "", "output directory")
	fs.Parse(args)
	if *primary == "" || *blob == "" || *out == "" || *n < 1 || *n > 65535 {
		return errors.New("many --primary P --blob B -n N -o DIR")
	}
	prim, err := os.ReadFile(*primary)
	if err != nil {
		return err
	}
	sb, err := erofs.ParseSuperblock(prim)
	if err != nil {
		return err
	}
	if sb.NumDevices() != 1 {
		return fmt.Errorf("%s: %d devices, want a single --blobdev image", *primary, sb.NumDevices())
	}
	bs := sb.BlockSize()
	pblocks := (int64(len(prim)) + bs - 1) / bs
	toff := pblocks * bs
	tlen := int64(*n) * erofs.DeviceSlotSize
	tblocks := (tlen + bs - 1) / bs
	if toff/erofs.DeviceSlotSize > 0xFFFF {
		return fmt.Errorf("primary too large for an appended device table")
	}
	img := make([]byte, toff+tblocks*bs) // zero slots: erofs-blockd plans them
	copy(img, prim)
	le := binary.LittleEndian
	const so = erofs.SuperblockOffset
	le.PutUint32(img[so+0x24:], uint32(pblocks+tblocks))
	le.PutUint16(img[so+0x56:], uint16(*n))
	le.PutUint16(img[so+0x58:], uint16(toff/erofs.DeviceSlotSize))
	if sb.HasCompat(erofs.CompatSbChksum) {
		le.PutUint32(img[so+4:], erofs.SuperblockChecksum(img, sb.BlkSzBits))
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	p := filepath.Join(*out, "primary.erofs")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		return err
	}
	fmt.Println(p)
	abs, _ := filepath.Abs(*blob)
	fmt.Println(abs)
	block := make([]byte, bs)
	for i := 2; i <= *n; i++ {
		name := filepath.Join(*out, fmt.Sprintf("b%05d", i))
		binary.LittleEndian.PutUint32(block, uint32(i))
		if err := os.WriteFile(name, block, 0o644); err != nil {
			return err
		}
		fmt.Println(name)
	}
	return nil
}

// idle opens n connections and completes a fixed-newstyle handshake with
// NBD_OPT_EXPORT_NAME on each, then holds them.
func idle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	sock := fs.String("socket", "", "unix socket path")
	n := fs.Int("n", 64, "connections")
	hold := fs.Duration("hold", 5*time.Second, "how long to keep them open")
	fs.Parse(args)
	var conns []net.Conn
	for i := 0; i < *n; i++ {
		c, err := net.Dial("unix", *sock)
		if err != nil {
			return err
		}
		if err := handshake(c); err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
	}
	fmt.Println("ready")
	time.Sleep(*hold)
	for _, c := range conns {
		// NBD_CMD_DISC
		var req [28]byte
		binary.BigEndian.PutUint32(req[0:], 0x25609513)
		binary.BigEndian.PutUint16(req[6:], 2)
		c.Write(req[:])
		c.Close()
	}
	return nil
}

func handshake(c net.Conn) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	var hello [18]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		return err
	}
	if string(hello[:8]) != "NBDMAGIC" || string(hello[8:16]) != "IHAVEOPT" {
		return fmt.Errorf("not a fixed-newstyle server: %q", hello[:16])
	}
	gflags := binary.BigEndian.Uint16(hello[16:])
	cflags := uint32(1) // FIXED_NEWSTYLE
	if gflags&2 != 0 {
		cflags |= 2 // NO_ZEROES
	}
	var msg [20]byte
	binary.BigEndian.PutUint32(msg[0:], cflags)
	copy(msg[4:], "IHAVEOPT")
	binary.BigEndian.PutUint32(msg[12:], 1) // NBD_OPT_EXPORT_NAME
	binary.BigEndian.PutUint32(msg[16:], 0) // empty name
	if _, err := c.Write(msg[:]); err != nil {
		return err
	}
	reply := make([]byte, 10)
	if cflags&2 == 0 {
		reply = make([]byte, 10+124)
	}
	_, err := io.ReadFull(c, reply)
	return err
}
