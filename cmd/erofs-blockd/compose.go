package main

import (
	"fmt"
	"io"
	"os"

	"github.com/erofs-blockd/erofs-blockd/flatdev"
)

func runCompose(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("compose", "[flags] -o FILE [IMAGE]", stderr)
	var img imageFlags
	var cf composeFlags
	img.register(fs)
	cf.register(fs)
	out := fs.StringP("output", "o", "", "write the composed device to `FILE` (sparse where the device has holes)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	paths, err := img.resolve(fs.Args())
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd compose:", err)
		return exitUnusable
	}
	if *out == "" {
		fmt.Fprintln(stderr, "erofs-blockd compose: -o FILE is required")
		return exitUnusable
	}
	for _, p := range paths {
		if same, _ := sameFile(p, *out); same {
			fmt.Fprintf(stderr, "erofs-blockd compose: output %s is one of the inputs; inputs are never modified\n", *out)
			return exitUnusable
		}
	}
	dev, files, err := compose(paths, img.opener(), cf, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd compose:", err)
		return exitUnusable
	}
	defer files.Close()
	if err := writeSparse(dev, *out); err != nil {
		fmt.Fprintln(stderr, "erofs-blockd compose:", err)
		return exitUnusable
	}
	return exitOK
}

func sameFile(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(sa, sb), nil
}

// writeSparse writes the device to path, skipping holes so the file is
// sparse there, and fsyncs it.
func writeSparse(dev *flatdev.Device, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	exts, err := dev.Extents(0, dev.Size())
	if err != nil {
		f.Close()
		return err
	}
	buf := make([]byte, 4<<20)
	for _, e := range exts {
		if e.Hole {
			continue
		}
		for off := e.Offset; off < e.Offset+e.Length; {
			n := min(int64(len(buf)), e.Offset+e.Length-off)
			if _, err := dev.ReadAt(buf[:n], off); err != nil && err != io.EOF {
				f.Close()
				return err
			}
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				f.Close()
				return err
			}
			off += n
		}
	}
	if err := f.Truncate(dev.Size()); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
