package source

import (
	"bytes"
	"strings"
	"testing"
)

func TestChunkSums(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000) // 16000 bytes
	h := NewChunkHasher(4096)
	for off := 0; off < len(data); off += 1000 { // writes that straddle chunks
		h.Write(data[off:min(off+1000, len(data))])
	}
	cs := h.Sums()
	if cs.Size != int64(len(data)) || len(cs.Sums) != 4 {
		t.Fatalf("size %d, %d sums", cs.Size, len(cs.Sums))
	}
	b, _ := cs.MarshalBinary()
	var back ChunkSums
	if err := back.UnmarshalBinary(b); err != nil || back.Sums[3] != cs.Sums[3] {
		t.Fatalf("round trip: %v", err)
	}
	for _, bad := range [][]byte{b[:len(b)-1], append(append([]byte{}, b...), 0), []byte("junk")} {
		if err := new(ChunkSums).UnmarshalBinary(bad); err == nil {
			t.Errorf("accepted %d bytes", len(bad))
		}
	}
	var s chunkSums
	s.m = map[string]*ChunkSums{"oci:x": cs}
	if err := s.check("oci:x", int64(len(data)), 1, data[4096:12288]); err != nil {
		t.Fatalf("good chunks refused: %v", err)
	}
	if err := s.check("oci:x", int64(len(data)), 3, data[12288:]); err != nil {
		t.Fatalf("good tail refused: %v", err)
	}
	bad := append([]byte{}, data[4096:12288]...)
	bad[5000] ^= 1
	if err := s.check("oci:x", int64(len(data)), 1, bad); err == nil || !strings.Contains(err.Error(), "chunk 2") || s.fail != 1 {
		t.Fatalf("bad chunk: %v (fail %d)", err, s.fail)
	}
	if err := s.check("oci:other", 5, 0, []byte("hello")); err != nil {
		t.Fatalf("blob without sums: %v", err)
	}
}
