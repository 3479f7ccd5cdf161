// Package layered makes layered multi-blob EROFS images with ishare
// fingerprint xattrs for tests and benchmarks, from what Debian's
// mkfs.erofs 1.5 can produce (it has neither multi-layer output nor
// --xattr-inode-digest):
//
//   - Build tags every regular file of the tree with a placeholder
//     "user.f" xattr holding "sha256:" + the file's raw SHA-256, runs
//     mkfs.erofs --blobdev --chunksize, rewrites each placeholder entry in
//     place into the fingerprint form mkfs.erofs >= 1.9 writes (long prefix
//     #0 "user.fingerprint" with an empty suffix, same 44 entry bytes),
//     appends the long-prefix table and sets XATTR_PREFIXES/ISHARE_XATTRS;
//   - it then splits the single blob by top-level directory: the chunks of
//     files under layers[k] go, in walk order, into blob k+1, so a layer
//     built from the same files is byte-identical in every image; the
//     primary gets a new device table with sha256 tags.
package layered

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

// Result names the files written: the primary first, then one blob per layer.
type Result struct {
	Files []string
}

const (
	placeholder = "user.f"
	prefixInfix = "fingerprint" // long prefix #0 = "user." + "fingerprint"
	chunkSize   = 65536
)

// Build makes outDir/primary.erofs and outDir/layerN.blob from tree, whose
// top-level directories named in layers become the layers (every file must
// be under one of them).
func Build(tree, outDir string, layers []string, fingerprints bool) (*Result, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}
	if fingerprints {
		if err := tagTree(tree); err != nil {
			return nil, err
		}
	}
	tmpP, tmpB := filepath.Join(outDir, "mkfs.erofs"), filepath.Join(outDir, "mkfs.blob")
	cmd := exec.Command("mkfs.erofs", "--blobdev="+tmpB, fmt.Sprintf("--chunksize=%d", chunkSize), tmpP, tree)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.erofs: %v\n%s", err, out)
	}
	defer os.Remove(tmpP)
	defer os.Remove(tmpB)
	prim, err := os.ReadFile(tmpP)
	if err != nil {
		return nil, err
	}
	blob, err := os.ReadFile(tmpB)
	if err != nil {
		return nil, err
	}
	if fingerprints {
		if prim, err = rewriteFingerprints(prim, blob); err != nil {
			return nil, err
		}
	}
	return split(prim, blob, outDir, layers)
}

// tagTree sets the placeholder xattr on every non-empty regular file.
func tagTree(tree string) error {
	return filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil || len(b) == 0 {
			return err
		}
		sum := sha256.Sum256(b)
		return unix.Setxattr(p, placeholder, append([]byte("sha256:"), sum[:]...), 0)
	})
}

func open(prim, blob []byte) (*erofs.Image, error) {
	return erofs.Open(bytes.NewReader(prim), int64(len(prim)),
		erofs.WithDevices(erofs.Dev{R: bytes.NewReader(blob), Size: int64(len(blob))}))
}

