package tarscan

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

func scanBytes(t *testing.T, b []byte) ([]*Entry, error) {
	t.Helper()
	tr := NewReader(bytes.NewReader(b))
	var ents []*Entry
	for {
		e, err := tr.Next()
		if err == io.EOF {
			return ents, nil
		}
		if err != nil {
			return ents, err
		}
		ents = append(ents, e)
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return ents, err
		}
	}
}

func TestGoWriter(t *testing.T) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	long := strings.Repeat("d/", 80) + "file"
	add := func(h *tar.Header, data string) {
		t.Helper()
		h.Size = int64(len(data))
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, data); err != nil {
			t.Fatal(err)
		}
	}
	ns := time.Unix(1700000000, 987654321)
	add(&tar.Header{Name: "./pax/file", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 4000000, Gid: 5000000, Uname: "u", Gname: "g",
		ModTime: ns, Format: tar.FormatPAX, PAXRecords: map[string]string{
			"SCHILY.xattr.user.a":           "A",
			"SCHILY.xattr.security.selinux": "system_u:object_r:bin_t:s0\x00",
			"LIBARCHIVE.xattr.user.b%3Dc":   "AAH/",
			"comment":                       "hello",
		}}, "pax data")
	add(&tar.Header{Name: long, Typeflag: tar.TypeReg, ModTime: time.Unix(-1000000000, 0), Format: tar.FormatGNU, Uid: 1 << 30}, "gnu long")
	add(&tar.Header{Name: "ustar/" + strings.Repeat("p", 90) + "/" + strings.Repeat("n", 90), Typeflag: tar.TypeReg, Format: tar.FormatUSTAR, ModTime: time.Unix(1, 0)}, "prefix")
	add(&tar.Header{Name: "/abs/dir/", Typeflag: tar.TypeDir, Mode: 0o1777, Format: tar.FormatPAX, ModTime: time.Unix(-5, -5e8)}, "")
	add(&tar.Header{Name: "sym", Typeflag: tar.TypeSymlink, Linkname: "../../" + strings.Repeat("x", 200), Format: tar.FormatPAX}, "")
	add(&tar.Header{Name: "hl", Typeflag: tar.TypeLink, Linkname: "./pax/file", Format: tar.FormatGNU}, "")
	add(&tar.Header{Name: "dev", Typeflag: tar.TypeBlock, Devmajor: 259, Devminor: 1 << 20, Format: tar.FormatPAX}, "")
	add(&tar.Header{Name: "pax/file", Typeflag: tar.TypeReg, Format: tar.FormatPAX}, "duplicate")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ents, contents := compareArchive(t, buf.Bytes(), nil)
	if len(ents) != 8 || ents[0].Name != "pax/file" || ents[7].Name != "pax/file" {
		t.Fatalf("entries: %v", ents)
	}
	e := ents[0]
	want := []Xattr{{"security.selinux", []byte("system_u:object_r:bin_t:s0\x00")}, {"user.a", []byte("A")}, {"user.b=c", []byte{0, 1, 0xff}}}
	got := append([]Xattr(nil), e.Xattrs...)
	if len(got) == 3 {
		// archive/tar writes records sorted by key; compare as a set.
		m := map[string]string{}
		for _, x := range got {
			m[x.Name] = string(x.Value)
		}
		for _, x := range want {
			if m[x.Name] != string(x.Value) {
				t.Errorf("xattr %s = %q", x.Name, m[x.Name])
			}
		}
	} else {
		t.Errorf("xattrs %q", got)
	}
	if e.UID != 4000000 || e.GID != 5000000 || e.ModTime != 1700000000 || e.ModTimeNsec != 987654321 || e.Mode != 0o4755 || e.PAX["comment"] != "hello" {
		t.Errorf("pax entry %+v", e)
	}
	if e := ents[1]; e.Name != strings.TrimSuffix(long, "/") || e.ModTime != -1000000000 || e.UID != 1<<30 || string(contents[e.Name]) != "duplicate" && string(contents[long]) != "gnu long" {
		t.Errorf("gnu entry %+v", e)
	}
	if e := ents[3]; e.Name != "abs/dir" || e.Type != TypeDir || e.ModTime != -6 || e.ModTimeNsec != 5e8 {
		t.Errorf("dir %+v", e)
	}
	if e := ents[4]; e.Linkname != "../../"+strings.Repeat("x", 200) {
		t.Errorf("symlink target %q", e.Linkname)
	}
	if e := ents[5]; e.Linkname != "pax/file" {
		t.Errorf("hard link target %q", e.Linkname)
	}
	if e := ents[6]; e.Devmajor != 259 || e.Devminor != 1<<20 {
		t.Errorf("dev %+v", e)
	}
}

