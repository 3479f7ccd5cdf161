package erofs

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
)

// The images in testdata/lzma-*.erofs were made by mkfs.erofs 1.9.4 from a
// tree of four files that lzmaTree regenerates:
//
//	seq 1 20000 > seq; seq 7 3 60000 | head -c 70001 > odd
//	for i in $(seq 1 300); do echo "erofs lzma line $i erofs lzma"; done > text
//	printf tail > tiny
//	mkfs.erofs -T0 -zlzma,level=6 -C16384 -Eztailpacking lzma-4k.erofs src
//	mkfs.erofs -T0 -b512 -zlzma lzma-b512.erofs src
//	mkfs.erofs -T0 -zlzma -Eall-fragments lzma-frag.erofs src
func lzmaTree() map[string][]byte {
	var seq, odd, text bytes.Buffer
	for i := 1; i <= 20000; i++ {
		fmt.Fprintf(&seq, "%d\n", i)
	}
	for i := 7; i <= 60000 && odd.Len() < 70001; i += 3 {
		fmt.Fprintf(&odd, "%d\n", i)
	}
	for i := 1; i <= 300; i++ {
		fmt.Fprintf(&text, "erofs lzma line %d erofs lzma\n", i)
	}
	return map[string][]byte{"/seq": seq.Bytes(), "/odd": odd.Bytes()[:70001], "/text": text.Bytes(), "/tiny": []byte("tail")}
}

func TestMicroLZMA(t *testing.T) {
	want := lzmaTree()
	for _, name := range []string{"lzma-4k", "lzma-b512", "lzma-frag"} {
		t.Run(name, func(t *testing.T) {
			im := openFile(t, filepath.Join("testdata", name+".erofs"))
			for p, w := range want {
				ino, err := im.Lookup(p)
				if err != nil {
					t.Fatal(err)
				}
				got, err := im.ReadAll(ino, 1<<20)
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				if !bytes.Equal(got, w) {
					t.Fatalf("%s: %d bytes differ from the %d expected", p, len(got), len(w))
				}
				// Reads starting inside an extent (Skip) and partial ones.
				f, err := im.OpenFile(ino)
				if err != nil {
					t.Fatal(err)
				}
				for _, off := range []int64{1, 4095, 4097, 16385, int64(len(w)) - 3} {
					if off < 0 || off >= int64(len(w)) {
						continue
					}
					buf := make([]byte, 777)
					n, _ := f.ReadAt(buf, off)
					if !bytes.Equal(buf[:n], w[off:min(int(off)+777, len(w))]) {
						t.Fatalf("%s at %d: %d bytes differ", p, off, n)
					}
				}
			}
		})
	}
}
