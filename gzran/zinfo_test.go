package gzran

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func zinfoOf(t *testing.T, ix *Index) []byte {
	var z bytes.Buffer
	if err := ix.WriteZinfo(&z); err != nil {
		t.Fatal(err)
	}
	return z.Bytes()
}

func TestGarbageZinfo(t *testing.T) {
	data := testData(600<<10, 13)
	gz := kGzip(t, data, 6)
	ix, err := Build(bytes.NewReader(gz), MinSpan)
	if err != nil {
		t.Fatal(err)
	}
	if len(ix.Points) < 3 {
		t.Fatalf("%d points", len(ix.Points))
	}
	good := zinfoOf(t, ix)
	pt := func(b []byte, i int) []byte { return b[zinfoHeaderSize+i*zinfoPointSize:] }
	mod := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	for _, c := range []struct {
		name string
		b    []byte
		sub  string
	}{
		{"empty", nil, "truncated header"},
		{"short-header", good[:7], "truncated header"},
		{"no-points", mod(func(b []byte) { binary.LittleEndian.PutUint32(b, 0) })[:12], "no points"},
		{"zero-span", mod(func(b []byte) { binary.LittleEndian.PutUint64(b[4:], 0) }), "span 0"},
		{"huge-count", mod(func(b []byte) { binary.LittleEndian.PutUint32(b, ^uint32(0)) }), "truncated at point"},
		{"truncated-point", good[:len(good)-100], "truncated at point"},
		{"trailing", append(bytes.Clone(good), 0), "trailing bytes"},
		{"bits", mod(func(b []byte) { pt(b, 1)[16] = 8 }), "bits 8"},
		{"first-out", mod(func(b []byte) { binary.LittleEndian.PutUint64(pt(b, 0)[8:], 5) }), "first point at output 5"},
		{"out-order", mod(func(b []byte) { binary.LittleEndian.PutUint64(pt(b, 2)[8:], 1) }), "below previous"},
		{"in-order", mod(func(b []byte) { binary.LittleEndian.PutUint64(pt(b, 2)[0:], 3) }), "not above previous"},
		{"in-range", mod(func(b []byte) { binary.LittleEndian.PutUint64(pt(b, 1)[0:], 1<<63) }), "out of range"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadZinfo(bytes.NewReader(c.b))
			wantFormatError(t, err, "zinfo", c.sub)
		})
	}
	// A point whose offsets lie: reads fail (or, without CRCs, cannot be
	// told apart from data) but never panic.
	zx, err := ReadZinfo(bytes.NewReader(mod(func(b []byte) { binary.LittleEndian.PutUint64(pt(b, 1)[0:], uint64(len(gz)+10)) })))
	if err == nil {
		if _, err := NewReader(bytes.NewReader(gz), int64(len(gz)), zx, Options{}); err == nil {
			t.Fatal("point beyond the blob accepted")
		}
	}
}

func TestMeta(t *testing.T) {
	data := testData(500<<10, 14)
	gz := tool(t, data, "gzip", "-9", "-c")
	ix, err := Build(bytes.NewReader(gz), MinSpan)
	if err != nil {
		t.Fatal(err)
	}
	meta := ix.MarshalMeta()
	zx, _ := ReadZinfo(bytes.NewReader(zinfoOf(t, ix)))
	if err := zx.UnmarshalMeta(meta); err != nil {
		t.Fatal(err)
	}
	// another index's meta, a flipped byte, a cut
	other, _ := Build(bytes.NewReader(tool(t, data, "gzip", "-1", "-c")), MinSpan)
	zy, _ := ReadZinfo(bytes.NewReader(zinfoOf(t, other)))
	err = zy.UnmarshalMeta(meta)
	if len(other.Points) == len(ix.Points) {
		wantFormatError(t, err, "meta", "other points")
	} else {
		wantFormatError(t, err, "meta", "index of")
	}
	for i := 0; i < len(meta); i += 7 {
		b := bytes.Clone(meta)
		b[i] ^= 0x40
		if err := zx.UnmarshalMeta(b); err == nil {
			t.Fatalf("flip at %d accepted", i)
		}
	}
	for _, k := range []int{0, 10, len(meta) - 1} {
		var fe *FormatError
		if err := zx.UnmarshalMeta(meta[:k]); !errors.As(err, &fe) {
			t.Fatalf("cut at %d: %v", k, err)
		}
	}
	// a window changed: the meta no longer belongs
	zx.Points[1].Window = bytes.Clone(zx.Points[1].Window)
	zx.Points[1].Window[0] ^= 1
	wantFormatError(t, zx.UnmarshalMeta(meta), "meta", "other points")
}

// The blob shrinks or grows under a good index: errors, not wrong bytes.
func TestBlobMismatch(t *testing.T) {
	data := testData(800<<10, 15)
	gz := tool(t, data, "gzip", "-6", "-c")
	ix, err := Build(bytes.NewReader(gz), MinSpan)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewReader(bytes.NewReader(gz[:len(gz)-1]), int64(len(gz)-1), ix, Options{}); err == nil {
		t.Fatal("index for another blob size accepted")
	}
	x := *ix
	x.CompSize, x.SpanCRC = -1, nil
	last := ix.Points[len(ix.Points)-1].In
	cut := gz[:last+(int64(len(gz))-last)/2]
	r, err := NewReader(bytes.NewReader(cut), int64(len(cut)), &x, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, len(data))
	n, err := r.ReadAt(p, 0)
	if err == nil || err == io.EOF || !bytes.Equal(p[:n], data[:n]) {
		t.Fatalf("read over a cut blob: %d, %v", n, err)
	}
	var fe *FormatError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v is not a FormatError", err)
	}
	t.Log(err)
	// size unknown: found by decoding, fails on the cut blob
	x.Size = -1
	if _, err := NewReader(bytes.NewReader(cut), int64(len(cut)), &x, Options{}); err == nil {
		t.Fatal("size found on a cut blob")
	}
}