var fragCases = map[string]struct {
	frags []Fragment
	size  int64
}{
	"simple": {[]Fragment{{0, 100}, {4096, 512}, {10000, 1}}, 20000},
	"hole":   {[]Fragment{{5000, 0}}, 5000},
	"tail":   {[]Fragment{{0, 10}, {1 << 20, 0}}, 1 << 20},
	"many":   manyFrags(60),
}

func manyFrags(n int) struct {
	frags []Fragment
	size  int64
} {
	var f []Fragment
	for i := range n {
		f = append(f, Fragment{int64(i) * 1000, int64(i%7) + 1})
	}
	return struct {
		frags []Fragment
		size  int64
	}{f, int64(n)*1000 + 3}
}

func TestSparseFormats(t *testing.T) {
	for name, c := range fragCases {
		for _, version := range []string{"old", "0.0", "0.1", "1.0"} {
			t.Run(name+"/"+version, func(t *testing.T) {
				var tb tarBuf
				packed, logical := sparseData(c.frags, c.size)
				tb.add(hdr{name: "before", typ: '0', magic: magicUSTAR, size: 3}, []byte("abc"))
				if version == "old" {
					tb.oldGNUSparse("sp", c.frags, c.size, packed)
				} else {
					tb.paxSparse(version, "sp", c.frags, c.size, packed)
				}
				tb.add(hdr{name: "after", typ: '0', magic: magicUSTAR, size: 3}, []byte("xyz"))
				ents, contents := compareArchive(t, tb.end(), map[string][]byte{"sp": logical, "before": []byte("abc"), "after": []byte("xyz")})
				e := byName(ents)["sp"]
				if e == nil || e.Size != c.size || e.DataSize != int64(len(packed)) || e.Sparse == nil {
					t.Fatalf("sparse entry %+v", e)
				}
				var nonEmpty []Fragment
				for _, f := range c.frags {
					if f.Length > 0 {
						nonEmpty = append(nonEmpty, f)
					}
				}
				if !(len(nonEmpty) == 0 && len(e.Sparse) == 0) && !reflect.DeepEqual(e.Sparse, nonEmpty) {
					t.Errorf("fragments %v, want %v", e.Sparse, nonEmpty)
				}
				if !bytes.Equal(contents["sp"], logical) {
					t.Errorf("content differs")
				}
			})
		}
	}
}

func TestGlobalHeaders(t *testing.T) {
	var tb tarBuf
	tb.pax('g', "uname", "guser", "SCHILY.xattr.user.g", "1", "comment", "c")
	tb.pax('x', "SCHILY.xattr.user.l", "2", "SCHILY.xattr.user.g", "3")
	tb.add(hdr{name: "a", typ: '0', magic: magicUSTAR, uname: "hu"}, nil)
	tb.pax('g', "uname", "")
	tb.add(hdr{name: "b", typ: '0', magic: magicUSTAR, uname: "hu"}, nil)
	ents, err := scanBytes(t, tb.end())
	if err != nil || len(ents) != 2 {
		t.Fatal(ents, err)
	}
	a, b := ents[0], ents[1]
	if a.Uname != "guser" || !reflect.DeepEqual(a.Xattrs, []Xattr{{"user.g", []byte("3")}, {"user.l", []byte("2")}}) || a.Header != 1024 {
		t.Errorf("a: %+v", a)
	}
	if b.Uname != "hu" || !reflect.DeepEqual(b.Xattrs, []Xattr{{"user.g", []byte("1")}}) || b.PAX["comment"] != "c" || b.Header != 3584 {
		t.Errorf("b: %+v", b)
	}
}

