package gzran

import (
	"bytes"
	"compress/gzip"
	"io"
	"testing"
)

type gzCase struct {
	name string
	gz   []byte
	data []byte
}

func cases(t *testing.T) []gzCase {
	data := testData(2<<20+12345, 1)
	small := testData(100<<10, 2)
	var cs []gzCase
	add := func(name string, gz, d []byte) { cs = append(cs, gzCase{name, gz, d}) }
	add("gzip-1", tool(t, data, "gzip", "-1", "-c"), data)
	add("gzip-6", tool(t, data, "gzip", "-6", "-c"), data)
	add("gzip-9", tool(t, data, "gzip", "-9", "-c", "-n"), data)
	add("pigz", tool(t, data, "pigz", "-c", "-p", "2", "-b", "128"), data)
	add("pigz-i", tool(t, data, "pigz", "-c", "-i", "-p", "2", "-b", "128"), data)
	add("go-gzip", goGzip(t, data, gzip.DefaultCompression, "name.tar"), data)
	add("go-gzip-huffman", goGzip(t, data, gzip.HuffmanOnly, ""), data)
	add("klauspost-1", kGzip(t, data, 1), data)
	add("klauspost-9", kGzip(t, data, 9), data)
	add("klauspost-stateless", kGzip(t, data, -3), data)
	// concatenated members, an empty member, zero padding
	var multi, mdata []byte
	for i, part := range [][]byte{data[:1<<20], {}, small, data[1<<20:]} {
		switch i % 3 {
		case 0:
			multi = append(multi, tool(t, part, "gzip", "-c")...)
		case 1:
			multi = append(multi, goGzip(t, part, 5, "")...)
		case 2:
			multi = append(multi, kGzip(t, part, 6)...)
		}
		mdata = append(mdata, part...)
	}
	add("multi", multi, mdata)
	add("multi-padded", append(append([]byte(nil), multi...), make([]byte, 1000)...), mdata)
	add("empty", tool(t, nil, "gzip", "-c"), []byte{})
	add("tiny", tool(t, []byte("x"), "gzip", "-c"), []byte("x"))
	return cs
}

func TestBuildAndServe(t *testing.T) {
	for _, c := range cases(t) {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := NewBuilder(bytes.NewReader(c.gz), 64<<10)
			out, err := io.ReadAll(b)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, c.data) {
				t.Fatalf("Builder output differs (%d vs %d bytes)", len(out), len(c.data))
			}
			ix, err := b.Index()
			if err != nil {
				t.Fatal(err)
			}
			if ix.Size != int64(len(c.data)) || ix.CompSize != int64(len(c.gz)) {
				t.Fatalf("Size %d CompSize %d, want %d %d", ix.Size, ix.CompSize, len(c.data), len(c.gz))
			}
			if err := ix.Validate(); err != nil {
				t.Fatal(err)
			}
			if len(c.data) > 1<<20 && len(ix.Points) < 5 {
				t.Fatalf("only %d points", len(ix.Points))
			}
			bits := 0
			for _, p := range ix.Points {
				if p.Bits != 0 {
					bits++
				}
			}
			t.Logf("%d points (%d with bits), %d -> %d bytes", len(ix.Points), bits, len(c.gz), len(c.data))
			serveAll(t, c.gz, ix, c.data)

			// through zinfo + meta, and through zinfo alone (size unknown)
			var z bytes.Buffer
			if err := ix.WriteZinfo(&z); err != nil {
				t.Fatal(err)
			}
			if want := zinfoHeaderSize + len(ix.Points)*zinfoPointSize; z.Len() != want {
				t.Fatalf("zinfo %d bytes, want %d", z.Len(), want)
			}
			zx, err := ReadZinfo(bytes.NewReader(z.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			if zx.Size != -1 || zx.CompSize != -1 || zx.SpanCRC != nil || zx.Span != 64<<10 {
				t.Fatalf("zinfo index: %+v", zx)
			}
			r, err := NewReader(bytes.NewReader(c.gz), int64(len(c.gz)), zx, Options{})
			if err != nil {
				t.Fatal(err)
			}
			checkReads(t, r, zx, c.data, 2)
			if err := zx.UnmarshalMeta(ix.MarshalMeta()); err != nil {
				t.Fatal(err)
			}
			if zx.Size != ix.Size || zx.CompSize != ix.CompSize || len(zx.SpanCRC) != len(ix.SpanCRC) {
				t.Fatalf("meta round trip: %d %d %d", zx.Size, zx.CompSize, len(zx.SpanCRC))
			}
			r, err = NewReader(bytes.NewReader(c.gz), int64(len(c.gz)), zx, Options{CacheBytes: -1})
			if err != nil {
				t.Fatal(err)
			}
			checkReads(t, r, zx, c.data, 3)
		})
	}
}
