// Package multiblob makes multi-device EROFS images for tests and the demo
// from what Debian's mkfs.erofs 1.5 can produce: a primary built with
// --blobdev=B --chunksize=N (one all-zero slot, every chunk on device 1).
// Split cuts B into n pieces at chunk boundaries, re-targets every chunk
// index to (piece, block in piece), and appends a new n-slot device table to
// the primary in one of three layouts: all-zero slots (as 1.5 writes them),
// contiguous uniaddrs (as erofs-utils >= 1.7 writes them) or 512 KiB-aligned
// uniaddrs with holes (as nydus writes them). It is the stand-in for the
// merge command until that exists, and reads images with package erofs.
package multiblob

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

// Layouts of the written device table.
const (
	LayoutZero       = "zero"       // tag, blocks and uniaddr all 0
	LayoutContiguous = "contiguous" // uniaddr = end of the previous device
	LayoutAligned    = "aligned"    // uniaddr aligned to Align, leaving holes
)

// Options for Split.
type Options struct {
	N          int    // number of blob pieces (>= 1)
	Layout     string // LayoutZero, LayoutContiguous or LayoutAligned
	Align      int64  // bytes, for LayoutAligned (default 512 KiB)
	SHA256Tags bool   // write each piece's sha256 as its slot tag
	UUIDTags   []string
}

// Result names the files written.
type Result struct {
	Primary string
	Blobs   []string
	Slots   []erofs.DeviceSlot
}

