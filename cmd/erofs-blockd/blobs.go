package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
)

// imageFlags is the one way every command names an image: --blob repeated,
// first the primary, then its extra devices in slot order; or a single
// positional IMAGE.
type imageFlags struct {
	blobs []string
}

func (f *imageFlags) register(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.blobs, "blob", nil, "image `FILE`; repeat: the first is the primary, the rest its devices in slot order")
}

// resolve merges positional arguments into the blob list. pos are the
// positional arguments that name images (at most one, and only without --blob).
func (f *imageFlags) resolve(pos []string) ([]string, error) {
	switch {
	case len(pos) > 1:
		return nil, fmt.Errorf("more than one positional IMAGE (%s); use --blob FILE for each device", strings.Join(pos, " "))
	case len(pos) == 1 && len(f.blobs) > 0:
		return nil, fmt.Errorf("both --blob and a positional IMAGE %q given; use --blob for all files", pos[0])
	case len(pos) == 1:
		return pos, nil
	case len(f.blobs) == 0:
		return nil, fmt.Errorf("no image given: use --blob PRIMARY [--blob DEVICE ...] or a positional IMAGE")
	}
	return f.blobs, nil
}

// openFiles opens every file read-only. The caller closes them.
type openFiles []*os.File

func (o openFiles) Close() {
	for _, f := range o {
		f.Close()
	}
}

// openSources opens the files as flatdev sources.
func openSources(paths []string) ([]flatdev.Source, openFiles, error) {
	var files openFiles
	var srcs []flatdev.Source
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			files.Close()
			return nil, nil, fmt.Errorf("open blob: %w", err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			files.Close()
			return nil, nil, fmt.Errorf("stat blob: %w", err)
		}
		if !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
			f.Close()
			files.Close()
			return nil, nil, fmt.Errorf("blob %s: not a regular file or block device", p)
		}
		size := st.Size()
		if st.Mode()&os.ModeDevice != 0 {
			if size, err = f.Seek(0, io.SeekEnd); err != nil {
				f.Close()
				files.Close()
				return nil, nil, fmt.Errorf("blob %s: size: %w", p, err)
			}
		}
		files = append(files, f)
		srcs = append(srcs, flatdev.Source{Name: p, R: f, Size: size})
	}
	return srcs, files, nil
}

// composeFlags are the flags that shape the composed device.
type composeFlags struct {
	align         string
	verifyDigests bool
	onError       func(blob string, err error) // flatdev.Options.OnError (serve)
}

func (c *composeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.align, "align", "", "alignment of the unified addresses assigned to devices whose slot has none (e.g. 4096, 512K; default one block)")
	fs.BoolVar(&c.verifyDigests, "verify-digests", false, "hash blobs whose slot tag is a sha256 and refuse a mismatch")
}

// compose opens the blobs and builds the flat device.
func compose(paths []string, c composeFlags, progress io.Writer) (*flatdev.Device, openFiles, error) {
	align, err := parseSize(c.align)
	if err != nil {
		return nil, nil, fmt.Errorf("--align: %w", err)
	}
	srcs, files, err := openSources(paths)
	if err != nil {
		return nil, nil, err
	}
	opt := flatdev.Options{Align: align, VerifyDigests: c.verifyDigests, OnError: c.onError}
	if progress != nil && isTerminal(progress) {
		opt.Progress = progressPrinter(progress)
	}
	dev, err := flatdev.New(srcs[0], srcs[1:], opt)
	if err != nil {
		files.Close()
		return nil, nil, err
	}
	return dev, files, nil
}

// parseSize parses "4096", "512K", "1M", "2G" (binary units). "" is 0.
func parseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	var v int64
	if _, err := fmt.Sscan(s, &v); err != nil || v < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return v * mult, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func progressPrinter(w io.Writer) func(string, int64, int64) {
	last := int64(-1)
	return func(name string, done, total int64) {
		pct := int64(100)
		if total > 0 {
			pct = done * 100 / total
		}
		if pct != last {
			last = pct
			fmt.Fprintf(w, "\rhashing %s: %3d%%", name, pct)
			if done >= total {
				fmt.Fprintln(w)
			}
		}
	}
}

// openImage opens the primary and its devices (as separate files) with the
// erofs decoder, so data ranges are read from, and checked against, each
// blob's real size.
func openImage(paths []string) (*erofs.Image, openFiles, error) {
	srcs, files, err := openSources(paths)
	if err != nil {
		return nil, nil, err
	}
	var devs []erofs.Dev
	for _, s := range srcs[1:] {
		devs = append(devs, erofs.Dev{R: s.R, Size: s.Size})
	}
	var opts []erofs.Option
	if len(devs) > 0 {
		opts = append(opts, erofs.WithDevices(devs...))
	}
	img, err := erofs.Open(srcs[0].R, srcs[0].Size, opts...)
	if err != nil {
		files.Close()
		return nil, nil, fmt.Errorf("%s: %w", paths[0], err)
	}
	return img, files, nil
}
