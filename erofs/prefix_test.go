package erofs

import (
	"encoding/binary"
	"testing"
)

// TestLongPrefixesAndFingerprint appends a plain long-prefix table to an
// image made by mkfs 1.5 (which cannot write one) and rewrites the inline
// xattr "user.a"="1" of /d/f to use it.
func TestLongPrefixesAndFingerprint(t *testing.T) {
	le := binary.LittleEndian
	base := mkImage(t, smallTree(t))
	im0, err := openBytes(base)
	if err != nil {
		t.Fatal(err)
	}
	f, err := im0.Lookup("/d/f")
	if err != nil {
		t.Fatal(err)
	}
	xs, err := im0.Xattrs(f)
	if err != nil {
		t.Fatal(err)
	}
	var entry int64 = -1
	for _, x := range xs {
		if x.Name == "user.a" && !x.Shared {
			entry = x.Off
		}
	}
	if entry < 0 {
		t.Fatalf("no inline user.a: %+v", xs)
	}
	build := func(patch func(b []byte)) (*Image, error) {
		b := append([]byte(nil), base...)
		tab := int64(len(b))
		b = append(b, make([]byte, 4096)...)
		// prefix 0: "user." + "erofs."; prefix 1: "trusted." + "fp"
		p := tab
		for _, r := range []struct {
			base  byte
			infix string
		}{{1, "erofs."}, {4, "fp"}} {
			le.PutUint16(b[p:], uint16(1+len(r.infix)))
			b[p+2] = r.base
			copy(b[p+3:], r.infix)
			p = (p + 2 + 1 + int64(len(r.infix)) + 3) &^ 3
		}
		const o = 1024
		le.PutUint32(b[o+0x08:], le.Uint32(b[o+0x08:])|CompatPlainXattrPfx|CompatIshareXattrs)
		le.PutUint32(b[o+0x50:], le.Uint32(b[o+0x50:])|IncompatXattrPrefix)
		b[o+0x5B] = 2
		le.PutUint32(b[o+0x5C:], uint32(tab/4))
		b[o+0x69] = 1
		patch(b)
		fixCRC(b)
		return openBytes(b)
	}
	t.Run("long prefix name", func(t *testing.T) {
		im, err := build(func(b []byte) { b[entry+1] = 0x80 })
		if err != nil {
			t.Fatal(err)
		}
		if got := im.XattrPrefixes(); len(got) != 2 || got[0] != "user.erofs." || got[1] != "trusted.fp" {
			t.Fatalf("prefixes %q", got)
		}
		xs, err := im.Xattrs(f)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, x := range xs {
			found = found || (x.Name == "user.erofs.a" && string(x.Value) == "1")
		}
		if !found {
			t.Errorf("xattrs %+v", xs)
		}
		if _, ok, err := im.Fingerprint(f); ok || err != nil {
			t.Errorf("unexpected fingerprint %v %v", ok, err)
		}
	})
	t.Run("fingerprint", func(t *testing.T) {
		im, err := build(func(b []byte) {
			b[entry] = 0 // name_len 0: the name byte 'a' becomes the value's first byte
			b[entry+1] = 0x81
			le.PutUint16(b[entry+2:], 2)
		})
		if err != nil {
			t.Fatal(err)
		}
		fp, ok, err := im.Fingerprint(f)
		if err != nil || !ok || string(fp) != "a1" {
			t.Fatalf("fingerprint %q %v %v", fp, ok, err)
		}
	})
	t.Run("prefix length 0x101", func(t *testing.T) {
		_, err := build(func(b []byte) { le.PutUint16(b[len(base):], 300) })
		if err == nil || err.(*FormatError).Rule != "xattr long prefix length out of range" {
			t.Fatalf("got %v", err)
		}
	})
}
