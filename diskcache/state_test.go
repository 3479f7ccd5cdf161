package diskcache

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// trust does what the state saver does every stateEvery (a syncfs
// confirms what was written or checked; the state is saved), then reads
// chunks 0..n-1 of key.
func trust(t *testing.T, c *Cache, key string, n int64, size int) {
	t.Helper()
	c.saveState()
	for i := range n {
		expect(t, c, key, i, content(key, i, size))
	}
}

func TestTrustedRecords(t *testing.T) {
	dir := t.TempDir()
	const key = "oci:sha256:beef"
	c := open(t, dir, 1<<20)
	for i := range int64(5) {
		c.Put(key, i, content(key, i, 3000))
	}
	// Just written: trusted in this process (pending), not checked.
	expect(t, c, key, 0, content(key, 0, 3000))
	if s := c.Stats(); s.Checks != 0 {
		t.Fatalf("checks %d, want 0", s.Checks)
	}
	trust(t, c, key, 5, 3000)
	before := c.Stats().Checks
	for i := range int64(5) {
		expect(t, c, key, i, content(key, i, 3000))
	}
	if s := c.Stats(); s.Checks != before {
		t.Fatalf("trusted records checked again: %d -> %d", before, s.Checks)
	}
	c.Close()

	// A restart in the same boot trusts them.
	c = open(t, dir, 1<<20)
	for i := range int64(5) {
		expect(t, c, key, i, content(key, i, 3000))
	}
	if s := c.Stats(); s.Checks != 0 || s.Hits != 5 {
		t.Fatalf("after restart: %+v", s)
	}
	// A change behind our back (same size) is noticed by its stamp.
	flip(t, c.chunkPath(ckey{hashKey(key), 2}), -10)
	if expectMissOrRight(t, c, key, 2, content(key, 2, 3000)) {
		t.Fatal("a changed trusted record was a hit")
	}
	if s := c.Stats(); s.Checks != 1 || s.CheckFailures != 1 {
		t.Fatalf("after a change: %+v", s)
	}
	// The same while closed.
	c.Close()
	flip(t, c.chunkPath(ckey{hashKey(key), 3}), -10)
	c = open(t, dir, 1<<20)
	if expectMissOrRight(t, c, key, 3, content(key, 3, 3000)) {
		t.Fatal("a record changed while closed was a hit")
	}
	expect(t, c, key, 4, content(key, 4, 3000))
	if s := c.Stats(); s.Checks != 1 || s.CheckFailures != 1 {
		t.Fatalf("after a change while closed: %+v", s)
	}
}

// distrust forgets every stamp, as after a reboot.
func distrust(c *Cache) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.m {
		c.unpend(e)
		e.trusted = false
	}
}

// TestTrustSlack: a record rewritten (with the same bytes) just before it
// is checked is not trusted from that check: a change in the same
// timestamp tick would keep its stamp. Once older, a check trusts it.
func TestTrustSlack(t *testing.T) {
	c := open(t, t.TempDir(), 1<<20)
	const key = "k"
	c.Put(key, 0, content(key, 0, 3000))
	trust(t, c, key, 1, 3000)
	p := c.chunkPath(ckey{hashKey(key), 0})
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, b, 0o600)
	checks := c.Stats().Checks
	trust(t, c, key, 1, 3000) // checked (changed stamp), too fresh to trust
	trust(t, c, key, 1, 3000) // so checked again
	if got := c.Stats().Checks - checks; got != 2 {
		t.Fatalf("%d checks, want 2", got)
	}
	time.Sleep(trustSlack + 10*time.Millisecond)
	trust(t, c, key, 1, 3000) // checked, old enough: pending
	trust(t, c, key, 1, 3000) // confirmed: trusted
	trust(t, c, key, 1, 3000)
	if got := c.Stats().Checks - checks; got != 3 {
		t.Fatalf("%d checks, want 3", got)
	}
	// Pending is enough in this process.
	distrust(c)
	expect(t, c, key, 0, content(key, 0, 3000))
	expect(t, c, key, 0, content(key, 0, 3000))
	if got := c.Stats().Checks - checks; got != 4 {
		t.Fatalf("%d checks, want 3", got)
	}
}

