package decompress

import (
	"bytes"
	"math/rand"
	"testing"

	"github.com/pierrec/lz4/v4"
)

func lz4Sample(tb testing.TB) (plain, block []byte) {
	rng := rand.New(rand.NewSource(1))
	words := []string{"erofs ", "block ", "device ", "layer ", "blob ", "\n", "nbd "}
	var b bytes.Buffer
	for b.Len() < 64<<10 {
		b.WriteString(words[rng.Intn(len(words))])
	}
	plain = b.Bytes()[:64<<10]
	block = make([]byte, lz4.CompressBlockBound(len(plain)))
	n, err := lz4.CompressBlock(plain, block, nil)
	if err != nil || n == 0 {
		tb.Fatal(err)
	}
	return plain, block[:n]
}

// TestLZ4FastAgrees: the fast path and the portable decoder agree, and the
// fast path refuses (so the portable one reports) on truncated or corrupt
// input and on a wrong output size.
func TestLZ4FastAgrees(t *testing.T) {
	plain, block := lz4Sample(t)
	a, b := make([]byte, len(plain)), make([]byte, len(plain))
	if !lz4Fast(a, block) {
		t.Fatal("fast path refused a valid block")
	}
	if err := lz4Block(b, block, false); err != nil || !bytes.Equal(a, plain) || !bytes.Equal(b, plain) {
		t.Fatalf("decoders disagree: %v", err)
	}
	if lz4Fast(make([]byte, len(plain)-1), block) || lz4Fast(make([]byte, len(plain)+1), block) {
		t.Fatal("fast path accepted a wrong output size")
	}
	if lz4Fast(a, block[:len(block)/2]) {
		t.Fatal("fast path accepted a truncated block")
	}
	rng := rand.New(rand.NewSource(2))
	for i := 0; i < 2000; i++ {
		c := append([]byte(nil), block...)
		c[rng.Intn(len(c))] ^= byte(1 + rng.Intn(255))
		out := make([]byte, len(plain))
		if lz4Fast(out, c) {
			// If the fast path accepts a mutated block the portable decoder
			// must produce the same bytes (both are valid LZ4 decodes).
			ref := make([]byte, len(plain))
			if err := lz4Block(ref, c, false); err == nil && !bytes.Equal(ref, out) {
				t.Fatalf("mutation %d: decoders disagree", i)
			}
		}
	}
}

func BenchmarkLZ4Portable(b *testing.B) {
	plain, block := lz4Sample(b)
	out := make([]byte, len(plain))
	b.SetBytes(int64(len(plain)))
	for i := 0; i < b.N; i++ {
		if err := lz4Block(out, block, false); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLZ4Fast(b *testing.B) {
	plain, block := lz4Sample(b)
	out := make([]byte, len(plain))
	b.SetBytes(int64(len(plain)))
	for i := 0; i < b.N; i++ {
		if !lz4Fast(out, block) {
			b.Fatal("refused")
		}
	}
}
