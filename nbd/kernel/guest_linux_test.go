package kernel

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/vmtest"
)

// TestGuestAttach runs this package's TestKernel* tests inside a QEMU guest
// with Debian's 6.12 kernel (see internal/vmtest), where /dev/nbdN exists:
// netlink and ioctl attach, several connections, mount -t erofs, reattach.
// It needs scripts/vm/kernel.sh to have run; EROFS_BLOCKD_SKIP_VM=1 skips it.
func TestGuestAttach(t *testing.T) {
	vmtest.Require(t)
	// EROFS_BLOCKD_GUEST_RUN narrows the guest run (a -test.run pattern).
	run := os.Getenv("EROFS_BLOCKD_GUEST_RUN")
	if run == "" {
		run = "^TestKernel"
	}
	dir := t.TempDir()
	img, manifest := buildImage(t, dir)
	bin := vmtest.BuildTest(t, "github.com/erofs-blockd/erofs-blockd/nbd/kernel")
	res := vmtest.RunT(t, &vmtest.Guest{
		Files: map[string]string{
			"/kernel.test":   bin,
			"/test.erofs":    img,
			"/manifest.json": manifest,
		},
		Script: `export ` + envImage + `=/test.erofs ` + envManifest + `=/manifest.json
/kernel.test -test.v -test.count=1 -test.timeout=200s -test.run '` + run + `'
`,
		Timeout: 5 * time.Minute,
	})
	if !res.Passed {
		t.Fatalf("guest tests failed (exit %d)", res.ExitCode)
	}
	if strings.Contains(res.Log, "--- SKIP") {
		t.Error("guest tests skipped")
	}
	if run != "^TestKernel" {
		return
	}
	for _, name := range []string{
		"TestKernelAttach/netlink ", "TestKernelAttach/ioctl ",
		"TestKernelAttach/netlink-multi", "TestKernelAttach/ioctl-multi",
		"TestKernelAttach/netlink-any-index", "TestKernelAttach/ioctl-any-index",
		"TestKernelAttach/auto", "TestKernelRounding/netlink", "TestKernelRounding/ioctl",
		"TestKernelIoctlSignals", "TestKernelReattach", "TestKernelAttachErrors",
		"TestKernelUndoLostConnect", "TestKernelDetachBusy/netlink", "TestKernelDetachBusy/ioctl",
	} {
		if !strings.Contains(res.Log, "--- PASS: "+name) {
			t.Errorf("guest did not report PASS for %s", strings.TrimSpace(name))
		}
	}
}