func TestLegacyAndOddEncodings(t *testing.T) {
	var tb tarBuf
	tb.add(hdr{name: "v7dir/", typ: 0, magic: magicV7, mode: 0o755}, nil)
	tb.add(hdr{name: "v7dir/file", typ: 0, magic: magicV7, size: 2}, []byte("hi"))
	tb.add(hdr{name: "./contig", typ: '7', magic: magicUSTAR, size: 1}, []byte("c"))
	// Space-terminated and space-padded octal, a signed checksum.
	tb.add(hdr{name: "spaces\xe9\xff", typ: '0', magic: magicUSTAR, signed: true, raw: func(b []byte) {
		copy(b[offMode:], "000644 \x00")
		copy(b[offUID:], "  1234 \x00")
		copy(b[offSize:], "00000000003 ")
		copy(b[offMtime:], "\x00\x00\x0012345670")
	}}, []byte("sss"))
	// Base-256 uid/gid/mtime (negative) and size.
	tb.add(hdr{name: "b256", typ: '0', magic: magicGNU, raw: func(b []byte) {
		copy(b[offUID:], []byte{0x80, 0, 0, 0, 0, 0x3d, 0x09, 0x00})
		copy(b[offGID:], []byte{0x80, 0, 0, 0, 0, 0, 0, 7})
		copy(b[offSize:], []byte{0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4})
		copy(b[offMtime:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe})
	}}, []byte("2564"))
	tb.add(hdr{name: "V", typ: 'V', magic: magicGNU, size: 5}, []byte("label"))
	tb.add(hdr{name: "dump/", typ: 'D', magic: magicGNU, size: 6}, []byte("Nfile\x00"))
	tb.add(hdr{name: "x", typ: '5', magic: magicUSTAR, prefix: "pre/fix"}, nil)
	tb.add(hdr{name: "hard", typ: '1', magic: magicUSTAR, linkname: "/pre//fix/./x/", size: 100}, nil) // size ignored
	tb.add(hdr{name: ".", typ: '5', magic: magicUSTAR}, nil)
	ents, _ := compareArchive(t, tb.end(), map[string][]byte{"v7dir/file": []byte("hi"), "contig": []byte("c"), "b256": []byte("2564")})
	m := byName(ents)
	if e := m["v7dir"]; e == nil || e.Type != TypeDir || e.Mode != 0o755 {
		t.Errorf("v7 dir: %+v", e)
	}
	if e := m["spaces\xe9\xff"]; e == nil || e.UID != 0o1234 || e.Size != 3 || e.ModTime != 0o12345670 {
		t.Errorf("spaces: %+v", e)
	}
	if e := m["b256"]; e == nil || e.UID != 4000000 || e.GID != 7 || e.ModTime != -2 || e.Size != 4 {
		t.Errorf("base-256: %+v", e)
	}
	if e := m["dump"]; e == nil || e.Type != TypeDir || e.DataSize != 0 {
		t.Errorf("dumpdir: %+v", e)
	}
	if e := m["hard"]; e == nil || e.Linkname != "pre/fix/x" || e.DataSize != 0 {
		t.Errorf("hard: %+v", e)
	}
	if e := m["."]; e == nil || e.Type != TypeDir {
		t.Errorf("root: %+v", e)
	}
	if _, ok := m["V"]; ok {
		t.Errorf("volume header reported as an entry")
	}
}

func TestEndOfArchive(t *testing.T) {
	var tb tarBuf
	tb.add(hdr{name: "a", typ: '0', magic: magicUSTAR, size: 1}, []byte("a"))
	one := append([]byte(nil), tb.Bytes()...)
	for name, b := range map[string][]byte{
		"no marker":        one,
		"one zero block":   append(append([]byte(nil), one...), make([]byte, 512)...),
		"two zero blocks":  append(append([]byte(nil), one...), make([]byte, 1024)...),
		"trailing garbage": append(append(append([]byte(nil), one...), make([]byte, 1024)...), "garbage"...),
	} {
		ents, err := scanBytes(t, b)
		if err != nil || len(ents) != 1 {
			t.Errorf("%s: %v %v", name, ents, err)
		}
	}
}

