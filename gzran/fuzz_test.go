package gzran

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
)

func smallGzips(t testing.TB) [][]byte {
	d := testData(40<<10, 11)
	return [][]byte{
		kGzip(t, d, 1),
		goGzip(t, d[:5000], 9, "n"),
		append(kGzip(t, d[:100], 0), kGzip(t, d[100:300], 6)...),
		append(kGzip(t, nil, 6), 0, 0),
	}
}

// FuzzBuild: Build never panics; whenever it succeeds, a Reader over its
// index (with and without span CRCs, and through zinfo) serves exactly the
// bytes the Builder produced.
func FuzzBuild(f *testing.F) {
	for _, g := range smallGzips(f) {
		f.Add(g)
	}
	f.Add([]byte{0x1f, 0x8b, 8, 0x1f, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		bl := NewBuilder(bytes.NewReader(b), MinSpan)
		out, err := io.ReadAll(bl)
		if err != nil {
			return
		}
		ix, err := bl.Index()
		if err != nil {
			t.Fatalf("Index after clean EOF: %v", err)
		}
		if ix.Size != int64(len(out)) || ix.CompSize != int64(len(b)) {
			t.Fatalf("sizes %d %d, want %d %d", ix.Size, ix.CompSize, len(out), len(b))
		}
		var z bytes.Buffer
		if err := ix.WriteZinfo(&z); err != nil {
			t.Fatal(err)
		}
		zx, err := ReadZinfo(&z)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range []*Index{ix, zx} {
			r, err := NewReader(bytes.NewReader(b), int64(len(b)), x, Options{segSize: 4096})
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(out)+1)
			n, err := r.ReadAt(got, 0)
			if n != len(out) || err != io.EOF || !bytes.Equal(got[:n], out) {
				t.Fatalf("ReadAt: %d, %v (want %d bytes)", n, err, len(out))
			}
			for _, p := range x.Points {
				if p.Out < int64(len(out)) {
					k, err := r.ReadAt(got[:1], p.Out)
					if k != 1 || got[0] != out[p.Out] {
						t.Fatalf("ReadAt(1, %d): %d %v", p.Out, k, err)
					}
				}
			}
		}
	})
}

// FuzzReadZinfo: no panic; an accepted zinfo validates, writes back the
// same bytes (windows beyond the data aside) and a Reader over garbage
// source bytes fails cleanly.
func FuzzReadZinfo(f *testing.F) {
	for _, g := range smallGzips(f)[:2] {
		ix, err := Build(bytes.NewReader(g), MinSpan)
		if err != nil {
			f.Fatal(err)
		}
		var z bytes.Buffer
		ix.WriteZinfo(&z)
		f.Add(z.Bytes())
	}
	f.Add(binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint32(nil, ^uint32(0)), 4<<20))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, err := ReadZinfo(bytes.NewReader(b))
		if err != nil {
			return
		}
		if err := ix.Validate(); err != nil {
			t.Fatalf("accepted zinfo does not validate: %v", err)
		}
		if len(b) != zinfoHeaderSize+len(ix.Points)*zinfoPointSize {
			t.Fatalf("accepted %d bytes for %d points", len(b), len(ix.Points))
		}
		src := bytes.Repeat([]byte{0x55}, int(min(ix.Points[len(ix.Points)-1].In+100, 64<<10)))
		if r, err := NewReader(bytes.NewReader(src), int64(len(src)), ix, Options{}); err == nil {
			r.ReadAt(make([]byte, 100), 0)
		}
	})
}

// FuzzUnmarshalMeta: no panic; accepted metas leave a valid index and
// re-marshal to the same bytes.
func FuzzUnmarshalMeta(f *testing.F) {
	g := smallGzips(f)[0]
	ix, err := Build(bytes.NewReader(g), MinSpan)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ix.MarshalMeta())
	x := *ix
	x.SpanCRC = nil
	f.Add(x.MarshalMeta())
	f.Add([]byte(metaMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		y := Index{Points: ix.Points, Size: -1, CompSize: -1, Span: 1}
		if err := y.UnmarshalMeta(b); err != nil {
			if y.Size != -1 || y.Span != 1 {
				t.Fatal("index changed by a failed UnmarshalMeta")
			}
			return
		}
		if err := y.Validate(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(y.MarshalMeta(), b) {
			t.Fatal("re-marshal differs")
		}
	})
}
