package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/merge"
	"github.com/erofs-blockd/erofs-blockd/source"
)

// runMerge: erofs-blockd merge [--align SIZE] [--no-copy] -o INDEX LAYER...
// Writes a metadata-only EROFS index over the layers (lowest first). The
// index is written to a temporary file next to INDEX and renamed into
// place; layers are only read.
func runMerge(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("merge", "[flags] -o INDEX LAYER...", stderr)
	out := fs.StringP("output", "o", "", "write the index image to `FILE`")
	align := fs.String("align", "", "align each layer's unified address (uniaddr) to SIZE (e.g. 512K; default: contiguous)")
	noCopy := fs.Bool("no-copy", false, "refuse files whose data is not block-addressable in their layer (inline tails, compressed data, unaligned sparse tar files) instead of copying it into the index")
	quiet := fs.BoolP("quiet", "q", false, "print nothing on success")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "erofs-blockd merge: "+format+"\n", a...)
		return exitUnusable
	}
	paths := fs.Args()
	if *out == "" {
		return fail("no output: use -o INDEX")
	}
	if len(paths) == 0 {
		return fail("no layers given: erofs-blockd merge -o INDEX LAYER...")
	}
	alignB, err := parseSize(*align)
	if err != nil {
		return fail("--align: %v", err)
	}
	op := source.NewOpener(source.Options{})
	srcs, files, err := openSources(paths, op)
	if err != nil {
		return fail("%v", err)
	}
	defer files.Close()
	if st, err := os.Stat(*out); err == nil {
		for i, c := range files {
			f, isFile := c.(*source.File)
			if !isFile {
				continue
			}
			if fst, err := f.Stat(); err == nil && os.SameFile(st, fst) {
				return fail("output %s is layer %d (%s): layers are never modified", *out, i+1, paths[i])
			}
		}
	}
	var layers []merge.Layer
	for _, s := range srcs {
		layers = append(layers, merge.Layer{Name: s.Name, R: s.R, Size: s.Size})
	}
	tmp, err := os.CreateTemp(filepath.Dir(*out), "."+filepath.Base(*out)+".tmp*")
	if err != nil {
		return fail("%v", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	rep, err := merge.Merge(tmp, layers, merge.Options{NoCopy: *noCopy, AlignBytes: alignB})
	if err != nil {
		return fail("%s", strings.TrimPrefix(err.Error(), "merge: "))
	}
	// The streaming pass built each compressed layer's index: keep it
	// where `serve` looks (next to a local layer), so serving does not
	// read the layers again.
	serveSpecs := append([]string{}, paths...)
	for i, in := range rep.Info {
		switch in.Kind {
		case merge.KindTarGzip:
			op.SaveGzipIndex(files[i].(source.Blob), in.Gzip)
			serveSpecs[i] = "gzip:" + paths[i]
		case merge.KindTarZstd:
			op.SaveZstdIndex(files[i].(source.Blob), in.Zstd)
			serveSpecs[i] = "zstd:" + paths[i]
		}
	}
	if err := tmp.Truncate(int64(rep.Stats.Blocks) * rep.Stats.BlockSize); err != nil {
		return fail("%v", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fail("%v", err)
	}
	if err := tmp.Close(); err != nil {
		return fail("%v", err)
	}
	if err := os.Rename(tmp.Name(), *out); err != nil {
		return fail("%v", err)
	}
	ok = true
	if !*quiet {
		st := rep.Stats
		fmt.Fprintf(stdout, "%s: %d layers, %d inodes, %d regular files (%d referenced in place, %d copied: %d bytes), whiteouts/opaque dirs applied: %d, %d blocks (%d metadata, %d data)\n",
			*out, rep.Layers, st.Inodes, rep.Files, rep.Referenced, rep.Copied, rep.CopiedBytes, rep.Whiteouts, st.Blocks, st.MetaBlocks, st.DataBlocks)
		fmt.Fprintf(stdout, "  block size %d\n", st.BlockSize)
		for i, s := range st.Slots {
			fmt.Fprintf(stdout, "  device %d: %s (%s)  tag %s  %d blocks at uniaddr %d\n", i+1, paths[i], rep.Info[i].Kind, s.TagString(), s.Blocks, s.UniAddr)
		}
		args := ""
		for _, p := range append([]string{*out}, serveSpecs...) {
			args += " --blob " + p
		}
		fmt.Fprintf(stdout, "serve it with: erofs-blockd serve%s --listen unix:SOCKET\n", args)
	}
	return exitOK
}
