package gzran

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math/rand"
	"strings"
	"sync"
	"testing"
)

func wantFormatError(t *testing.T, err error, what, sub string) {
	t.Helper()
	var fe *FormatError
	if !errors.As(err, &fe) || fe.What != what || !strings.Contains(fe.Msg, sub) {
		t.Fatalf("error %v, want a %s FormatError containing %q", err, what, sub)
	}
}

// hdr builds a gzip header with every optional field and an FHCRC.
func hdr(flags byte) []byte {
	h := []byte{0x1f, 0x8b, 8, flags, 1, 2, 3, 4, 0, 3}
	if flags&flagExtra != 0 {
		h = append(h, 5, 0, 'A', 'B', 1, 0, 'x')
	}
	if flags&flagName != 0 {
		h = append(h, "file.tar\x00"...)
	}
	if flags&flagComment != 0 {
		h = append(h, "comment\x00"...)
	}
	if flags&flagHCRC != 0 {
		h = binary.LittleEndian.AppendUint16(h, uint16(crc32.ChecksumIEEE(h)))
	}
	return h
}

func TestHeaderFields(t *testing.T) {
	data := testData(300<<10, 3)
	gz := kGzip(t, data, 6)
	body := gz[10:] // klauspost writes a bare 10-byte header
	all := append(hdr(flagExtra|flagName|flagComment|flagHCRC|flagText), body...)
	ix, err := Build(bytes.NewReader(all), 0)
	if err != nil {
		t.Fatal(err)
	}
	if ix.Points[0].In != int64(len(hdr(flagExtra|flagName|flagComment|flagHCRC))) {
		t.Fatalf("first point at %d", ix.Points[0].In)
	}
	serveAll(t, all, ix, data)

	bad := hdr(flagName | flagHCRC)
	bad[len(bad)-1] ^= 1
	_, err = Build(bytes.NewReader(append(bad, body...)), 0)
	wantFormatError(t, err, "gzip", "header CRC16")
	for _, c := range []struct {
		name string
		h    []byte
		sub  string
	}{
		{"magic", []byte{0x1f, 0x8c, 8, 0, 0, 0, 0, 0, 0, 3}, "bad gzip magic"},
		{"method", []byte{0x1f, 0x8b, 7, 0, 0, 0, 0, 0, 0, 3}, "compression method 7"},
		{"reserved", []byte{0x1f, 0x8b, 8, 0x20, 0, 0, 0, 0, 0, 3}, "reserved header flag"},
		{"truncated-extra", []byte{0x1f, 0x8b, 8, flagExtra, 0, 0, 0, 0, 0, 3, 200, 0, 1}, "truncated gzip member header"},
		{"truncated-name", []byte{0x1f, 0x8b, 8, flagName, 0, 0, 0, 0, 0, 3, 'a', 'b'}, "truncated gzip member header"},
		{"short", []byte{0x1f, 0x8b, 8}, "truncated gzip member header"},
	} {
		_, err := Build(bytes.NewReader(c.h), 0)
		wantFormatError(t, err, "gzip", c.sub)
	}
	_, err = Build(bytes.NewReader(nil), 0)
	wantFormatError(t, err, "gzip", "empty input")
}