func TestHeaderOffsets(t *testing.T) {
	var tb tarBuf
	tb.add(hdr{name: "././@LongLink", typ: 'L', magic: magicGNU, size: 201}, []byte(strings.Repeat("n", 200)+"\x00"))
	tb.add(hdr{name: "././@LongLink", typ: 'K', magic: magicGNU, size: 5}, []byte("tgt\x00\x00"))
	tb.add(hdr{name: "short", typ: '2', magic: magicGNU, linkname: "short"}, nil)
	tb.pax('x', "path", "p")
	tb.add(hdr{name: "q", typ: '0', magic: magicUSTAR, size: 600}, make([]byte, 600))
	ents, err := scanBytes(t, tb.end())
	if err != nil || len(ents) != 2 {
		t.Fatal(ents, err)
	}
	if e := ents[0]; e.Name != strings.Repeat("n", 200) || e.Linkname != "tgt" || e.Header != 0 || e.Offset != 5*512 {
		t.Errorf("long: %+v", e)
	}
	if e := ents[1]; e.Name != "p" || e.Header != 5*512 || e.Offset != 8*512 || e.DataSize != 600 {
		t.Errorf("pax: %+v", e)
	}
}

func TestCorrupt(t *testing.T) {
	good := func() *tarBuf {
		var tb tarBuf
		tb.add(hdr{name: "ok", typ: '0', magic: magicUSTAR, size: 3}, []byte("abc"))
		return &tb
	}
	ent := func(typ byte, size int64) hdr { return hdr{name: "f", typ: typ, magic: magicUSTAR, size: size} }
	type tc struct {
		build func(tb *tarBuf) []byte
		rule  string
		off   int64
	}
	withPAX := func(data string) func(tb *tarBuf) []byte {
		return func(tb *tarBuf) []byte {
			tb.paxRaw('x', data)
			tb.add(ent('0', 0), nil)
			return tb.end()
		}
	}
	sparse := func(version string, frags []Fragment, size int64) func(tb *tarBuf) []byte {
		return func(tb *tarBuf) []byte {
			var packed []byte
			for _, f := range frags {
				if f.Length > 0 && f.Length < 1<<20 {
					packed = append(packed, make([]byte, f.Length)...)
				}
			}
			if version == "old" {
				tb.oldGNUSparse("sp", frags, size, packed)
			} else {
				tb.paxSparse(version, "sp", frags, size, packed)
			}
			return tb.end()
		}
	}
	cases := map[string]tc{
		"bad checksum": {func(tb *tarBuf) []byte { h := ent('0', 0); h.badSum = true; tb.add(h, nil); return tb.end() }, "header checksum mismatch", 512 + 512},
		"bad octal size": {func(tb *tarBuf) []byte {
			h := ent('0', 0)
			h.raw = func(b []byte) { copy(b[offSize:], "0000000009\x00\x00") }
			tb.add(h, nil)
			return tb.end()
		}, "bad number in header field size", 512 + 512},
		"base-256 overflow": {func(tb *tarBuf) []byte {
			h := ent('0', 0)
			h.raw = func(b []byte) { copy(b[offSize:], []byte{0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}) }
			tb.add(h, nil)
			return tb.end()
		}, "bad number in header field size", 512 + 512},
		"negative size": {func(tb *tarBuf) []byte {
			h := ent('0', 0)
			h.raw = func(b []byte) {
				copy(b[offSize:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe})
			}
			tb.add(h, nil)
			return tb.end()
		}, "negative size", 512 + 512},
		"huge size": {func(tb *tarBuf) []byte {
			h := ent('0', 0)
			h.raw = func(b []byte) {
				copy(b[offSize:], []byte{0x80, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
			}
			tb.add(h, nil)
			return tb.end()
		}, "entry size out of range", 512 + 512},
		"truncated header": {func(tb *tarBuf) []byte { tb.add(ent('0', 0), nil); return tb.Bytes()[:1124] }, "archive truncated in header", 1124},
		"truncated data": {func(tb *tarBuf) []byte {
			tb.add(ent('0', 5000), make([]byte, 5000))
			return tb.Bytes()[:2000]
		}, "archive truncated in entry data", 2000},
		"zero then data":   {func(tb *tarBuf) []byte { tb.Write(make([]byte, 512)); tb.add(ent('0', 0), nil); return tb.Bytes() }, "zero block followed by a non-zero block", 1024 + 512},
		"dangling pax":     {func(tb *tarBuf) []byte { tb.pax('x', "path", "a"); return tb.end() }, "extended header not followed by an entry", 1536 + 512},
		"dangling pax eof": {func(tb *tarBuf) []byte { tb.pax('x', "path", "a"); return tb.Bytes() }, "archive truncated in header", 1536 + 512},
		"dangling longname": {func(tb *tarBuf) []byte {
			tb.add(hdr{name: "././@LongLink", typ: 'L', magic: magicGNU, size: 2}, []byte("a\x00"))
			return tb.end()
		}, "extended header not followed by an entry", 1536 + 512},
		"pax length beyond": {withPAX("100 path=x\n"), "bad PAX record length", 1024 + 512},
		"pax length short":  {withPAX("5 path=x\n"), "PAX record not terminated by a newline", 1024 + 512},
		"pax length zero":   {withPAX("0 a=b\n"), "bad PAX record length", 1024 + 512},
		"pax length text":   {withPAX("1x path=x\n"), "bad PAX record length", 1024 + 512},
		"pax no length":     {withPAX("path=x\n"), "PAX record without a length", 1024 + 512},
		"pax no equals":     {withPAX("8 pathx\n"), "PAX record without a keyword", 1024 + 512},
		"pax second bad":    {withPAX("11 path=ab\n6 a=bc\n"), "PAX record not terminated by a newline", 1035 + 512},
		"pax bad uid":       {withPAX(paxRecord("uid", "x1")), "bad PAX record uid", 512 + 512},
		"pax bad mtime":     {withPAX(paxRecord("mtime", "1.2.3")), "bad PAX record mtime", 512 + 512},
		"pax negative size": {withPAX(paxRecord("size", "-1")), "bad PAX record size", 512 + 512},
		"pax nul path":      {withPAX(paxRecord("path", "a\x00b")), "NUL in PAX record path", 1024 + 512},
		"pax bad base64": {withPAX(paxRecord("LIBARCHIVE.xattr.user.x", "!!!")),
			"bad PAX record", 512 + 512},
		"pax too large": {func(tb *tarBuf) []byte {
			tb.add(hdr{name: "p", typ: 'x', magic: magicUSTAR, size: MaxHeaderSize + 1}, nil)
			return tb.end()
		}, "PAX header larger than 1 MiB", 512 + 512},
		"longname too large": {func(tb *tarBuf) []byte {
			tb.add(hdr{name: "p", typ: 'L', magic: magicGNU, size: MaxHeaderSize + 1}, nil)
			return tb.end()
		}, "GNU long name header larger than 1 MiB", 512 + 512},
		"pax truncated": {func(tb *tarBuf) []byte {
			tb.add(hdr{name: "p", typ: 'x', magic: magicUSTAR, size: 100000}, nil)
			return tb.Bytes()
		}, "archive truncated in PAX header", 1536},
		"dotdot": {func(tb *tarBuf) []byte {
			tb.add(hdr{name: "a/../../etc", typ: '0', magic: magicUSTAR}, nil)
			return tb.end()
		}, "path with a .. component", 512 + 512},
		"dotdot pax": {withPAX(paxRecord("path", "x/..")), "path with a .. component", 1536 + 512},
		"dotdot hard link": {func(tb *tarBuf) []byte {
			tb.add(hdr{name: "a", linkname: "../b", typ: '1', magic: magicUSTAR}, nil)
			return tb.end()
		}, "hard link target with a .. component", 512 + 512},
		"empty hard link": {func(tb *tarBuf) []byte { tb.add(hdr{name: "a", typ: '1', magic: magicUSTAR}, nil); return tb.end() }, "hard link without a target", 512 + 512},
		"multivolume": {func(tb *tarBuf) []byte {
			tb.add(hdr{name: "a", typ: 'M', magic: magicGNU, size: 10}, nil)
			return tb.end()
		}, "GNU multivolume continuation entries are not supported", 512 + 512},
		"unknown type": {func(tb *tarBuf) []byte { tb.add(hdr{name: "a", typ: 'Z', magic: magicGNU}, nil); return tb.end() }, "unsupported entry type", 512 + 512},
		"sparse S on ustar": {func(tb *tarBuf) []byte { tb.add(hdr{name: "a", typ: 'S', magic: magicUSTAR}, nil); return tb.end() },
			"GNU sparse entry without GNU magic", 512 + 512},
		"sparse order old":    {sparse("old", []Fragment{{100, 10}, {50, 10}}, 1000), "sparse fragments out of order or overlapping", 1024 + 512},
		"sparse overlap 0.1":  {sparse("0.1", []Fragment{{0, 100}, {50, 10}}, 1000), "sparse fragments out of order or overlapping", 2048 + 512},
		"sparse beyond 1.0":   {sparse("1.0", []Fragment{{0, 100}, {990, 11}}, 1000), "sparse fragment beyond the real size", 2560 + 512},
		"sparse negative 0.0": {sparse("0.0", []Fragment{{-5, 1}}, 1000), "sparse fragment out of range", 2048 + 512},
		"sparse overflow":     {sparse("0.1", []Fragment{{1 << 62, 1<<62 + 1<<61}}, 1<<63-1), "sparse fragment out of range", 2048 + 512},
		"sparse huge length":  {sparse("0.1", []Fragment{{1, 1<<63 - 1}}, 1<<63-1), "sparse fragment out of range", 2048 + 512},
		"sparse 0.0 order":    {withPAX(paxRecord("GNU.sparse.numbytes", "1")), "GNU sparse 0.0 records out of order", 1024 + 512},
		"sparse numblocks":    {withPAX(paxRecord("GNU.sparse.numblocks", "2") + paxRecord("GNU.sparse.map", "0,1")), "GNU.sparse.numblocks does not match GNU.sparse.map", 512 + 512},
		"sparse odd map":      {withPAX(paxRecord("GNU.sparse.map", "0,1,2")), "GNU sparse map with an odd number of values", 512 + 512},
		"sparse version":      {withPAX(paxRecord("GNU.sparse.major", "2") + paxRecord("GNU.sparse.minor", "0")), "unsupported GNU sparse format version", 512 + 512},
		"sparse on dir": {func(tb *tarBuf) []byte {
			tb.pax('x', "GNU.sparse.map", "0,0")
			tb.add(ent('5', 0), nil)
			return tb.end()
		}, "sparse map on a non-regular entry", 512 + 512},
		"sparse sum mismatch": {func(tb *tarBuf) []byte {
			tb.pax('x', "GNU.sparse.map", "0,10", "GNU.sparse.size", "100")
			tb.add(ent('0', 11), make([]byte, 11))
			return tb.end()
		}, "sparse fragments do not add up to the stored data", 2048 + 512},
		"sparse 1.0 map too many": {func(tb *tarBuf) []byte {
			tb.pax('x', "GNU.sparse.major", "1", "GNU.sparse.minor", "0", "GNU.sparse.realsize", "10")
			tb.add(ent('0', 512), []byte("2000000\n"))
			return tb.end()
		}, "sparse map with more than 1M fragments", 2048 + 7 + 512},
		"sparse 1.0 map past data": {func(tb *tarBuf) []byte {
			tb.pax('x', "GNU.sparse.major", "1", "GNU.sparse.minor", "0", "GNU.sparse.realsize", "10")
			tb.add(ent('0', 512), []byte("1\n"+strings.Repeat("0", 510)))
			return tb.end()
		}, "GNU sparse 1.0 map runs past the entry's data", 2048 + 512 + 512},
		"sparse 1.0 map bad char": {func(tb *tarBuf) []byte {
			tb.pax('x', "GNU.sparse.major", "1", "GNU.sparse.minor", "0", "GNU.sparse.realsize", "10")
			tb.add(ent('0', 512), []byte("1\n0\n"))
			return tb.end()
		}, "bad character in GNU sparse 1.0 map", 2048 + 4 + 512},
		"sparse 1.0 map no data": {func(tb *tarBuf) []byte {
			tb.pax('x', "GNU.sparse.major", "1", "GNU.sparse.minor", "0", "GNU.sparse.realsize", "10")
			tb.add(ent('0', 0), nil)
			return tb.end()
		}, "GNU sparse 1.0 map runs past the entry's data", 2048 + 512},
		"sparse 1.0 map number": {func(tb *tarBuf) []byte {
			tb.pax('x', "GNU.sparse.major", "1", "GNU.sparse.minor", "0", "GNU.sparse.realsize", "10")
			tb.add(ent('0', 512), []byte("99999999999999999999\n"))
			return tb.end()
		}, "number out of range in GNU sparse 1.0 map", 2048 + 18 + 512},
		"old sparse truncated ext": {func(tb *tarBuf) []byte {
			var frags []Fragment
			for i := range 10 {
				frags = append(frags, Fragment{int64(i) * 10, 1})
			}
			tb.oldGNUSparse("sp", frags, 1000, make([]byte, 10))
			return tb.Bytes()[:1024+512+100]
		}, "archive truncated in GNU sparse extension block", 1124 + 512},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			b := c.build(good())
			ents, err := scanBytes(t, b)
			if err == nil {
				t.Fatalf("no error; entries %+v", ents)
			}
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Rule != c.rule || fe.Off != c.off {
				t.Fatalf("error %v (rule %q off %d), want rule %q off %d", err, errRule(err), offOf(err), c.rule, c.off)
			}
			if strings.Contains(c.rule, "truncated") && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("%v does not wrap io.ErrUnexpectedEOF", err)
			}
			if len(ents) < 1 || ents[0].Name != "ok" {
				t.Errorf("the good entry before the damage was not returned")
			}
			// Sticky.
			tr := NewReader(bytes.NewReader(b))
			for i := 0; i < 10; i++ {
				if _, err = tr.Next(); err != nil {
					break
				}
			}
			if _, err2 := tr.Next(); err2 != err {
				t.Errorf("error not sticky: %v then %v", err, err2)
			}
		})
	}
}

