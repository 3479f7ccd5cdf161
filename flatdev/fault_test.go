package flatdev_test

import (
	"bytes"
	"errors"
	"os"
	"sync"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/flatdev"
)

// flakyReader fails reads at or above failFrom with an I/O error.
type flakyReader struct {
	r        *bytes.Reader
	failFrom int64
}

func (f *flakyReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.failFrom {
		return 0, errors.New("input/output error")
	}
	return f.r.ReadAt(p, off)
}

// TestOnError checks the fault hook: every failed read of a blob (I/O error
// or truncation) reports the blob's name once, successful reads report
// nothing, and a failed read never returns data.
func TestOnError(t *testing.T) {
	_, _, primary, blob := blobImage(t)
	s := sources(t, primary, blob)
	b, _ := os.ReadFile(blob)
	var mu sync.Mutex
	got := map[string][]error{}
	opt := flatdev.Options{OnError: func(name string, err error) {
		mu.Lock()
		got[name] = append(got[name], err)
		mu.Unlock()
	}}
	half := int64(len(b) / 2 &^ 4095)
	for _, tc := range []struct {
		name      string
		src       flatdev.Source
		truncated bool
	}{
		{"eio", flatdev.Source{Name: "eio.blob", R: &flakyReader{r: bytes.NewReader(b), failFrom: half}, Size: int64(len(b))}, false},
		{"truncated", flatdev.Source{Name: "short.blob", R: bytes.NewReader(b[:half]), Size: int64(len(b))}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev, err := flatdev.New(s[0], []flatdev.Source{tc.src}, opt)
			if err != nil {
				t.Fatal(err)
			}
			start := int64(dev.Slots()[0].UniAddr) * 4096
			buf := make([]byte, 8192)
			if _, err := dev.ReadAt(buf, start); err != nil {
				t.Fatalf("read below the fault: %v", err)
			}
			if !bytes.Equal(buf, b[:8192]) {
				t.Fatal("read below the fault returned wrong bytes")
			}
			mu.Lock()
			n0 := len(got[tc.src.Name])
			mu.Unlock()
			if n0 != 0 {
				t.Fatalf("OnError called for a good read: %v", got[tc.src.Name])
			}
			for i := 0; i < 3; i++ {
				clear(buf)
				n, err := dev.ReadAt(buf, start+half)
				if err == nil || n != 0 {
					t.Fatalf("read of the faulty part: n=%d err=%v", n, err)
				}
				if errors.Is(err, flatdev.ErrTruncated) != tc.truncated {
					t.Fatalf("ErrTruncated=%v, want %v: %v", errors.Is(err, flatdev.ErrTruncated), tc.truncated, err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got[tc.src.Name]) != 3 {
				t.Fatalf("OnError calls for %s: %d, want 3 (%v)", tc.src.Name, len(got[tc.src.Name]), got)
			}
			t.Logf("%s: %v", tc.src.Name, got[tc.src.Name][0])
		})
	}
}
