package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/erofs-blockd/erofs-blockd/daemon"
)

// runIndex: erofs-blockd index [--push] [--cache-dir DIR] [--platform P] REF
// Builds an image's index artifacts (merged metadata, gzip/zstd indexes,
// chunk digests; one pass over each layer) into the cache dir, so a later
// `serve --image REF --cache-dir DIR` starts without reading layers; with
// --push, stores them in the registry as an OCI artifact whose subject is
// the image manifest, where every `serve --image` looks first.
func runIndex(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("index", "[flags] REF", stderr)
	push := fs.Bool("push", false, "store the index in the image's registry (an OCI artifact whose subject is the manifest: referrers API, else the sha256-<digest> tag)")
	cacheDir := fs.String("cache-dir", "", "keep the index under `DIR` (as `serve --cache-dir` does); default: a temporary directory")
	cacheDirSize := fs.String("cache-dir-size", defaultCacheDirSize, "bound of --cache-dir's chunk bytes on disk")
	platform := fs.String("platform", "", "pick OS/ARCH[/VARIANT] from an image index (default: this host's)")
	quiet := fs.BoolP("quiet", "q", false, "print nothing on success")
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	var rf remoteFlags
	rf.register(fs)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "erofs-blockd index: "+format+"\n", a...)
		return exitUnusable
	}
	if fs.NArg() != 1 {
		return fail("want one image reference: oci://HOST[:PORT]/REPO[:TAG|@sha256:HEX] or oci-layout:DIR[:TAG]")
	}
	ref := fs.Arg(0)
	log := newLogger(stderr, *logLevel)
	so, err := rf.options(log)
	if err != nil {
		return fail("%v", err)
	}
	dirSize, err := parseSize(*cacheDirSize)
	if err != nil || dirSize < 1<<20 {
		return fail("--cache-dir-size %q: want at least 1M", *cacheDirSize)
	}
	d, err := daemon.New(daemon.Config{Source: so, Logger: log, Version: version(), CacheDir: *cacheDir, CacheDirSize: dirSize})
	if err != nil {
		return fail("%v", err)
	}
	defer d.Close()
	ctx := context.Background()
	t0 := time.Now()
	img, err := d.Resolver().Resolve(ctx, ref, *platform)
	if err != nil {
		return fail("%v", err)
	}
	art, dir, err := d.ImageArtifacts(ctx, img, false)
	if err != nil {
		return fail("%s: %v", ref, err)
	}
	if !*quiet {
		fmt.Fprintf(stdout, "%s: manifest %s, %d layers, index in %s (%.2f s)\n", ref, img.ManifestDigest, len(img.Layers), dir, time.Since(t0).Seconds())
	}
	if *push {
		dg, err := d.PushImageArtifacts(ctx, img, art, dir)
		if err != nil {
			return fail("push: %v", err)
		}
		if !*quiet {
			fmt.Fprintf(stdout, "pushed the index as %s (subject %s)\n", dg, img.ManifestDigest)
		}
	}
	return exitOK
}
