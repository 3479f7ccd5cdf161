package diskcache

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// tmpfs mounts a tmpfs of the given size (a mount option, "1m") on a new
// directory, or skips the test where mounting is not allowed.
func tmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// TestDiskFull: on a full file system Puts fail, counted and logged once,
// nothing half-written stays, Gets keep working, and freeing space heals.
func TestDiskFull(t *testing.T) {
	dir := tmpfs(t, "1m")
	var log bytes.Buffer
	var mu sync.Mutex
	c, err := Open(dir, 64<<20, Options{Logger: slog.New(slog.NewTextHandler(lockedWriter{&mu, &log}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const chunk = 64 << 10
	for i := range int64(40) { // 2.5 MiB into 1 MiB
		c.Put("k", i, content("k", i, chunk))
	}
	c.PutMeta("k", make([]byte, 512<<10))
	s := c.Stats()
	if s.WriteErrors == 0 || s.Entries == 0 || s.Entries >= 40 {
		t.Fatalf("%+v", s)
	}
	hits := 0
	for i := range int64(40) {
		if expectMissOrRight(t, c, "k", i, content("k", i, chunk)) {
			hits++
		}
	}
	if int64(hits) != s.Entries {
		t.Fatalf("%d hits, %d entries", hits, s.Entries)
	}
	chunks, tmp, n := diskBytes(t, dir)
	if tmp != 0 || chunks != s.Bytes || int64(n) != s.Entries {
		t.Fatalf("disk %d in %d files, tmp %d; %+v", chunks, n, tmp, s)
	}
	mu.Lock()
	logged := log.String()
	mu.Unlock()
	if strings.Count(logged, "write failed") != 1 || !strings.Contains(logged, "no space left") {
		t.Fatalf("log:\n%s", logged)
	}
	// Free space: writes work again.
	c.Drop("k")
	c.Put("k", 100, content("k", 100, chunk))
	expect(t, c, "k", 100, content("k", 100, chunk))
	t.Logf("%+v", c.Stats())
}

// TestReadOnly: a cache on a file system that is now read-only opens, serves
// what it has, and counts its failed writes.
func TestReadOnly(t *testing.T) {
	dir := tmpfs(t, "4m")
	c := open(t, dir, 1<<20)
	for i := range int64(5) {
		c.Put("k", i, content("k", i, 10000))
	}
	c.PutMeta("k", []byte("meta"))
	c.Close()
	// Leftovers that cannot be cleaned up on a read-only file system.
	os.WriteFile(c.tmpDir+"/1-1", []byte("partial"), 0o600)
	flip(t, c.chunkPath(ckey{hashKey("k"), 4}), -1)
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Skipf("remount read-only: %v", err)
	}
	c = open(t, dir, 1<<20)
	for i := range int64(4) {
		expect(t, c, "k", i, content("k", i, 10000))
	}
	expect(t, c, "k", 4, nil) // damaged: a miss, even if it cannot be deleted
	if v, ok := c.GetMeta("k"); !ok || string(v) != "meta" {
		t.Fatalf("meta %q %v", v, ok)
	}
	c.Put("k", 9, content("k", 9, 10000))
	c.PutMeta("x", []byte("y"))
	expect(t, c, "k", 9, nil)
	s := c.Stats()
	if s.WriteErrors != 2 || s.CheckFailures != 1 || s.Entries != 4 {
		t.Fatalf("%+v", s)
	}
	// A second opener is still refused.
	if _, err := Open(dir, 1<<20, Options{Logger: quiet}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open of a read-only cache: %v", err)
	}
}
