package decompress

import (
	"bytes"
	"errors"
	"math/rand"
	"testing"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

func sample(n int, seed int64) []byte {
	rng := rand.New(rand.NewSource(seed))
	words := []string{"erofs ", "pcluster ", "lcluster ", "zstd ", "\n", "deflate "}
	b := make([]byte, 0, n+16)
	for len(b) < n {
		if rng.Intn(10) == 0 {
			r := make([]byte, rng.Intn(40))
			rng.Read(r)
			b = append(b, r...)
		} else {
			b = append(b, words[rng.Intn(len(words))]...)
		}
	}
	return b[:n]
}

// tailAlign puts data at the end of a block-multiple pcluster with leading
// zero padding, as mkfs.erofs writes with LZ4_0PADDING (and always for
// deflate/zstd/lzma).
func tailAlign(data []byte, bs int) []byte {
	n := (len(data) + bs - 1) / bs * bs
	out := make([]byte, n)
	copy(out[n-len(data):], data)
	return out
}

func lz4Raw(t testing.TB, data []byte) []byte {
	t.Helper()
	buf := make([]byte, lz4.CompressBlockBound(len(data)))
	var c lz4.Compressor
	n, err := c.CompressBlock(data, buf)
	if err != nil || n == 0 {
		t.Fatalf("lz4 compress: %d %v", n, err)
	}
	return buf[:n]
}

func deflateRaw(t testing.TB, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := flate.NewWriter(&b, 9)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func zstdFrame(t testing.TB, data []byte) []byte {
	t.Helper()
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithWindowSize(1<<17))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	return e.EncodeAll(data, nil)
}

func TestRoundTrip(t *testing.T) {
	for _, n := range []int{1, 100, 4096, 4097, 65536, 300000} {
		data := sample(n, int64(n))
		cases := []struct {
			name string
			alg  Alg
			src  []byte
			zp   bool
		}{
			{"lz4-0padding", LZ4, tailAlign(lz4Raw(t, data), 4096), true},
			{"lz4-legacy", LZ4, append(lz4Raw(t, data), make([]byte, 100)...), false},
			{"deflate", Deflate, tailAlign(deflateRaw(t, data), 4096), true},
			{"zstd", Zstd, tailAlign(zstdFrame(t, data), 4096), true},
		}
		for _, c := range cases {
			if len(c.src) > MaxPclusterSize {
				continue
			}
			dst := make([]byte, n)
			if err := Decompress(c.alg, dst, c.src, Options{ZeroPadding: c.zp}); err != nil {
				t.Fatalf("%s %d: %v", c.name, n, err)
			}
			if !bytes.Equal(dst, data) {
				t.Fatalf("%s %d: content differs", c.name, n)
			}
			// Prefix (partial) and offset reads.
			for _, r := range [][2]int{{0, n / 2}, {n / 3, n / 3}, {n - 1, 1}, {0, 1}} {
				skip, l := r[0], r[1]
				if l == 0 {
					continue
				}
				part := make([]byte, l)
				err := Decompress(c.alg, part, c.src, Options{ZeroPadding: c.zp, Skip: skip, Partial: skip+l < n})
				if err != nil {
					t.Fatalf("%s %d [%d,+%d): %v", c.name, n, skip, l, err)
				}
				if !bytes.Equal(part, data[skip:skip+l]) {
					t.Fatalf("%s %d [%d,+%d): content differs", c.name, n, skip, l)
				}
			}
			// Without Partial, a short dst is a size mismatch.
			if n > 1 {
				err := Decompress(c.alg, make([]byte, n-1), c.src, Options{ZeroPadding: c.zp})
				if c.name != "lz4-legacy" && !errors.Is(err, ErrCorrupt) {
					t.Fatalf("%s %d: short dst without Partial: %v", c.name, n, err)
				}
			}
			// A longer dst is always an error.
			if err := Decompress(c.alg, make([]byte, n+1), c.src, Options{ZeroPadding: c.zp}); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%s %d: long dst: %v", c.name, n, err)
			}
		}
	}
}

