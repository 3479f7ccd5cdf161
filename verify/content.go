package verify

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"hash"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

// fingerprintPrefix is how mkfs.erofs --xattr-inode-digest writes the value.
const fingerprintPrefix = "sha256:"

// maxHoleHash bounds the zero bytes hashed for one file's fingerprint.
const maxHoleHash = 64 << 30

// checkXattrs decodes ino's xattrs and reports structural problems.
func (c *checker) checkXattrs(ino *erofs.Inode, path *pathNode) {
	if ino.XattrSize == 0 {
		return
	}
	_, err := c.img.Xattrs(ino)
	if err == nil {
		return
	}
	rule, off, space, detail := classify(err, RuleXattrDecode, ino.Off)
	ibodyEnd := ino.Off + int64(ino.ISize) + int64(ino.XattrSize)
	var fe *erofs.FormatError
	if errors.As(err, &fe) && (fe.Off < ino.Off || fe.Off >= ibodyEnd) && (rule == RuleXattrEntry || rule == RuleXattrDecode) {
		// The entry that failed is not in the inode body: a shared one.
		rule = RuleXattrSharedID
		detail = "shared xattr: " + detail
	}
	c.add(Problem{Path: path.String(), Nid: ino.Nid, Off: off, Space: space, Rule: rule, Detail: detail})
}

// checkContent reads a regular file's whole content and checks its ishare
// fingerprint.
func (c *checker) checkContent(ino *erofs.Inode, path *pathNode, rs []erofs.Range, buf []byte) {
	if ino.Size == 0 {
		return
	}
	if c.opt.ContentLimit > 0 && c.bytes.Load() >= c.opt.ContentLimit {
		if !c.limitNote.Swap(true) {
			c.note("content limit of %d bytes reached: later files not read", c.opt.ContentLimit)
		}
		return
	}
	if c.opt.DeviceSizes == nil && !c.opt.Flat {
		for _, r := range rs {
			if r.Device != 0 {
				return // devices not given (noted once in checkDevices)
			}
		}
	}
	var h hash.Hash
	fp, hasFP, err := c.img.Fingerprint(ino)
	if err == nil && hasFP {
		if len(fp) != len(fingerprintPrefix)+sha256.Size || !bytes.HasPrefix(fp, []byte(fingerprintPrefix)) {
			c.addf(path, ino.Nid, ino.Off, RuleFingerprint, "fingerprint value of %d bytes is not \"sha256:\" + 32 bytes", len(fp))
		} else {
			h = sha256.New()
		}
	}
	f, err := c.img.OpenFile(ino)
	if err != nil {
		c.addErr(path, ino.Nid, ino.Off, RuleContentRead, err)
		return
	}
	zeros := int64(0)
	for _, r := range rs {
		if r.Kind == erofs.KindHole {
			if h == nil {
				continue
			}
			if zeros += r.Length; zeros > maxHoleHash {
				c.note("%s: holes too large to hash; fingerprint not checked", path)
				h = nil
				continue
			}
			clear(buf)
			for left := r.Length; left > 0; {
				n := min(left, int64(len(buf)))
				h.Write(buf[:n])
				left -= n
			}
			continue
		}
		for pos, end := r.Logical, r.Logical+r.Length; pos < end; {
			if c.stop.Load() {
				return
			}
			n := min(end-pos, int64(len(buf)))
			b := buf[:n]
			if _, err := f.ReadAt(b, pos); err != nil {
				c.addErr(path, ino.Nid, ino.Off, RuleContentRead, err)
				return
			}
			if h != nil {
				h.Write(b)
			}
			c.bytes.Add(n)
			pos += n
		}
	}
	if h != nil {
		if sum := h.Sum(nil); !bytes.Equal(sum, fp[len(fingerprintPrefix):]) {
			c.addf(path, ino.Nid, ino.Off, RuleFingerprint, "fingerprint sha256 %x, content hashes to %x", fp[len(fingerprintPrefix):], sum)
		}
	}
}
