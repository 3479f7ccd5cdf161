package nbd

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkNbdcopy copies a 256 MiB export to null: with nbdcopy (4
// connections, 64 requests in flight each, 256 KiB requests), served by
// this package and, for comparison, by `nbdkit file` on the same bytes
// (page-cached). Run: go test -run '^$' -bench Nbdcopy -benchtime 5x ./nbd/
func BenchmarkNbdcopy(b *testing.B) {
	const size = 256 << 20
	dev := newMemDev(size, 99)
	run := func(b *testing.B, uri string) {
		nbdcopy, err := exec.LookPath("nbdcopy")
		if err != nil {
			b.Fatalf("nbdcopy missing: run scripts/deps.sh")
		}
		b.SetBytes(size)
		for b.Loop() {
			out, err := exec.Command(nbdcopy, "--request-size=262144", uri, "null:").CombinedOutput()
			if err != nil {
				b.Fatalf("nbdcopy: %v %s", err, out)
			}
		}
	}
	b.Run("erofs-blockd", func(b *testing.B) {
		s := newTestServer(b, Config{}, Export{Device: dev})
		l, uri, err := Listen("unix:" + filepath.Join(b.TempDir(), "s"))
		if err != nil {
			b.Fatal(err)
		}
		go s.Serve(l)
		defer s.Shutdown(context.Background())
		run(b, uri)
	})
	b.Run("nbdkit-file", func(b *testing.B) {
		nbdkit, err := exec.LookPath("nbdkit")
		if err != nil {
			b.Fatalf("nbdkit missing: run scripts/deps.sh")
		}
		dir := b.TempDir()
		img, sock := filepath.Join(dir, "img"), filepath.Join(dir, "s")
		if err := os.WriteFile(img, dev.data, 0o600); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(nbdkit, "-r", "-f", "-U", sock, "file", "file="+img)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		for i := 0; ; i++ {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if i > 500 {
				b.Fatal("nbdkit did not start")
			}
			time.Sleep(10 * time.Millisecond)
		}
		run(b, "nbd+unix:///?socket="+sock)
	})
}