func offOf(err error) int64 {
	var fe *FormatError
	if errors.As(err, &fe) {
		return fe.Off
	}
	return -1
}

func TestCleanName(t *testing.T) {
	for in, want := range map[string]string{
		"": ".", ".": ".", "./": ".", "/": ".", "//": ".", "a": "a", "./a/": "a", "/a//b/./c/": "a/b/c", "a/.b": "a/.b", "..a/b..": "..a/b..",
		"a/..": "", "../a": "", "/..": "", "a/../b": "",
	} {
		got, ok := cleanName(in)
		if (want == "") == ok || got != want {
			t.Errorf("cleanName(%q) = %q %v, want %q", in, got, ok, want)
		}
	}
}

func TestPAXTime(t *testing.T) {
	for in, want := range map[string][2]int64{
		"0": {0, 0}, "1.5": {1, 5e8}, "-1.5": {-2, 5e8}, "-0.25": {-1, 75e7}, "12.1234567891": {12, 123456789}, "-3": {-3, 0}, "5.": {5, 0},
	} {
		s, ns, ok := parsePAXTime(in)
		if !ok || s != want[0] || int64(ns) != want[1] {
			t.Errorf("%q: %d.%09d %v, want %v", in, s, ns, ok, want)
		}
	}
	for _, in := range []string{"", ".5", "1.x", "a", "1.-5"} {
		if _, _, ok := parsePAXTime(in); ok {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestXattrDuplicates(t *testing.T) {
	var tb tarBuf
	tb.pax('x', "LIBARCHIVE.xattr.user.a", "eA==", "LIBARCHIVE.xattr.user.%62", "Yg", "SCHILY.xattr.user.c", "", "SCHILY.xattr.user.a", "y")
	tb.add(hdr{name: "f", typ: '0', magic: magicUSTAR}, nil)
	ents, err := scanBytes(t, tb.end())
	if err != nil || len(ents) != 1 {
		t.Fatal(ents, err)
	}
	want := []Xattr{{"user.a", []byte("y")}, {"user.b", []byte("b")}, {"user.c", []byte{}}}
	if !reflect.DeepEqual(ents[0].Xattrs, want) {
		t.Errorf("xattrs %q, want %q", ents[0].Xattrs, want)
	}
}

type countReader struct {
	r     io.Reader
	reads int
}

func (c *countReader) Read(p []byte) (int, error) { c.reads++; return c.r.Read(p) }

// TestLargeReads: data is read with the caller's buffer size, headers a
// block at a time, skipped data in large chunks.
func TestLargeReads(t *testing.T) {
	var tb tarBuf
	tb.add(hdr{name: "a", typ: '0', magic: magicUSTAR, size: 4 << 20}, make([]byte, 4<<20))
	tb.add(hdr{name: "b", typ: '0', magic: magicUSTAR, size: 4 << 20}, make([]byte, 4<<20))
	cr := &countReader{r: bytes.NewReader(tb.end())}
	tr := NewReader(cr)
	if _, err := tr.Next(); err != nil {
		t.Fatal(err)
	}
	if n, err := io.ReadFull(tr, make([]byte, 4<<20)); n != 4<<20 || err != nil {
		t.Fatal(n, err)
	}
	if _, err := tr.Next(); err != nil { // skips b's data
		t.Fatal(err)
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Fatal(err)
	}
	if cr.reads > 80 {
		t.Errorf("%d reads for two 4 MiB entries", cr.reads)
	}
}
