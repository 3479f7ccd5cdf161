package main

import (
	"fmt"

	"github.com/erofs-blockd/erofs-blockd/erofs"
	"github.com/erofs-blockd/erofs-blockd/flatdev"
)

// checkImage validates the composed device before it is served, by reading
// it back through the erofs decoder exactly as a client would see it.
//   - off: nothing beyond what composing already checked (superblock, CRC,
//     device table, blob identities and sizes);
//   - quick: also the root inode and root directory;
//   - full: the whole verify walk (every inode, dirent, xattr and data range).
func checkImage(dev *flatdev.Device, mode string) error {
	switch mode {
	case "off":
		return nil
	case "quick", "full":
	default:
		return fmt.Errorf("--check %q: want quick, full or off", mode)
	}
	img, err := erofs.Open(dev, dev.Size(), erofs.WithFlat())
	if err != nil {
		return fmt.Errorf("%s: image check: %w", dev.Sources()[0].Name, err)
	}
	if _, err := img.ReadDir(img.Root()); err != nil {
		return fmt.Errorf("%s: image check: root directory: %w", dev.Sources()[0].Name, err)
	}
	if mode == "full" {
		return fullCheck(dev, img)
	}
	return nil
}
