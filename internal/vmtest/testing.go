package vmtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Require skips t when EROFS_BLOCKD_SKIP_VM=1 and when running inside a
// guest (no nesting); otherwise it fails t if no guest kernel is installed.
// It never skips silently for a missing kernel: CI runs scripts/vm/kernel.sh
// first.
func Require(t testing.TB) {
	t.Helper()
	if os.Getenv(EnvSkip) == "1" {
		t.Skip(EnvSkip + "=1")
	}
	if InGuest() {
		t.Skip("already inside a vmtest guest")
	}
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("vmtest guests need linux/amd64, have %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	if _, err := KernelDir(); err != nil {
		t.Fatalf("%v; or set %s=1 to skip guest tests", err, EnvSkip)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("vmtest: %v (scripts/vm/kernel.sh installs qemu-system-x86); or set %s=1", err, EnvSkip)
	}
}

// RunT boots g, logging the console into t when the guest fails or when the
// test runs with -v. Harness errors and timeouts fail t; the script's verdict
// is in the Result for the caller to judge.
func RunT(t testing.TB, g *Guest) *Result {
	t.Helper()
	ctx := context.Background()
	if d, ok := t.(interface {
		Context() context.Context
	}); ok {
		ctx = d.Context()
	}
	if os.Getenv(EnvConsole) == "1" && g.Console == nil {
		g.Console = os.Stderr
	}
	res, err := g.Run(ctx)
	if err != nil {
		if res != nil {
			t.Logf("guest console:\n%s", res.Log)
		}
		t.Fatal(err)
	}
	if !res.Passed || testing.Verbose() {
		t.Logf("guest console:\n%s", res.Log)
	}
	if res.TimedOut {
		t.Fatalf("vmtest: guest timed out after %v", res.Total)
	}
	t.Logf("vmtest: boot %v, total %v, exit %d", res.Boot.Round(1e7), res.Total.Round(1e7), res.ExitCode)
	return res
}

// goTool returns the go command that built this test, or one on PATH.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if r := os.Getenv("GOROOT"); r != "" {
		return filepath.Join(r, "bin", "go")
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

func goBuild(t testing.TB, out string, args ...string) {
	t.Helper()
	cmd := exec.Command(goTool(), args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	if _, err := os.Stat(out); err != nil {
		t.Fatalf("go %s: no output: %v", strings.Join(args, " "), err)
	}
}

// BuildStatic builds the main package pkg (an import path or ./relative
// path) as a static (CGO_ENABLED=0), stripped linux/amd64 binary in
// t.TempDir and returns its path. flags go to "go build" before the package.
func BuildStatic(t testing.TB, pkg string, flags ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	args := append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", out}, flags...)
	goBuild(t, out, append(args, pkg)...)
	return out
}

// BuildTest compiles the tests of pkg into a static, stripped test binary in
// t.TempDir (go test -c) and returns its path. Inside the guest, run it with
// -test.run and -test.v as usual.
func BuildTest(t testing.TB, pkg string, flags ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg)+".test")
	args := append([]string{"test", "-c", "-trimpath", "-ldflags=-s -w", "-o", out}, flags...)
	goBuild(t, out, append(args, pkg)...)
	return out
}
