package zstdseek

import (
	"bytes"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// The streaming decoder allocates a frame's whole window up front: keep
// the windows mutated inputs may declare small so fuzzing stays fast.
var fuzzBuild = BuildOptions{MaxWindow: 1 << 20}

func fuzzSeeds(f *testing.F) [][]byte {
	data := testData(6000, 21)
	kb, frames := klausFrames(f, data, 1500)
	kn, _ := klausFrames(f, data[:3000], 1000, zstd.WithEncoderCRC(false))
	sizes := make([]int, len(frames))
	for i := range sizes {
		sizes[i] = min(1500, len(data)-i*1500)
	}
	seekable := appendSeekTable(bytes.Clone(kb), frames, sizes, nil)
	cli := zstdFile(f, data[:2000], "-3")
	chunked := bytes.Join([][]byte{skippable(0, []byte("toc")), kn, skippable(1, nil), cli}, nil)
	return [][]byte{kb, kn, seekable, cli, chunked, {}, {0x28, 0xb5, 0x2f, 0xfd}}
}

// readAllChecked reads r in uneven pieces; any bytes returned must equal want
// (nil want: only no panics).
func readAllChecked(t *testing.T, r *Reader, want []byte) {
	p := make([]byte, 3001)
	for off := int64(0); off < r.Size(); off += 2999 {
		n, err := r.ReadAt(p, off)
		if want != nil && n > 0 && !bytes.Equal(p[:n], want[off:off+int64(n)]) {
			t.Fatalf("wrong bytes at %d (err %v)", off, err)
		}
	}
}

func FuzzReadSeekTable(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, err := ReadSeekTable(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		if err := ix.Validate(); err != nil {
			t.Fatalf("ReadSeekTable returned an invalid index: %v", err)
		}
		r, err := NewReader(bytes.NewReader(b), ix, Options{MaxFrameDecode: 1 << 20})
		if err != nil {
			return
		}
		defer r.Close()
		// If the blob also decodes as a whole, the reads must agree with it.
		var want []byte
		bd := NewBuilderOptions(bytes.NewReader(b), fuzzBuild)
		if out, err := io.ReadAll(bd); err == nil && int64(len(out)) == ix.Size {
			want = out
		}
		readAllChecked(t, r, want)
	})
}

func FuzzUnmarshalBinary(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		if ix, err := Build(bytes.NewReader(s)); err == nil {
			bin, _ := ix.MarshalBinary()
			f.Add(bin)
		}
	}
	f.Add([]byte("ZSIX\x01\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var ix Index
		if err := ix.UnmarshalBinary(b); err != nil {
			return
		}
		if err := ix.Validate(); err != nil {
			t.Fatalf("accepted an invalid index: %v", err)
		}
		bin, err := ix.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var ix2 Index
		if err := ix2.UnmarshalBinary(bin); err != nil {
			t.Fatalf("round trip: %v", err)
		}
		if len(ix2.Frames) != len(ix.Frames) || ix2.Size != ix.Size || ix2.CompSize != ix.CompSize {
			t.Fatal("round trip differs")
		}
		for i := range ix.Frames {
			if ix.Frames[i] != ix2.Frames[i] {
				t.Fatalf("frame %d differs after round trip", i)
			}
		}
	})
}

func FuzzBuild(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		bd := NewBuilderOptions(bytes.NewReader(b), fuzzBuild)
		out, err := io.ReadAll(bd)
		if err != nil {
			return
		}
		ix, err := bd.Index()
		if err != nil {
			t.Fatalf("Index after EOF: %v", err)
		}
		if err := ix.Validate(); err != nil {
			t.Fatalf("Build returned an invalid index: %v", err)
		}
		if ix.Size != int64(len(out)) || ix.CompSize != int64(len(b)) {
			t.Fatalf("index sizes %d/%d, stream %d, blob %d", ix.Size, ix.CompSize, len(out), len(b))
		}
		// The Reader decodes each frame on its own: same bytes as the stream.
		r, err := NewReader(bytes.NewReader(b), ix, Options{MaxFrameDecode: 1 << 30})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		p := make([]byte, 3001)
		for off := int64(0); off < r.Size(); off += 2999 {
			n, err := r.ReadAt(p, off)
			if err != nil && err != io.EOF {
				t.Fatalf("ReadAt %d of a blob Build accepted: %v", off, err)
			}
			if !bytes.Equal(p[:n], out[off:off+int64(n)]) {
				t.Fatalf("wrong bytes at %d", off)
			}
		}
	})
}

func BenchmarkReadAt4K(b *testing.B) {
	data := testData(16<<20, 31)
	blob, _ := klausFrames(b, data, 256<<10)
	ix, err := Build(bytes.NewReader(blob))
	if err != nil {
		b.Fatal(err)
	}
	offs := make([]int64, 4096)
	for i := range offs {
		offs[i] = int64(i*7919*4096) % (ix.Size - 4096)
	}
	run := func(b *testing.B, opt Options, warm bool) {
		r, err := NewReader(bytes.NewReader(blob), ix, opt)
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		p := make([]byte, 4096)
		if warm {
			for off := int64(0); off < ix.Size; off += 4096 {
				r.ReadAt(p, off)
			}
		}
		b.SetBytes(4096)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := r.ReadAt(p, offs[i%len(offs)]); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("cold", func(b *testing.B) { run(b, Options{CacheBytes: -1}, false) })
	b.Run("warm", func(b *testing.B) { run(b, Options{CacheBytes: 32 << 20}, true) })
}
