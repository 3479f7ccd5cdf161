//go:build !linux

package diskcache

import (
	"errors"
	"os"
)

// stampOf: without a portable ctime nothing is trusted unchecked.
func stampOf(os.FileInfo) (stamp, bool) { return stamp{}, false }

var bootIDPath = ""

func syncfs(*os.File) error { return errors.ErrUnsupported }
