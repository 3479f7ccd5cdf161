package diskcache

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The test binary doubles as a helper process (DISKCACHE_HELPER=mode dir)
// for the lock and kill -9 tests.
func TestMain(m *testing.M) {
	if mode := os.Getenv("DISKCACHE_HELPER"); mode != "" {
		helper(mode, os.Getenv("DISKCACHE_DIR"))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func helper(mode, dir string) {
	c, err := Open(dir, crashMax, Options{Logger: quiet})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	switch mode {
	case "hold": // hold the lock until stdin closes
		fmt.Println("ready")
		bufio.NewReader(os.Stdin).ReadString('\n')
	case "write": // write chunks until killed
		for i := int64(0); ; i++ {
			idx := i % 97
			c.Put(crashKey, idx, content(crashKey, idx, crashSize(idx)))
			c.PutMeta(crashKey, content(crashKey, -1, int(i%1000)))
			if i%10 == 9 {
				fmt.Println("progress", i)
			}
		}
	}
	c.Close()
}

const crashKey = "oci:sha256:crash"

func crashSize(idx int64) int { return 16<<10 + int(idx)*1237 }

// crashMax holds about half of the 97 chunks the writer cycles through.
const crashMax = 2 << 20

func startHelper(t *testing.T, mode, dir string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DISKCACHE_HELPER="+mode, "DISKCACHE_DIR="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		t.Fatalf("helper %s: no output", mode)
	}
	if l := sc.Text(); l != "ready" && !strings.HasPrefix(l, "progress") {
		t.Fatalf("helper %s: %s", mode, l)
	}
	return cmd, sc
}

func TestLockOtherProcess(t *testing.T) {
	dir := t.TempDir()
	cmd, _ := startHelper(t, "hold", dir)
	_, err := Open(dir, 1<<20, Options{Logger: quiet})
	if err == nil {
		t.Fatal("Open succeeded while another process holds the cache")
	}
	if msg := err.Error(); !strings.Contains(msg, dir) || !strings.Contains(msg, fmt.Sprintf("pid %d", cmd.Process.Pid)) || strings.Contains(msg, "this process") {
		t.Fatalf("unclear error: %v", err)
	}
	t.Log(err)
	// A holder killed with SIGKILL releases the lock with its process.
	cmd.Process.Kill()
	cmd.Wait()
	c := open(t, dir, 1<<20)
	c.Close()
}

// TestKill9: a writer killed at arbitrary points, several times; each time
// the cache opens cleanly and every chunk is right or a miss.
func TestKill9(t *testing.T) {
	dir := t.TempDir()
	for round := range 3 {
		cmd, sc := startHelper(t, "write", dir)
		for range 2 + round*3 { // let it run past a few progress lines
			if !sc.Scan() {
				t.Fatal("helper died")
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
		c := open(t, dir, crashMax)
		if ents, _ := os.ReadDir(c.tmpDir); len(ents) != 0 {
			t.Fatalf("tmp not cleaned: %d files", len(ents))
		}
		hits := 0
		for idx := range int64(97) {
			if expectMissOrRight(t, c, crashKey, idx, content(crashKey, idx, crashSize(idx))) {
				hits++
			}
		}
		if v, ok := c.GetMeta(crashKey); ok {
			if !strings.HasPrefix(string(content(crashKey, -1, 1000)), string(v)) {
				t.Fatal("wrong metadata")
			}
		}
		s := c.Stats()
		if chunks, _, n := diskBytes(t, dir); chunks != s.Bytes || int64(n) != s.Entries || s.Bytes > crashMax {
			t.Fatalf("round %d: disk %d bytes in %d files; %+v", round, chunks, n, s)
		}
		if hits == 0 {
			t.Fatalf("round %d: nothing survived", round)
		}
		t.Logf("round %d: %d hits, %+v", round, hits, s)
		c.Close()
	}
}
