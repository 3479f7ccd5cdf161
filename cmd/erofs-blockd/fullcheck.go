package main

import (
	"fmt"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
	"github.com/erofs-blockd/erofs-blockd/verify"
)

// fullCheck runs the whole verify walk over the composed device, exactly as
// clients will read it, including every file's content, and refuses to serve
// an image with problems.
func fullCheck(dev *flatdev.Device, _ *erofs.Image) error {
	rep, err := verify.Flat(dev, dev.Size(), verify.Options{Content: true})
	if err != nil {
		return fmt.Errorf("%s: full check: %w", dev.Sources()[0].Name, err)
	}
	if rep.OK() {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: full check found %d problem(s); run `erofs-blockd verify` for all of them:", dev.Sources()[0].Name, len(rep.Problems))
	for i, p := range rep.Problems {
		if i == 5 {
			fmt.Fprintf(&b, "\n  ...")
			break
		}
		fmt.Fprintf(&b, "\n  %s", p)
	}
	return fmt.Errorf("%s", b.String())
}
