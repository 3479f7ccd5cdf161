package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Interop tests run real NBD clients (libnbd-bin, qemu-utils) against an
// in-process server. Missing tools fail the test: run scripts/deps.sh.

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found (%v): run scripts/deps.sh to install the interop clients", name, err)
	}
	return p
}

// interopDevice: data 1M, hole 2M, data 3M, hole 1M, data 64K; the first
// 64 KiB are 0xAB so qemu-io can check a pattern.
func interopDevice() *holeDev {
	d := newHoleDev([]int64{1 << 20, 2 << 20, 3 << 20, 1 << 20, 64 << 10}, 42)
	for i := range 64 << 10 {
		d.data[i] = 0xAB
	}
	return d
}

func startInterop(t *testing.T, cfg Config, exports ...Export) string {
	t.Helper()
	s := newTestServer(t, cfg, exports...)
	l, uri, err := Listen("unix:" + filepath.Join(t.TempDir(), "nbd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return uri
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, needTool(t, name), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return out
}

func TestInteropNbdinfo(t *testing.T) {
	dev := interopDevice()
	uri := startInterop(t, Config{}, Export{Name: "img", Description: "test image", Device: dev})
	out := run(t, "nbdinfo", "--json", uri)
	var info struct {
		Exports []struct {
			Name        string   `json:"export-name"`
			Description string   `json:"description"`
			Size        int64    `json:"export-size"`
			ReadOnly    bool     `json:"is_read_only"`
			MultiConn   bool     `json:"can_multi_conn"`
			CanCache    bool     `json:"can_cache"`
			CanFlush    bool     `json:"can_flush"`
			CanDF       bool     `json:"can_df"`
			CanWrite    *bool    `json:"can_write"`
			MinBS       uint32   `json:"block_size_minimum"`
			PrefBS      uint32   `json:"block_size_preferred"`
			MaxBS       uint32   `json:"block_size_maximum"`
			Contexts    []string `json:"contexts"`
		} `json:"exports"`
		Protocol string `json:"protocol"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo json: %v\n%s", err, out)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("exports: %s", out)
	}
	e := info.Exports[0]
	if e.Size != dev.Size() || !e.ReadOnly || !e.MultiConn || !e.CanCache || !e.CanFlush || !e.CanDF ||
		e.MinBS != 1 || e.PrefBS != 4096 || e.MaxBS != defaultMaxReq || e.Description != "test image" {
		t.Fatalf("nbdinfo: %+v\n%s", e, out)
	}
	if len(e.Contexts) != 1 || e.Contexts[0] != metaAllocation {
		t.Errorf("contexts %v", e.Contexts)
	}
	if info.Protocol != "newstyle-fixed" {
		t.Errorf("protocol %q", info.Protocol)
	}
	t.Logf("nbdinfo --json: %s", bytes.TrimSpace(out))

	// --list uses NBD_OPT_LIST and INFO on each export
	if out := run(t, "nbdinfo", "--list", "--json", uri); !bytes.Contains(out, []byte(`"img"`)) {
		t.Errorf("nbdinfo --list: %s", out)
	}
}

func TestInteropNbdinfoMap(t *testing.T) {
	dev := interopDevice()
	uri := startInterop(t, Config{}, Export{Device: dev})
	out := run(t, "nbdinfo", "--map", uri)
	type ext struct {
		off, length int64
		typ         int
	}
	var got []ext
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			t.Fatalf("map line %q", line)
		}
		o, _ := strconv.ParseInt(f[0], 10, 64)
		l, _ := strconv.ParseInt(f[1], 10, 64)
		ty, _ := strconv.Atoi(f[2])
		got = append(got, ext{o, l, ty})
	}
	var want []ext
	for _, e := range dev.exts {
		ty := 0
		if e.Hole {
			ty = 3
		}
		want = append(want, ext{e.Offset, e.Length, ty})
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("nbdinfo --map:\n%s\nwant %v", out, want)
	}
	t.Logf("nbdinfo --map:\n%s", out)
}

func TestInteropNbdcopy(t *testing.T) {
	dev := interopDevice()
	odd := newMemDev(3<<20+1234, 43) // size not a multiple of 512
	uri := startInterop(t, Config{MaxRequest: 256 << 10}, Export{Name: "img", Device: dev}, Export{Name: "odd", Device: odd})
	for _, tc := range []struct {
		export string
		want   []byte
		extra  []string
	}{
		{"img", dev.data, nil},
		{"img", dev.data, []string{"--connections=1", "--requests=64"}},
		{"odd", odd.data, nil},
	} {
		out := filepath.Join(t.TempDir(), "out.raw")
		u := strings.Replace(uri, ":///", ":///"+tc.export, 1)
		args := append(append([]string{}, tc.extra...), u, out)
		run(t, "nbdcopy", args...)
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, tc.want) {
			t.Fatalf("nbdcopy %v: output differs (%d vs %d bytes)", args, len(got), len(tc.want))
		}
	}
}

func TestInteropQemu(t *testing.T) {
	dev := interopDevice()
	uri := startInterop(t, Config{}, Export{Device: dev})
	out := filepath.Join(t.TempDir(), "out.raw")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, dev.data) {
		t.Fatalf("qemu-img convert output differs (%d vs %d bytes)", len(got), len(dev.data))
	}
	info := run(t, "qemu-img", "info", "--output=json", uri)
	if !bytes.Contains(info, []byte(fmt.Sprintf(`"virtual-size": %d`, dev.Size()))) {
		t.Errorf("qemu-img info: %s", info)
	}
	// qemu-io: pattern, hole and a write that must fail.
	o := run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0xab 0 64k", "-c", "read -P 0 1M 2M", uri)
	if bytes.Contains(o, []byte("Pattern verification failed")) || !bytes.Contains(o, []byte("read 65536/65536")) {
		t.Fatalf("qemu-io: %s", o)
	}
	mapOut := run(t, "qemu-img", "map", "--output=json", "-f", "raw", uri)
	if !bytes.Contains(mapOut, []byte(`"zero": true`)) {
		t.Errorf("qemu-img map shows no zero extents: %s", mapOut)
	}
}

func runErr(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

func TestInteropTCP(t *testing.T) {
	dev := interopDevice()
	s := newTestServer(t, Config{}, Export{Name: "img", Device: dev})
	l, uri, err := Listen("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	defer s.Shutdown(context.Background())
	out := filepath.Join(t.TempDir(), "out.raw")
	run(t, "nbdcopy", uri+"/img", out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, dev.data) {
		t.Fatal("nbdcopy over TCP: output differs")
	}
	o := run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0xab 0 64k", uri+"/img")
	if !bytes.Contains(o, []byte("read 65536/65536")) {
		t.Fatalf("qemu-io over TCP: %s", o)
	}
}

// TestInteropFio runs fio's nbd ioengine (libnbd) with random reads at a
// queue depth of 16 and verifies it finishes without errors.
func TestInteropFio(t *testing.T) {
	dev := newMemDev(32<<20, 44)
	uri := startInterop(t, Config{}, Export{Device: dev})
	out := run(t, "fio", "--name=nbd", "--ioengine=nbd", "--uri="+uri, "--rw=randread", "--bs=4k",
		"--iodepth=16", "--size=32m", "--readonly", "--time_based", "--runtime=1", "--output-format=json")
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOPS float64 `json:"iops"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) != 1 {
		t.Fatalf("fio output: %v\n%s", err, out)
	}
	if res.Jobs[0].Error != 0 || res.Jobs[0].Read.IOPS <= 0 {
		t.Fatalf("fio: error %d iops %f", res.Jobs[0].Error, res.Jobs[0].Read.IOPS)
	}
	t.Logf("fio nbd randread 4k qd16: %.0f IOPS", res.Jobs[0].Read.IOPS)
}
