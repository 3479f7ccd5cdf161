package verify

import (
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

func TestComprCfgProblems(t *testing.T) {
	lz4 := func(maxBlks uint16) []byte {
		b := make([]byte, 14)
		le.PutUint16(b[2:], maxBlks)
		return b
	}
	lzma := func(dict uint32, format uint16) []byte {
		b := make([]byte, 14)
		le.PutUint32(b, dict)
		le.PutUint16(b[4:], format)
		return b
	}
	cases := []struct {
		name string
		bits uint8
		cfg  erofs.ComprCfg
		want string // "" none
	}{
		{"lz4-ok", 12, erofs.ComprCfg{Alg: 0, Data: lz4(256)}, ""},
		{"lz4-max-b512", 9, erofs.ComprCfg{Alg: 0, Data: lz4(2048)}, ""},
		{"lz4-too-large", 12, erofs.ComprCfg{Alg: 0, Data: lz4(257)}, "max_pclusterblks"},
		{"lz4-short", 12, erofs.ComprCfg{Alg: 0, Data: make([]byte, 4)}, "lz4 config of 4 bytes"},
		{"lzma-ok", 12, erofs.ComprCfg{Alg: 1, Data: lzma(8<<20, 0)}, ""},
		{"lzma-dict-large", 12, erofs.ComprCfg{Alg: 1, Data: lzma(8<<20+1, 0)}, "dict_size"},
		{"lzma-dict-small", 12, erofs.ComprCfg{Alg: 1, Data: lzma(4095, 0)}, "dict_size"},
		{"lzma-format", 12, erofs.ComprCfg{Alg: 1, Data: lzma(1<<20, 1)}, "format"},
		{"deflate-ok", 12, erofs.ComprCfg{Alg: 2, Data: []byte{15, 0, 0, 0, 0, 0}}, ""},
		{"deflate-wbits", 12, erofs.ComprCfg{Alg: 2, Data: []byte{16, 0, 0, 0, 0, 0}}, "windowbits"},
		{"zstd-ok", 12, erofs.ComprCfg{Alg: 3, Data: []byte{0, 10, 0, 0, 0, 0}}, ""},
		{"zstd-window", 12, erofs.ComprCfg{Alg: 3, Data: []byte{0, 11, 0, 0, 0, 0}}, "windowlog"},
		{"zstd-format", 12, erofs.ComprCfg{Alg: 3, Data: []byte{1, 0, 0, 0, 0, 0}}, "format"},
		{"zstd-short", 12, erofs.ComprCfg{Alg: 3, Data: []byte{0}}, "zstd config of 1 bytes"},
	}
	for _, c := range cases {
		sb := &erofs.Superblock{BlkSzBits: c.bits, ComprCfgs: []erofs.ComprCfg{c.cfg}}
		_, ds := comprCfgProblems(sb)
		got := strings.Join(ds, "; ")
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: problems %q, want %q", c.name, got, c.want)
		}
	}
}