func TestPlain(t *testing.T) {
	src := sample(8192, 1)
	dst := make([]byte, 5000)
	if err := Decompress(Shifted, dst, src, Options{}); err != nil || !bytes.Equal(dst, src[:5000]) {
		t.Fatalf("shifted: %v", err)
	}
	if err := Decompress(Shifted, dst[:100], src, Options{Skip: 10}); err != nil || !bytes.Equal(dst[:100], src[10:110]) {
		t.Fatalf("shifted skip: %v", err)
	}
	if err := Decompress(Shifted, make([]byte, 9000), src, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("shifted overlong: %v", err)
	}
	// Interlaced: logical data starting at block offset 1000 of a 4096
	// block is stored rotated: its first 3096 bytes at the end of the
	// block, the rest at its start.
	bs := 4096
	logical := sample(bs, 2)
	ofs := 1000
	cur := bs - ofs
	block := make([]byte, bs)
	copy(block[bs-cur:], logical[:cur])
	copy(block, logical[cur:])
	out := make([]byte, bs)
	if err := Decompress(Interlaced, out, block, Options{BlockSize: bs, InterlacedOffset: ofs}); err != nil || !bytes.Equal(out, logical) {
		t.Fatalf("interlaced: %v", err)
	}
	out = out[:500]
	if err := Decompress(Interlaced, out, block, Options{BlockSize: bs, InterlacedOffset: ofs, Skip: 3000}); err != nil || !bytes.Equal(out, logical[3000:3500]) {
		t.Fatalf("interlaced skip: %v", err)
	}
	// Offset 0 is a plain copy.
	if err := Decompress(Interlaced, out, logical, Options{BlockSize: bs}); err != nil || !bytes.Equal(out, logical[:500]) {
		t.Fatalf("interlaced at 0: %v", err)
	}
}

func TestErrors(t *testing.T) {
	if err := Decompress(LZMA, make([]byte, 10), []byte{1, 2, 3}, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("lzma: %v", err)
	}
	if err := Decompress(Alg(9), make([]byte, 10), []byte{1}, Options{}); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("alg 9: %v", err)
	}
	if err := Decompress(LZ4, make([]byte, 10), make([]byte, 4096), Options{ZeroPadding: true}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("all-zero pcluster: %v", err)
	}
	if err := Decompress(Zstd, make([]byte, MaxDecodedSize+1), []byte{1}, Options{}); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("oversized dst: %v", err)
	}
	if err := Decompress(Zstd, make([]byte, 1), make([]byte, MaxPclusterSize+1), Options{}); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("oversized src: %v", err)
	}
	// Zero padding must end inside the first block.
	data0 := sample(3000, 9)
	padded := append(make([]byte, 4096), tailAlign(lz4Raw(t, data0), 4096)...)
	if err := Decompress(LZ4, make([]byte, 3000), padded, Options{ZeroPadding: true, BlockSize: 4096}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("padding past the first block: %v", err)
	}
	if err := Decompress(LZ4, make([]byte, 3000), padded[4096:], Options{ZeroPadding: true, BlockSize: 4096}); err != nil {
		t.Fatalf("padding in the first block: %v", err)
	}
	// Truncated streams.
	data := sample(20000, 3)
	for _, c := range []struct {
		alg Alg
		src []byte
	}{{LZ4, lz4Raw(t, data)}, {Deflate, deflateRaw(t, data)}, {Zstd, zstdFrame(t, data)}} {
		for _, cut := range []int{1, 2, len(c.src) / 2} {
			err := Decompress(c.alg, make([]byte, len(data)), c.src[:len(c.src)-cut], Options{ZeroPadding: true})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%v truncated by %d: %v", c.alg, cut, err)
			}
		}
	}
}

// TestLZ4Overlap covers matches that overlap their own output (offset <
// length), including offset 1 runs.
func TestLZ4Overlap(t *testing.T) {
	data := append(bytes.Repeat([]byte{'a'}, 1000), bytes.Repeat([]byte("xyz"), 500)...)
	src := lz4Raw(t, data)
	dst := make([]byte, len(data))
	if err := Decompress(LZ4, dst, src, Options{ZeroPadding: true}); err != nil || !bytes.Equal(dst, data) {
		t.Fatalf("%v", err)
	}
}
