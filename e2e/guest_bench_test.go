package e2e

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
	"github.com/erofs-blockd/erofs-blockd/internal/vmtest"
)

// Environment of TestGuestBenchFio (scripts/bench-guest.sh sets them).
const (
	envBench        = "EROFS_BLOCKD_BENCH_GUEST" // 1 runs the benchmark
	envBenchRuntime = "EROFS_BLOCKD_BENCH_RUNTIME"
	envBenchEngine  = "EROFS_BLOCKD_BENCH_ENGINE"
)

// TestGuestBenchFio compares /dev/nbd0 and /dev/ublkb0 inside the QEMU
// guest with fio: 4 KiB random reads, iodepth 32, O_DIRECT, one job, on
// one `erofs-blockd serve` that attaches both devices to the same composed
// device (a --blobdev image with a 64 MiB file, blobs on virtio disks whose
// page cache is warmed first). fio and its shared libraries travel as an
// EROFS image on a third virtio disk and run through the dynamic loader.
// TCG figures are only comparable with each other. Gated by
// EROFS_BLOCKD_BENCH_GUEST=1 (scripts/bench-guest.sh).
func TestGuestBenchFio(t *testing.T) {
	if os.Getenv(envBench) != "1" {
		t.Skip(envBench + "=1 runs the guest fio benchmark (scripts/bench-guest.sh)")
	}
	vmtest.Require(t)
	need(t, "fio", "ldd", "mkfs.erofs")
	runtime := os.Getenv(envBenchRuntime)
	if runtime == "" {
		runtime = "10"
	}
	engine := os.Getenv(envBenchEngine)
	if engine == "" {
		engine = "libaio"
	}
	dir := t.TempDir()

	// The device under test: a 64 MiB incompressible file, --blobdev layout.
	tree := filepath.Join(dir, "tree")
	os.Mkdir(tree, 0o755)
	data := make([]byte, 64<<20)
	rand.NewChaCha8([32]byte{1}).Read(data)
	if err := os.WriteFile(filepath.Join(tree, "data"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	p, b := filepath.Join(dir, "p.erofs"), filepath.Join(dir, "data.blob")
	testtree.Mkfs(t, p, tree, "--blobdev="+b, "--chunksize=65536")

	fioImg := fioImage(t, dir)
	bin := vmtest.BuildStatic(t, "github.com/erofs-blockd/erofs-blockd/cmd/erofs-blockd")
	fio := "/opt/fio/lib/ld-linux-x86-64.so.2 --library-path /opt/fio/lib /opt/fio/fio"
	fioArgs := fmt.Sprintf("--rw=randread --bs=4k --iodepth=32 --ioengine=%s --direct=1 --numjobs=1 --time_based --runtime=%s --ramp_time=2 --group_reporting", engine, runtime)
	script := `set -u
mkdir -p /opt/fio && mount -t erofs -o ro /dev/vdc /opt/fio || exit 1
` + fio + ` --version || exit 1
cat /dev/vda /dev/vdb > /dev/null   # warm the page cache under the blobs
erofs-blockd serve --blob /dev/vda --blob /dev/vdb --ublk /dev/nbd0 >/tmp/serve.out 2>/tmp/serve.err &
pid=$!
i=0; while [ "$(grep -c '^attached ' /tmp/serve.out 2>/dev/null)" != 2 ]; do
  i=$((i+1)); [ $i -gt 300 ] && { echo "not attached"; cat /tmp/serve.err; exit 1; }
  sleep 0.1
done
cat /tmp/serve.out
mount -t erofs -o ro /dev/ublkb0 /mnt && md5sum /mnt/data && umount /mnt || exit 1
for dev in /dev/nbd0 /dev/ublkb0 /dev/nbd0 /dev/ublkb0; do
  echo "== fio $dev"
  ` + fio + ` --name=randread --filename=$dev ` + fioArgs + ` > /tmp/fio.out 2>&1 || { cat /tmp/fio.out; exit 1; }
  grep -E 'read: IOPS=|clat \(|lat \(usec\): min' /tmp/fio.out | head -3
  echo "FIO-RESULT $dev $(sed -n 's/.*read: IOPS=\([^,]*\),.*/\1/p' /tmp/fio.out | head -1)"
done
kill -TERM $pid; wait $pid; echo "server exit status $?"
echo "FIO-COMMAND fio --name=randread --filename=DEV ` + fioArgs + `"
`
	res := vmtest.RunT(t, &vmtest.Guest{
		Files:   map[string]string{"/bin/erofs-blockd": bin},
		Disks:   []string{pad512(t, p), pad512(t, b), fioImg},
		Script:  script,
		Timeout: 10 * time.Minute,
	})
	if !res.Passed {
		t.Fatalf("guest failed (exit %d)", res.ExitCode)
	}
	want := fmt.Sprintf("%x", md5.Sum(data))
	if !strings.Contains(res.Log, want) {
		t.Errorf("md5 of the file through /dev/ublkb0 is not %s", want)
	}
	re := regexp.MustCompile(`(FIO-RESULT|FIO-COMMAND|read: IOPS=|lat \()[^\n]*`)
	for _, m := range re.FindAllString(res.Log, -1) {
		t.Log(strings.TrimSpace(m))
	}
}

// fioImage packs /usr/bin/fio and the shared libraries ldd lists (plus the
// dynamic loader) into an EROFS image: fio, lib/*.
func fioImage(t *testing.T, dir string) string {
	t.Helper()
	fioPath, err := exec.LookPath("fio")
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "fioroot")
	os.MkdirAll(filepath.Join(root, "lib"), 0o755)
	copyFile(t, fioPath, filepath.Join(root, "fio"))
	out, err := exec.Command("ldd", fioPath).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", fioPath, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			copyFile(t, f[2], filepath.Join(root, "lib", f[0]))
		case len(f) >= 1 && strings.Contains(f[0], "ld-linux"):
			copyFile(t, f[0], filepath.Join(root, "lib", filepath.Base(f[0])))
		}
	}
	img := filepath.Join(dir, "fio.erofs")
	testtree.Mkfs(t, img, root, "-zlz4")
	return pad512(t, img)
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
