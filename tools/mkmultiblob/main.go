// Command mkmultiblob turns a Debian mkfs.erofs 1.5 --blobdev image into a
// multi-blob image (see internal/multiblob). Used by `make demo` and tests.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/erofs-blockd/erofs-blockd/internal/multiblob"
)

func main() {
	primary := flag.String("primary", "", "primary image made with --blobdev")
	blob := flag.String("blob", "", "its blob")
	n := flag.Int("n", 3, "number of blob pieces")
	layout := flag.String("layout", multiblob.LayoutZero, "device table layout: zero, contiguous, aligned")
	sha := flag.Bool("sha256-tags", false, "write each piece's sha256 as its slot tag")
	out := flag.String("o", "", "output directory")
	flag.Parse()
	if *primary == "" || *blob == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	res, err := multiblob.Split(*primary, *blob, *out, multiblob.Options{N: *n, Layout: *layout, SHA256Tags: *sha})
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkmultiblob:", err)
		os.Exit(1)
	}
	fmt.Println(res.Primary)
	for _, b := range res.Blobs {
		fmt.Println(b)
	}
}