// rewriteFingerprints turns every placeholder entry into a fingerprint entry
// and adds the prefix table and feature bits.
func rewriteFingerprints(prim, blob []byte) ([]byte, error) {
	img, err := open(prim, blob)
	if err != nil {
		return nil, err
	}
	n := 0
	err = img.Walk(func(path string, ino *erofs.Inode, d erofs.Dirent) error {
		xs, err := img.Xattrs(ino)
		if err != nil {
			return err
		}
		for _, x := range xs {
			if x.Name != placeholder {
				continue
			}
			if len(x.Value) != 39 {
				return fmt.Errorf("%s: placeholder value %d bytes", path, len(x.Value))
			}
			e := prim[x.Off : x.Off+44]
			if e[0] != 1 || e[1] != 1 || e[4] != 'f' {
				return fmt.Errorf("%s: unexpected placeholder entry % x", path, e[:8])
			}
			val := append([]byte(nil), x.Value...)
			e[0], e[1] = 0, 0x80 // no suffix, long prefix #0
			binary.LittleEndian.PutUint16(e[2:], 39)
			copy(e[4:], val)
			e[43] = 0
			n++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	bs := img.BlockSize()
	pblocks := (int64(len(prim)) + bs - 1) / bs
	out := make([]byte, (pblocks+1)*bs)
	copy(out, prim)
	// one long prefix record: le16 len, base index 1 ("user."), infix
	rec := out[pblocks*bs:]
	binary.LittleEndian.PutUint16(rec, uint16(1+len(prefixInfix)))
	rec[2] = 1
	copy(rec[3:], prefixInfix)
	le := binary.LittleEndian
	const so = erofs.SuperblockOffset
	s := out[so:]
	le.PutUint32(s[0x24:], uint32(pblocks+1))
	le.PutUint32(s[0x08:], le.Uint32(s[0x08:])|erofs.CompatIshareXattrs)
	le.PutUint32(s[0x50:], le.Uint32(s[0x50:])|erofs.IncompatXattrPrefix)
	s[0x5B] = 1
	le.PutUint32(s[0x5C:], uint32(pblocks*bs/4))
	s[0x69] = 0
	if img.SB.HasCompat(erofs.CompatSbChksum) {
		le.PutUint32(s[4:], erofs.SuperblockChecksum(out, img.SB.BlkSzBits))
	}
	if n == 0 {
		return nil, fmt.Errorf("no fingerprint placeholders found")
	}
	return out, nil
}

// split moves each layer's chunks into its own blob.
func split(prim, blob []byte, outDir string, layers []string) (*Result, error) {
	img, err := open(prim, blob)
	if err != nil {
		return nil, err
	}
	sb := img.SB
	if sb.NumDevices() != 1 {
		return nil, fmt.Errorf("want one --blobdev device, got %d", sb.NumDevices())
	}
	bs := img.BlockSize()
	pieces := make([][]byte, len(layers))
	err = img.Walk(func(path string, ino *erofs.Inode, d erofs.Dirent) error {
		if ino.Layout != erofs.LayoutChunkBased || ino.Size == 0 {
			return nil
		}
		top, _, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
		k := -1
		for i, l := range layers {
			if l == top {
				k = i
			}
		}
		if k < 0 {
			return fmt.Errorf("%s: not under a layer directory", path)
		}
		if ino.ChunkFormat&erofs.ChunkFormatIndexes == 0 {
			return fmt.Errorf("%s: block-map chunks, want chunk indexes", path)
		}
		cs := int64(1) << ino.ChunkBits
		cb := cs / bs
		nch := (ino.Size + cs - 1) / cs
		start := (ino.DataOff + 7) &^ 7
		for i := int64(0); i < nch; i++ {
			e := prim[start+i*8 : start+i*8+8]
			blk := int64(binary.LittleEndian.Uint32(e[4:]))
			if blk == 0xFFFFFFFF {
				continue
			}
			nb := min(cb, (ino.Size-i*cs+bs-1)/bs)
			newBlk := int64(len(pieces[k])) / bs
			data := make([]byte, nb*bs)
			copy(data, blob[min(blk*bs, int64(len(blob))):min((blk+nb)*bs, int64(len(blob)))])
			pieces[k] = append(pieces[k], data...)
			binary.LittleEndian.PutUint16(e[2:], uint16(k+1))
			binary.LittleEndian.PutUint32(e[4:], uint32(newBlk))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	pblocks := (int64(len(prim)) + bs - 1) / bs
	toff := pblocks * bs
	out := make([]byte, toff+bs)
	copy(out, prim)
	res := &Result{Files: []string{filepath.Join(outDir, "primary.erofs")}}
	for k, piece := range pieces {
		if len(piece) == 0 {
			piece = make([]byte, bs) // an empty layer still needs a device
			pieces[k] = piece
		}
		name := filepath.Join(outDir, fmt.Sprintf("layer%d.blob", k+1))
		if err := os.WriteFile(name, piece, 0o644); err != nil {
			return nil, err
		}
		res.Files = append(res.Files, name)
		var s erofs.DeviceSlot
		s.Blocks = uint64(int64(len(piece)) / bs)
		sum := sha256.Sum256(piece)
		copy(s.Tag[:], hex.EncodeToString(sum[:]))
		erofs.PutDeviceSlot(out[toff+int64(k)*erofs.DeviceSlotSize:], s)
	}
	le := binary.LittleEndian
	const so = erofs.SuperblockOffset
	le.PutUint32(out[so+0x24:], uint32(pblocks+1))
	le.PutUint16(out[so+0x56:], uint16(len(layers)))
	le.PutUint16(out[so+0x58:], uint16(toff/erofs.DeviceSlotSize))
	if sb.HasCompat(erofs.CompatSbChksum) {
		le.PutUint32(out[so+4:], erofs.SuperblockChecksum(out, sb.BlkSzBits))
	}
	if err := os.WriteFile(res.Files[0], out, 0o644); err != nil {
		return nil, err
	}
	return res, nil
}