// TestTrustAcrossBoots: another boot id (a reboot, maybe a power cut)
// checks everything again; so does a lost or damaged state file.
func TestTrustAcrossBoots(t *testing.T) {
	old := bootIDPath
	t.Cleanup(func() { bootIDPath = old })
	bootIDPath = filepath.Join(t.TempDir(), "boot_id")
	os.WriteFile(bootIDPath, []byte("boot-a\n"), 0o600)

	dir := t.TempDir()
	const key = "http:x"
	c := open(t, dir, 1<<20)
	for i := range int64(4) {
		c.Put(key, i, content(key, i, 2000))
	}
	trust(t, c, key, 4, 2000)
	c.Close()
	time.Sleep(trustSlack + 10*time.Millisecond) // old enough for a check to trust them
	state, err := os.ReadFile(filepath.Join(dir, stateName))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		boot   string
		state  []byte
		checks uint64
	}{
		{"same boot", "boot-a\n", state, 0},
		{"other boot", "boot-b\n", state, 4},
		{"no boot id", "", state, 4},
		{"state lost", "boot-a\n", nil, 4},
		{"state truncated", "boot-a\n", state[:len(state)-3], 4},
		{"state garbled", "boot-a\n", append(bytes.Clone(state[:30]), append([]byte{state[30] ^ 1}, state[31:]...)...), 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.WriteFile(bootIDPath, []byte(tc.boot), 0o600)
			sp := filepath.Join(dir, stateName)
			os.Remove(sp)
			if tc.state != nil {
				os.WriteFile(sp, tc.state, 0o600)
			}
			c := open(t, dir, 1<<20)
			for i := range int64(4) {
				expect(t, c, key, i, content(key, i, 2000))
			}
			if s := c.Stats(); s.Checks != tc.checks {
				t.Fatalf("checks %d, want %d", s.Checks, tc.checks)
			}
			// What was checked (long after it was written) is trusted
			// once confirmed.
			trust(t, c, key, 4, 2000)
			if s := c.Stats(); s.Checks != tc.checks {
				t.Fatalf("checked again after the confirmation: %d, want %d", s.Checks, tc.checks)
			}
			c.Close()
		})
	}
}

// TestRecencyAcrossRestart: hits before a restart count after it.
func TestRecencyAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, 1<<20)
	for i := range int64(100) {
		c.Put("k", i, content("k", i, 1000))
	}
	for range 3 {
		expect(t, c, "k", 5, content("k", 5, 1000))
	}
	c.Close()
	c = open(t, dir, 10*recordSize(1, 1000))
	expect(t, c, "k", 5, content("k", 5, 1000)) // hit: kept over older, unhit ones
	expect(t, c, "k", 6, nil)
	expect(t, c, "k", 99, content("k", 99, 1000))
}

func TestLease(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, 1<<20)
	const key = "oci:sha256:lease"
	for i := range int64(3) {
		c.Put(key, i, content(key, i, 5000))
	}
	read := func(f *os.File, off, n int64) []byte {
		t.Helper()
		b := make([]byte, n)
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		return b
	}
	// Untrusted: checked whole first.
	distrust(c)
	f, off, n, ok := c.Lease(key, 1)
	if !ok || n != 5000 || !bytes.Equal(read(f, off, n), content(key, 1, 5000)) {
		t.Fatalf("lease: ok %v n %d", ok, n)
	}
	f.Close()
	if s := c.Stats(); s.Checks != 1 || s.Hits != 1 {
		t.Fatalf("%+v", s)
	}
	// Trusted: no check; the file outlives a Drop.
	expect(t, c, key, 0, content(key, 0, 5000))
	expect(t, c, key, 2, content(key, 2, 5000))
	time.Sleep(trustSlack + 10*time.Millisecond)
	trust(t, c, key, 3, 5000)
	checks := c.Stats().Checks
	f, off, n, ok = c.Lease(key, 2)
	if !ok || c.Stats().Checks != checks {
		t.Fatalf("trusted lease: ok %v, checks %d -> %d", ok, checks, c.Stats().Checks)
	}
	c.Drop(key)
	if !bytes.Equal(read(f, off, n), content(key, 2, 5000)) {
		t.Fatal("leased file changed after Drop")
	}
	f.Close()
	if _, _, _, ok := c.Lease(key, 2); ok {
		t.Fatal("lease of a dropped chunk")
	}
	// Damaged: a miss, and the file is gone.
	c.Put(key, 0, content(key, 0, 5000))
	p := c.chunkPath(ckey{hashKey(key), 0})
	flip(t, p, -10)
	if f, _, _, ok := c.Lease(key, 0); ok {
		f.Close()
		t.Fatal("lease of a damaged chunk")
	}
	if _, err := os.Stat(p); err == nil {
		t.Fatal("damaged file kept")
	}
	// Truncated while trusted: the stamp differs, the check fails.
	c.Put(key, 1, content(key, 1, 5000))
	trust(t, c, key, 0, 0)
	truncate(t, c.chunkPath(ckey{hashKey(key), 1}), -100)
	if f, _, _, ok := c.Lease(key, 1); ok {
		f.Close()
		t.Fatal("lease of a truncated chunk")
	}
}

func TestStateRecordFuzzish(t *testing.T) {
	ents := []stateEnt{{ck: ckey{hashKey("a"), 3}, st: stamp{1, 2, 3, 4, 5}, trusted: true, freq: 2}, {ck: ckey{hashKey("b"), 0}}}
	b := encodeState([]byte("boot"), ents)
	boot, got, err := decodeState(b)
	if err != nil || string(boot) != "boot" || len(got) != 2 || got[0] != ents[0] || got[1] != ents[1] {
		t.Fatalf("%v %q %+v", err, boot, got)
	}
	for i := range b {
		for _, n := range []int{i} {
			if _, _, err := decodeState(b[:n]); err == nil {
				t.Fatalf("prefix %d decoded", n)
			}
		}
		c := bytes.Clone(b)
		c[i] ^= 0x10
		if _, _, err := decodeState(c); err == nil {
			t.Fatalf("flip at %d decoded", i)
		}
	}
	_ = io.EOF
}
