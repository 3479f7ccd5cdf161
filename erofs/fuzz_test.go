package erofs

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sync"
	"testing"
	"time"
)

var (
	seedOnce sync.Once
	seeds    map[string][]byte
)

// seedImages builds a few tiny images with mkfs.erofs (once per process).
func seedImages(f *testing.F) map[string][]byte {
	f.Helper()
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		f.Skip("mkfs.erofs not installed")
	}
	seedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "erofs-fuzzseed-")
		if err != nil {
			f.Fatal(err)
		}
		defer os.RemoveAll(dir)
		src := smallTree(f)
		seeds = map[string][]byte{}
		for name, args := range map[string][]string{
			"plain":    nil,
			"ext":      {"-Eforce-inode-extended"},
			"chunk":    {"--chunksize=4096", "-Eforce-chunk-indexes"},
			"blockmap": {"--chunksize=4096"},
			"lz4":      {"-zlz4hc", "-Eztailpacking"},
			"lz4c":     {"-zlz4", "-C16384"},
		} {
			p := filepath.Join(dir, name)
			testtreeMkfs(f, p, src, args...)
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			seeds[name] = b
		}
	})
	return seeds
}

// exercise runs every decoder entry point over an image with a work budget.
func exercise(im *Image) {
	budget := 4 << 20
	entries := 0
	im.Walk(func(p string, ino *Inode, d Dirent) error {
		entries++
		if entries > 5000 || budget <= 0 {
			return errStop
		}
		im.Xattrs(ino)
		im.Fingerprint(ino)
		if !hasData(ino) {
			return nil
		}
		rs, _ := im.DataRanges(ino)
		_ = rs
		if ino.IsSymlink() {
			im.Readlink(ino)
		}
		if ino.IsReg() && ino.Size <= 1<<20 {
			budget -= int(ino.Size)
			im.ReadAll(ino, 1<<20)
		}
		return nil
	})
}

func FuzzSuperblock(f *testing.F) {
	for _, b := range seedImages(f) {
		f.Add(b[:4096])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		defer watchdog()()
		for _, fix := range []bool{false, true} {
			c := append([]byte(nil), b...)
			if fix && len(c) >= 1024+128 {
				fixCRC(c)
			}
			sb, err := ParseSuperblock(c)
			if err != nil {
				continue
			}
			sb.Features()
			sb.VolumeNameString()
			for i := range sb.Devices {
				d := sb.Devices[i]
				d.TagKind()
				d.TagString()
				out, _ := d.MarshalBinary()
				var e DeviceSlot
				if err := e.UnmarshalBinary(out); err != nil || e.Tag != d.Tag || e.Blocks != d.Blocks&addrMask48 {
					t.Fatalf("slot roundtrip %+v %+v", d, e)
				}
			}
		}
	})
}

func FuzzImage(f *testing.F) {
	for _, b := range seedImages(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<20 {
			return
		}
		b = append([]byte(nil), b...)
		if len(b) >= 1024+128 {
			fixCRC(b)
		}
		defer watchdog()()
		im, err := openBytes(b, WithFlat())
		if err != nil {
			return
		}
		exercise(im)
	})
}

// watchdog crashes the process with all stacks if an input takes too long
// (go fuzzing has no hang detection of its own).
func watchdog() func() {
	start := time.Now()
	if fz := os.Getenv("EROFS_FUZZ_TRACE"); fz != "" {
		defer func() {
			f, _ := os.OpenFile(fz, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
			f.WriteString(start.Format("15:04:05.000") + "\n")
			f.Close()
		}()
	}
	tm := time.AfterFunc(10*time.Second, func() {
		debug.SetTraceback("all")
		panic("fuzz input took more than 10s")
	})
	return func() { tm.Stop() }
}

// patchFuzz runs fn on a seed image with data written at an offset chosen by
// locate (relative to a structure of the clean image).
func patchFuzz(f *testing.F, name string, locate func(im *Image) int64, maxLen int) {
	s := seedImages(f)
	for _, k := range []string{"plain", "ext", "chunk", "lz4"} {
		im, err := openBytes(s[k])
		if err != nil {
			f.Fatal(err)
		}
		off := locate(im)
		end := min(int(off)+maxLen, len(s[k]))
		f.Add(k, s[k][off:end])
	}
	f.Fuzz(func(t *testing.T, k string, patch []byte) {
		base, ok := s[k]
		if !ok || len(patch) > maxLen {
			return
		}
		im0, err := openBytes(base)
		if err != nil {
			return
		}
		off := locate(im0)
		b := append([]byte(nil), base...)
		copy(b[off:], patch)
		fixCRC(b)
		defer watchdog()()
		im, err := openBytes(b, WithFlat())
		if err != nil {
			return
		}
		exercise(im)
	})
}

func lookupOff(im *Image, path string, rel func(*Inode) int64) int64 {
	ino, err := im.Lookup(path)
	if err != nil {
		panic(err)
	}
	return rel(ino)
}

func FuzzInode(f *testing.F) {
	patchFuzz(f, "inode", func(im *Image) int64 {
		return lookupOff(im, "/big2", func(i *Inode) int64 { return i.Off })
	}, 128)
}

func FuzzXattrs(f *testing.F) {
	patchFuzz(f, "xattrs", func(im *Image) int64 {
		return lookupOff(im, "/d/f", func(i *Inode) int64 { return i.Off + int64(i.ISize) })
	}, 64)
}

func FuzzDirents(f *testing.F) {
	patchFuzz(f, "dirents", func(im *Image) int64 {
		rs, err := im.DataRanges(im.Root())
		if err != nil || len(rs) == 0 {
			panic(err)
		}
		return rs[0].Phys
	}, 160)
}

var _ = binary.LittleEndian