func TestCorruptStreams(t *testing.T) {
	data := testData(1<<20, 4)
	gz := tool(t, data, "gzip", "-6", "-c")
	n := len(gz)
	t.Run("crc", func(t *testing.T) {
		b := bytes.Clone(gz)
		b[n-8] ^= 0xff
		_, err := Build(bytes.NewReader(b), 0)
		wantFormatError(t, err, "gzip", "CRC32 mismatch")
	})
	t.Run("isize", func(t *testing.T) {
		b := bytes.Clone(gz)
		b[n-1] ^= 0x01
		_, err := Build(bytes.NewReader(b), 0)
		wantFormatError(t, err, "gzip", "ISIZE mismatch")
	})
	t.Run("trailing-garbage", func(t *testing.T) {
		b := append(bytes.Clone(gz), 0, 0, 7)
		_, err := Build(bytes.NewReader(b), 0)
		wantFormatError(t, err, "gzip", "trailing garbage")
		_, err = Build(bytes.NewReader(append(bytes.Clone(gz), 'x')), 0)
		wantFormatError(t, err, "gzip", "bad gzip magic")
	})
	t.Run("truncated", func(t *testing.T) {
		for _, k := range []int{11, 20, 100, n / 2, n - 9, n - 8, n - 3, n - 1} {
			_, err := Build(bytes.NewReader(gz[:k]), 0)
			var fe *FormatError
			if !errors.As(err, &fe) || !strings.Contains(fe.Msg, "truncated") {
				t.Fatalf("truncated at %d: %v", k, err)
			}
		}
	})
	t.Run("flips", func(t *testing.T) {
		ix, err := Build(bytes.NewReader(gz), 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		var z bytes.Buffer
		ix.WriteZinfo(&z)
		zx, _ := ReadZinfo(bytes.NewReader(z.Bytes()))
		zx.Size = ix.Size
		rng := rand.New(rand.NewSource(5))
		for i := 0; i < 40; i++ {
			b := bytes.Clone(gz)
			at := 20 + rng.Intn(n-28)
			b[at] ^= byte(1 + rng.Intn(255))
			if _, err := Build(bytes.NewReader(b), 64<<10); err == nil {
				t.Fatalf("flip at %d: Build succeeded", at)
			}
			// with SpanCRC: every read is right or an error
			r, err := NewReader(bytes.NewReader(b), int64(n), ix, Options{CacheBytes: 4 << 20})
			if err != nil {
				t.Fatal(err)
			}
			errs := 0
			for j := 0; j < 30; j++ {
				off := rng.Int63n(int64(len(data)))
				p := make([]byte, 1+rng.Intn(100<<10))
				k, err := r.ReadAt(p, off)
				if !bytes.Equal(p[:k], data[off:off+int64(k)]) {
					t.Fatalf("flip at %d: ReadAt(%d, %d) gave %d wrong bytes (err %v)", at, len(p), off, k, err)
				}
				if err != nil && err != io.EOF {
					errs++
				}
			}
			// a whole read must fail: some span changed
			if _, err := r.ReadAt(make([]byte, len(data)), 0); err == nil {
				t.Fatalf("flip at %d: full read succeeded", at)
			}
			// without SpanCRC (external zinfo): no panic, no hang
			r2, err := NewReader(bytes.NewReader(b), int64(n), zx, Options{})
			if err != nil {
				t.Fatal(err)
			}
			r2.ReadAt(make([]byte, len(data)), 0)
		}
	})
}

func TestConcurrentReads(t *testing.T) {
	data := testData(4<<20, 6)
	gz := tool(t, data, "pigz", "-c", "-p", "2")
	ix, err := Build(bytes.NewReader(gz), 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	for _, crc := range []bool{true, false} {
		x := *ix
		if !crc {
			x.SpanCRC = nil
		}
		r, err := NewReader(bytes.NewReader(gz), int64(len(gz)), &x, Options{CacheBytes: 2 << 20, segSize: 32 << 10})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errc := make(chan error, 8)
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(seed int64) {
				defer wg.Done()
				rng := rand.New(rand.NewSource(seed))
				for i := 0; i < 150; i++ {
					off := rng.Int63n(int64(len(data)))
					p := make([]byte, 1+rng.Intn(64<<10))
					k, err := r.ReadAt(p, off)
					if (err != nil && err != io.EOF) || !bytes.Equal(p[:k], data[off:off+int64(k)]) {
						errc <- errors.New("concurrent read mismatch")
						return
					}
				}
			}(int64(g))
		}
		wg.Wait()
		close(errc)
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		st := r.Stats()
		t.Logf("crc=%v: %+v", crc, st)
		if st.CacheHits == 0 || st.SpanDecodes == 0 {
			t.Fatalf("stats %+v", st)
		}
	}
}

// A warm 4 KiB read is a cache hit; a cold one decodes at most one span.
func TestStatsCacheAndResume(t *testing.T) {
	data := testData(2<<20, 9)
	gz := goGzip(t, data, 6, "")
	ix, err := Build(bytes.NewReader(gz), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	ix.SpanCRC = nil
	r, err := NewReader(bytes.NewReader(gz), int64(len(gz)), ix, Options{segSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	r.ReadAt(p, 10)
	st := r.Stats()
	if st.SpanDecodes != 1 || st.BytesDecoded != 64<<10 {
		t.Fatalf("first read: %+v", st)
	}
	r.ReadAt(p, 20)
	if st2 := r.Stats(); st2.CacheHits != 1 || st2.SpanDecodes != 1 {
		t.Fatalf("second read: %+v", st2)
	}
	r.ReadAt(p, 200<<10) // same span, later segment: resumes the decoder
	if st3 := r.Stats(); st3.Resumes != 1 || st3.BytesDecoded != 256<<10 {
		t.Fatalf("third read: %+v", st3)
	}
}
