package merge

import (
	"archive/tar"
	"bytes"
	"fmt"
	"testing"
)

// BenchmarkMergeTarGzip: one streaming pass over a 32 MiB tar.gz layer
// (tar entries, gzip checkpoint index, diffID) and the index written.
func BenchmarkMergeTarGzip(b *testing.B) {
	var ents []tarEnt
	for i := 0; i < 2000; i++ {
		n := 1000 + (i*7919)%30000
		data := make([]byte, n)
		for j := range data {
			data[j] = byte((j * i) ^ (j >> 3))
			if j%7 == 0 {
				data[j] = 'a' + byte(j%26)
			}
		}
		ents = append(ents, tarEnt{name: fmt.Sprintf("d%d/f%d", i%40, i), typ: tar.TypeReg, data: data})
	}
	t := &testing.T{}
	layer := gz(t, mkTar(t, ents))
	b.SetBytes(int64(len(layer)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var out memWriter
		if _, err := Merge(&out, []Layer{{Name: "l.tar.gz", R: bytes.NewReader(layer), Size: int64(len(layer))}}, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
