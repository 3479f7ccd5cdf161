package verify

import (
	"encoding/binary"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

// Limits the kernel applies to the compression configuration records when
// mounting (fs/erofs z_erofs_parse_cfgs and the per-algorithm config hooks;
// fsck.erofs applies the same through erofs-utils' z_erofs_parse_cfgs).
const (
	pclusterMaxSize   = 1 << 20       // Z_EROFS_PCLUSTER_MAX_SIZE
	lzmaMaxDictSize   = 8 * (1 << 20) // Z_EROFS_LZMA_MAX_DICT_SIZE
	lzmaMinDictSize   = 4096          // z_erofs_load_lzma_config
	deflateMaxWbits   = 15            // MAX_WBITS
	zstdMaxWindowLog  = 20 - 10       // ilog2(Z_EROFS_ZSTD_MAX_DICT_SIZE) - ZSTD_WINDOWLOG_ABSOLUTEMIN
	lz4CfgSize        = 14            // sizeof(struct z_erofs_lz4_cfgs)
	lzmaCfgSize       = 14            // sizeof(struct z_erofs_lzma_cfgs)
	deflateCfgSize    = 6             // sizeof(struct z_erofs_deflate_cfgs)
	zstdCfgSize       = 6             // sizeof(struct z_erofs_zstd_cfgs)
	comprCfgRecordHdr = 2             // __le16 length before each record
)

// comprCfgProblems returns what the kernel refuses to mount in the
// compression configuration records: each problem's offset and detail.
func comprCfgProblems(sb *erofs.Superblock) (offs []int64, details []string) {
	bad := func(off int64, format string, a ...any) {
		offs = append(offs, off)
		details = append(details, sprintf(format, a...))
	}
	le := binary.LittleEndian
	for _, c := range sb.ComprCfgs {
		d, off := c.Data, c.Off+comprCfgRecordHdr
		switch c.Alg {
		case 0: // LZ4
			if len(d) < lz4CfgSize {
				bad(c.Off, "lz4 config of %d bytes, the kernel needs %d", len(d), lz4CfgSize)
				continue
			}
			max := int(pclusterMaxSize >> sb.BlkSzBits)
			if n := int(le.Uint16(d[2:])); n > max {
				bad(off+2, "lz4 max_pclusterblks %d above %d (1 MiB)", n, max)
			}
		case 1: // LZMA
			if len(d) < lzmaCfgSize {
				bad(c.Off, "lzma config of %d bytes, the kernel needs %d", len(d), lzmaCfgSize)
				continue
			}
			if f := le.Uint16(d[4:]); f != 0 {
				bad(off+4, "lzma format %#x is not MicroLZMA (0)", f)
			}
			if ds := le.Uint32(d); ds > lzmaMaxDictSize || ds < lzmaMinDictSize {
				bad(off, "lzma dict_size %d outside [%d, %d]", ds, lzmaMinDictSize, lzmaMaxDictSize)
			}
		case 2: // DEFLATE
			if len(d) < deflateCfgSize {
				bad(c.Off, "deflate config of %d bytes, the kernel needs %d", len(d), deflateCfgSize)
				continue
			}
			if w := d[0]; w > deflateMaxWbits {
				bad(off, "deflate windowbits %d above %d", w, deflateMaxWbits)
			}
		case 3: // ZSTD
			if len(d) < zstdCfgSize {
				bad(c.Off, "zstd config of %d bytes, the kernel needs %d", len(d), zstdCfgSize)
				continue
			}
			if d[0] != 0 {
				bad(off, "zstd format %d is not 0", d[0])
			}
			if w := d[1]; w > zstdMaxWindowLog {
				bad(off+1, "zstd windowlog %d (window 2^%d) above %d (1 MiB)", w, int(w)+10, zstdMaxWindowLog)
			}
		}
	}
	return offs, details
}

// checkComprCfgs reports the compression configurations the kernel refuses.
func (c *checker) checkComprCfgs() {
	offs, details := comprCfgProblems(c.sb)
	for i := range offs {
		c.add(Problem{Off: offs[i], Rule: RuleComprCfg, Detail: details[i]})
	}
}