// Split reads primaryPath and blobPath and writes primary.erofs and
// blob1..blobN into outDir.
func Split(primaryPath, blobPath, outDir string, o Options) (*Result, error) {
	if o.N < 1 || o.N > 16 {
		return nil, fmt.Errorf("multiblob: n=%d, want 1..16", o.N)
	}
	prim, err := os.ReadFile(primaryPath)
	if err != nil {
		return nil, err
	}
	blob, err := os.ReadFile(blobPath)
	if err != nil {
		return nil, err
	}
	img, err := erofs.Open(bytes.NewReader(prim), int64(len(prim)),
		erofs.WithDevices(erofs.Dev{R: bytes.NewReader(blob), Size: int64(len(blob))}))
	if err != nil {
		return nil, fmt.Errorf("multiblob: %s: %w", primaryPath, err)
	}
	sb := img.SB
	if sb.NumDevices() != 1 {
		return nil, fmt.Errorf("multiblob: %s has %d extra devices, want a single --blobdev image", primaryPath, sb.NumDevices())
	}
	bs := sb.BlockSize()
	blobBlocks := (int64(len(blob)) + bs - 1) / bs
	type entry struct {
		off   int64 // byte offset of the 8-byte index in prim
		blk   int64
		nblks int64
	}
	var entries []entry
	chunkBlocks := int64(0)
	err = img.Walk(func(path string, ino *erofs.Inode, d erofs.Dirent) error {
		if ino.Layout != erofs.LayoutChunkBased || ino.Size == 0 {
			return nil
		}
		if ino.ChunkFormat&erofs.ChunkFormatIndexes == 0 {
			return fmt.Errorf("%s: block-map chunks, want chunk indexes (--blobdev)", path)
		}
		cb := int64(1) << ino.ChunkBits / bs
		if chunkBlocks != 0 && cb != chunkBlocks {
			return fmt.Errorf("%s: mixed chunk sizes", path)
		}
		chunkBlocks = cb
		n := (ino.Size + (int64(1) << ino.ChunkBits) - 1) >> ino.ChunkBits
		start := (ino.DataOff + 7) &^ 7
		for i := int64(0); i < n; i++ {
			off := start + i*8
			e := prim[off : off+8]
			lo := binary.LittleEndian.Uint32(e[4:])
			if lo == 0xFFFFFFFF {
				continue
			}
			if id := binary.LittleEndian.Uint16(e[2:]); id != 1 {
				return fmt.Errorf("%s: chunk %d on device %d, want 1", path, i, id)
			}
			rem := ino.Size - i<<ino.ChunkBits
			nb := min(cb, (rem+bs-1)/bs)
			entries = append(entries, entry{off: off, blk: int64(lo), nblks: nb})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("multiblob: %w", err)
	}
	if blobBlocks < int64(o.N) {
		return nil, fmt.Errorf("multiblob: blob has %d blocks, too few for %d pieces", blobBlocks, o.N)
	}
	// Cut points: near k/N of the blob, moved forward to the first block no
	// chunk straddles (a file's last chunk can be shorter than the chunk size,
	// so chunk starts are not all multiples of it).
	inside := map[int64]bool{} // blocks that are not the first block of a chunk
	for _, e := range entries {
		for b := e.blk + 1; b < e.blk+e.nblks; b++ {
			inside[b] = true
		}
	}
	bounds := make([]int64, o.N+1)
	for k := 1; k < o.N; k++ {
		b := max(int64(k)*blobBlocks/int64(o.N), bounds[k-1]+1)
		for inside[b] {
			b++
		}
		if b >= blobBlocks {
			return nil, fmt.Errorf("multiblob: cannot cut the blob into %d pieces", o.N)
		}
		bounds[k] = b
	}
	bounds[o.N] = blobBlocks
	for _, e := range entries {
		k := 0
		for k < o.N-1 && e.blk >= bounds[k+1] {
			k++
		}
		if e.blk+e.nblks > bounds[k+1] {
			return nil, fmt.Errorf("multiblob: chunk at block %d straddles piece boundary %d", e.blk, bounds[k+1])
		}
		binary.LittleEndian.PutUint16(prim[e.off+2:], uint16(k+1))
		binary.LittleEndian.PutUint32(prim[e.off+4:], uint32(e.blk-bounds[k]))
	}
	// Append one block holding the new device table.
	pblocks := (int64(len(prim)) + bs - 1) / bs
	toff := pblocks * bs
	if toff/erofs.DeviceSlotSize > 0xFFFF {
		return nil, fmt.Errorf("multiblob: primary too large (%d bytes) for an appended device table", len(prim))
	}
	out := make([]byte, toff+bs)
	copy(out, prim)
	res := &Result{Primary: filepath.Join(outDir, "primary.erofs")}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}
	align := o.Align
	if align == 0 {
		align = 512 << 10
	}
	next := pblocks + 1
	for k := 0; k < o.N; k++ {
		piece := blob[bounds[k]*bs : min(bounds[k+1]*bs, int64(len(blob)))]
		name := filepath.Join(outDir, fmt.Sprintf("blob%d", k+1))
		if err := os.WriteFile(name, piece, 0o644); err != nil {
			return nil, err
		}
		res.Blobs = append(res.Blobs, name)
		var s erofs.DeviceSlot
		nb := uint64(bounds[k+1] - bounds[k])
		switch o.Layout {
		case LayoutZero:
		case LayoutContiguous:
			s.Blocks, s.UniAddr = nb, uint64(next)
		case LayoutAligned:
			a := align / bs
			start := (next + a - 1) / a * a
			s.Blocks, s.UniAddr = nb, uint64(start)
		default:
			return nil, fmt.Errorf("multiblob: unknown layout %q", o.Layout)
		}
		next = int64(s.UniAddr) + int64(nb)
		if o.SHA256Tags {
			sum := sha256.Sum256(piece)
			copy(s.Tag[:], hex.EncodeToString(sum[:]))
		} else if k < len(o.UUIDTags) {
			copy(s.Tag[:], o.UUIDTags[k])
		}
		erofs.PutDeviceSlot(out[toff+int64(k)*erofs.DeviceSlotSize:], s)
		res.Slots = append(res.Slots, s)
	}
	le := binary.LittleEndian
	const so = erofs.SuperblockOffset
	le.PutUint32(out[so+0x24:], uint32(pblocks+1))
	le.PutUint16(out[so+0x56:], uint16(o.N))
	le.PutUint16(out[so+0x58:], uint16(toff/erofs.DeviceSlotSize))
	// The old slot at the original devt_slotoff is left as it was (all zero).
	if sb.HasCompat(erofs.CompatSbChksum) {
		le.PutUint32(out[so+4:], erofs.SuperblockChecksum(out, sb.BlkSzBits))
	}
	if err := os.WriteFile(res.Primary, out, 0o644); err != nil {
		return nil, err
	}
	return res, nil
}
