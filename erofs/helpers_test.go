package erofs

import (
	"bytes"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

func testtreeMkfs(t testing.TB, img, src string, args ...string) {
	t.Helper()
	testtree.Mkfs(t, img, src, args...)
}
