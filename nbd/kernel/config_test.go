package kernel

import (
	"testing"
	"time"
)

func TestParseDevicePath(t *testing.T) {
	good := map[string]int{"/dev/nbd0": 0, "/dev/nbd15": 15, "nbd3": 3, "/dev/nbd1000": 1000}
	for p, want := range good {
		got, err := ParseDevicePath(p)
		if err != nil || got != want {
			t.Errorf("ParseDevicePath(%q) = %d, %v; want %d", p, got, err, want)
		}
	}
	for _, p := range []string{"", "/dev/nbd", "/dev/nbd-1", "/dev/nbd0p1", "/dev/sda", "/dev/nbd01",
		"/dev/x/nbd0", "/dev/nbd+1", "/dev/nbd99999999999999999999", "nbd 1"} {
		if n, err := ParseDevicePath(p); err == nil {
			t.Errorf("ParseDevicePath(%q) = %d, want error", p, n)
		}
	}
	if DevicePath(7) != "/dev/nbd7" {
		t.Error(DevicePath(7))
	}
}

func TestNormalize(t *testing.T) {
	c := Config{Index: 0, Size: 10000, ReadOnly: true}
	if err := c.normalize(); err != nil {
		t.Fatal(err)
	}
	if c.Size != 12288 || c.BlockSize != 4096 || c.Connections != 1 || c.OpTimeout != defaultOpTimeout || c.Logger == nil {
		t.Errorf("normalized %+v", c)
	}
	if f := c.serverFlags(); f != flagHasFlags|flagReadOnly|flagSendFlush|flagCanMultiConn {
		t.Errorf("flags %#x", f)
	}
	c = Config{Size: 513, BlockSize: 512}
	if err := c.normalize(); err != nil || c.Size != 1024 {
		t.Errorf("size %d err %v", c.Size, err)
	}
	bad := []Config{
		{Size: 0},
		{Size: -1},
		{Size: 4096, BlockSize: 1000},
		{Size: 4096, BlockSize: 8192},
		{Size: 4096, BlockSize: 256},
		{Size: 4096, Connections: -1},
		{Size: 4096, Connections: 1000},
		{Size: 4096, Index: -2},
		{Size: 1<<63 - 1},
		{Size: 4096, Timeout: -time.Second},
		{Size: 4096, Method: Method(9)},
	}
	for _, c := range bad {
		if err := c.normalize(); err == nil {
			t.Errorf("normalize(%+v) accepted", c)
		}
	}
	if seconds(1500*time.Millisecond) != 2 || seconds(0) != 0 || seconds(time.Second) != 1 {
		t.Error("seconds rounding")
	}
}
