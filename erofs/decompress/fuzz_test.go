package decompress

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// FuzzDecompress feeds arbitrary pclusters to every algorithm. Seeds: the
// streams of the unit tests plus real mkfs.erofs pclusters in
// testdata/fuzz/FuzzDecompress (written by zmap's TestWriteDecompressSeeds).
func FuzzDecompress(f *testing.F) {
	for _, n := range []int{10, 5000, 70000} {
		data := sample(n, int64(n))
		f.Add(byte(LZ4), byte(1), uint16(0), uint32(n), tailAlign(lz4Raw(f, data), 4096))
		f.Add(byte(LZ4), byte(0), uint16(3), uint32(n-3), append(lz4Raw(f, data), 1, 2, 3))
		f.Add(byte(Deflate), byte(1), uint16(0), uint32(n), tailAlign(deflateRaw(f, data), 4096))
		f.Add(byte(Zstd), byte(3), uint16(5), uint32(n/2), tailAlign(zstdFrame(f, data), 4096))
	}
	f.Add(byte(Interlaced), byte(0), uint16(7), uint32(100), sample(4096, 1))
	f.Add(byte(Shifted), byte(0), uint16(0), uint32(4096), sample(4096, 1))

	f.Fuzz(func(t *testing.T, alg, flags byte, skip uint16, dstLen uint32, src []byte) {
		dst := make([]byte, dstLen%(1<<20))
		o := Options{
			ZeroPadding:      flags&1 != 0,
			Partial:          flags&2 != 0,
			Skip:             int(skip),
			BlockSize:        4096,
			InterlacedOffset: int(flags >> 2),
		}
		wd := time.AfterFunc(5*time.Second, func() { panic(fmt.Sprintf("Decompress hung: alg %d len %d", alg%6, len(dst))) })
		err := Decompress(Alg(alg%6), dst, src, o)
		wd.Stop()
		if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) {
			t.Fatalf("error %v wraps neither ErrCorrupt nor ErrUnsupported", err)
		}
	})
}
