package blobcache

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

// FileIdentity names an open file by device, inode and size.
func FileIdentity(f *os.File) (string, error) {
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return "path:" + f.Name(), nil
	}
	size := st.Size()
	if st.Mode()&os.ModeDevice != 0 {
		size, _ = f.Seek(0, io.SeekEnd)
	}
	return fmt.Sprintf("file:%d:%d:%d", sys.Dev, sys.Ino, size), nil
}

// BlobIdentity is the identity under which a blob's pages are cached: its
// slot tag when the tag is checked, else fileID.
//   - UUID tag: the blob must be an EROFS image whose own UUID is the tag
//     (what flatdev checks); identity = tag + size.
//   - sha256 tag: identity = tag + size. The tag is verified against the
//     content only with --verify-digests; without it, equal tags and sizes
//     are trusted as the image's own statement of the blob's content (the
//     kernel ignores tags in flatdev mode, so a mis-tagged blob is a broken
//     image either way).
func BlobIdentity(slot erofs.DeviceSlot, r io.ReaderAt, size int64, fileID string) string {
	switch slot.TagKind() {
	case erofs.TagUUID:
		sb, err := erofs.ReadSuperblock(r, size)
		if err != nil {
			return fileID
		}
		if got := hex.EncodeToString(sb.UUID[:]); !strings.EqualFold(got, slot.TagString()) {
			return fileID
		}
		return fmt.Sprintf("uuid:%s:%d", strings.ToLower(slot.TagString()), size)
	case erofs.TagSHA256:
		return fmt.Sprintf("sha256:%s:%d", strings.ToLower(slot.TagString()), size)
	}
	return fileID
}

// Fingerprint modes for FileSpans.
const (
	FingerprintOff     = "off"     // no content keys
	FingerprintXattr   = "xattr"   // use ishare fingerprint xattrs where present
	FingerprintCompute = "compute" // xattrs, else hash each uncompressed file at startup
)

// FileSpans walks img and returns the content-keyed spans of every input
// (index 0 the primary, i extra device i), for regular files with a
// fingerprint. Identities are scoped by domain: only readers given the same
// domain share content keys. Compressed and inline data are not keyed.
func FileSpans(img *erofs.Image, domain, mode string) ([][]Span, error) {
	n := img.SB.NumDevices()
	out := make([][]Span, n+1)
	if mode == FingerprintOff || mode == "" {
		return out, nil
	}
	err := img.Walk(func(path string, ino *erofs.Inode, d erofs.Dirent) error {
		if !ino.IsReg() || ino.Size == 0 || ino.Layout.Compressed() {
			return nil
		}
		fp, ok, err := img.Fingerprint(ino)
		if err != nil {
			return fmt.Errorf("%s: fingerprint: %w", path, err)
		}
		rs, err := img.DataRanges(ino)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if !ok && mode == FingerprintCompute {
			f, err := img.OpenFile(ino)
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			h := sha256.New()
			if _, err := io.Copy(h, io.NewSectionReader(f, 0, ino.Size)); err != nil {
				return fmt.Errorf("%s: hashing: %w", path, err)
			}
			fp, ok = append([]byte("sha256:"), h.Sum(nil)...), true
		}
		if !ok {
			return nil
		}
		id := fmt.Sprintf("%s\x00%x\x00%d", domain, fp, ino.Size)
		for _, r := range rs {
			if (r.Kind != erofs.KindFlat && r.Kind != erofs.KindChunk) || r.Compressed || r.InMetabox {
				continue
			}
			dev := r.Device
			if dev == 0 && n > 0 {
				continue // unified address: not one input file
			}
			if dev < 0 || dev > n {
				continue
			}
			out[dev] = append(out[dev], Span{Off: r.Phys, Len: r.Length, Logical: r.Logical, FileSize: ino.Size, Content: id})
		}
		return nil
	})
	return out, err
}
