package vmtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGuestSmoke boots the guest once: modules load, files arrive, disks
// appear, and the script's exit status comes back.
func TestGuestSmoke(t *testing.T) {
	Require(t)
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, []byte(strings.Repeat("disk-content!", 1<<10)[:8192]), 0o644); err != nil {
		t.Fatal(err)
	}
	res := RunT(t, &Guest{
		Data:  map[string][]byte{"/etc/hello": []byte("hello from the host\n")},
		Disks: []string{disk},
		Script: `set -e
uname -r
grep -q 'hello from the host' /etc/hello
for m in nbd erofs loop virtio_blk ublk_drv; do test -d /sys/module/$m || { echo "module $m missing"; exit 1; }; done
test -b /dev/nbd0
test -b /dev/vda
head -c 13 /dev/vda | grep -q 'disk-content!'
test "$EROFS_BLOCKD_IN_GUEST" = 1
exit 7
`,
	})
	if res.ExitCode != 7 || res.Passed {
		t.Fatalf("exit code %d, passed %v; want 7, false", res.ExitCode, res.Passed)
	}
	if !strings.Contains(res.Log, "6.12") {
		t.Errorf("guest did not print a 6.12 kernel version")
	}
}

func TestResolveModules(t *testing.T) {
	Require(t)
	kdir, err := KernelDir()
	if err != nil {
		t.Fatal(err)
	}
	idx, err := loadModIndex(kdir)
	if err != nil {
		t.Fatal(err)
	}
	order, params, err := idx.resolve([]string{"erofs", "nbd nbds_max=2", "crc32c_generic"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range order {
		pos[m] = i
	}
	if _, ok := pos["libcrc32c"]; !ok || pos["libcrc32c"] > pos["erofs"] {
		t.Errorf("libcrc32c not loaded before erofs: %v", order)
	}
	if params["nbd"] != "nbds_max=2" {
		t.Errorf("params %v", params)
	}
	if _, _, err := idx.resolve([]string{"no_such_module"}); err == nil {
		t.Error("unknown module resolved")
	}
}
