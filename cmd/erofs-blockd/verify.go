package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/erofs-blockd/erofs-blockd/verify"
)

// runVerify: erofs-blockd verify [--json] [--content] [--strict] IMAGE | --blob P --blob D1 ...
// Exit 0 clean (warnings alone are fine), 1 errors found (or warnings with
// --strict), 2 unusable input.
func runVerify(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("verify", "[flags] [IMAGE]", stderr)
	var img imageFlags
	img.register(fs)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	content := fs.Bool("content", false, "also read and decompress every regular file and check ishare fingerprints")
	strict := fs.Bool("strict", false, "count warnings (checks stricter than the kernel and fsck.erofs) as errors")
	maxProblems := fs.Int("max-problems", verify.DefaultMaxProblems, "stop after this many problems")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	paths, err := img.resolve(fs.Args())
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd verify:", err)
		return exitUnusable
	}
	srcs, files, err := openSources(paths, img.opener())
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd verify:", err)
		return exitUnusable
	}
	defer files.Close()
	var devs []verify.Dev
	for _, s := range srcs[1:] {
		devs = append(devs, verify.Dev{R: s.R, Size: s.Size})
	}
	rep, err := verify.Devices(verify.Dev{R: srcs[0].R, Size: srcs[0].Size}, devs,
		verify.Options{Content: *content, MaxProblems: *maxProblems})
	if err != nil {
		fmt.Fprintf(stderr, "erofs-blockd verify: %s: unusable image: %v\n", paths[0], err)
		return exitUnusable
	}
	ok := rep.OK()
	if *strict {
		ok = rep.StrictOK()
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if rep.Problems == nil {
			rep.Problems = []verify.Problem{}
		}
		if err := enc.Encode(struct {
			OK       bool `json:"ok"`
			Errors   int  `json:"errors"`
			Warnings int  `json:"warnings"`
			*verify.Report
		}{ok, rep.Errors(), rep.Warnings(), rep}); err != nil {
			fmt.Fprintln(stderr, "erofs-blockd verify:", err)
			return exitUnusable
		}
	} else if err := rep.WriteText(stdout); err != nil {
		fmt.Fprintln(stderr, "erofs-blockd verify:", err)
		return exitUnusable
	}
	if !ok {
		return exitProblems
	}
	return exitOK
}
