// Command erofs-blockd composes an EROFS primary image and its blob devices
// into one flat block device and serves it over NBD or attaches it to the
// kernel. Subcommands: serve, compose, inspect, verify, ls, merge, export,
// version.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/spf13/pflag"
)

// exit codes shared by all subcommands
const (
	exitOK       = 0
	exitProblems = 1 // verify found problems
	exitUnusable = 2 // bad usage or unusable input
)

type command struct {
	name, args, summary string
	run                 func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"serve", "[flags] [IMAGE] [/dev/nbdX]", "compose the blobs and serve them over NBD and/or attach /dev/nbdX", runServe},
		{"compose", "[flags] -o FILE [IMAGE]", "write the composed flat device to a file", runCompose},
		{"inspect", "[flags] [IMAGE]", "print the superblock, features, device table and a summary", runInspect},
		{"verify", "[flags] [IMAGE]", "check every structure and block reference (exit 0 clean, 1 problems, 2 unusable)", runVerify},
		{"ls", "[flags] [IMAGE] [PATH]", "list files with type, mode, size, target and digest", runLs},
		{"merge", "[flags] -o INDEX LAYER...", "write a metadata-only EROFS index merging layers: EROFS images, tar, tar+gzip, tar+zstd (later layers win)", runMerge},
		{"index", "[flags] REF", "build an image's index artifacts (merged metadata, gzip/zstd indexes, chunk digests) into --cache-dir; --push stores them in the registry", runIndex},
		{"export", "add|ls|rm [flags]", "add, list and remove the exports of a running serve --api", runExport},
		{"version", "", "print the version", runVersion},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return exitUnusable
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "erofs-blockd: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUnusable
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: erofs-blockd COMMAND [flags]\n\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nImages are named the same way everywhere: --blob FILE, repeated; the first is\nthe primary image, the rest its extra devices in device-table slot order.\nA single positional IMAGE is shorthand for one --blob.\n'erofs-blockd COMMAND --help' shows a command's flags.\n")
}

// newFlags makes a flag set whose --help prints the command's usage.
func newFlags(name, args string, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: erofs-blockd %s %s\n\nflags:\n%s", name, args, fs.FlagUsages())
	}
	return fs
}

// parse parses flags; it returns ok=false with the exit code to use.
func parse(fs *pflag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK, false
		}
		// pflag prints nothing in ContinueOnError mode.
		fmt.Fprintf(fs.Output(), "erofs-blockd %s: %v (see erofs-blockd %s --help)\n", fs.Name(), err, fs.Name())
		return exitUnusable, false
	}
	return 0, true
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
		return v
	}
	return "unknown"
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintf(stdout, "erofs-blockd %s\n", version())
	return exitOK
}
