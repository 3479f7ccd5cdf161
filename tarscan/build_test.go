package tarscan

import (
	"bytes"
	"strconv"
	"strings"
)

// Hand-made archives, for what archive/tar's Writer cannot produce (sparse
// files, odd encodings) and for corrupt input.

const (
	magicV7    = ""
	magicUSTAR = "ustar\x0000"
	magicGNU   = "ustar  \x00"
)

type hdr struct {
	name, linkname, uname, gname, prefix string
	typ                                  byte
	magic                                string
	mode, uid, gid, size, mtime          int64
	devmajor, devminor                   int64
	// raw overrides, applied after the fields, before the checksum
	raw    func(b []byte)
	badSum bool
	signed bool // checksum as signed sum
}

func octal(b []byte, v int64) {
	s := strconv.FormatInt(v, 8)
	for len(s) < len(b)-1 {
		s = "0" + s
	}
	copy(b, s)
	b[len(b)-1] = 0
}

func (h hdr) block() []byte {
	b := make([]byte, blockSize)
	copy(b[offName:offName+100], h.name)
	mode := h.mode
	if mode == 0 {
		mode = 0o644
	}
	octal(b[offMode:offMode+8], mode)
	octal(b[offUID:offUID+8], h.uid)
	octal(b[offGID:offGID+8], h.gid)
	octal(b[offSize:offSize+12], h.size)
	octal(b[offMtime:offMtime+12], h.mtime)
	b[offType] = h.typ
	copy(b[offLinkname:offLinkname+100], h.linkname)
	copy(b[offMagic:offMagic+8], h.magic)
	if h.magic != magicV7 {
		copy(b[offUname:offUname+32], h.uname)
		copy(b[offGname:offGname+32], h.gname)
		octal(b[offDevmajor:offDevmajor+8], h.devmajor)
		octal(b[offDevminor:offDevminor+8], h.devminor)
	}
	if h.magic == magicUSTAR {
		copy(b[offPrefix:offPrefix+155], h.prefix)
	}
	if h.raw != nil {
		h.raw(b)
	}
	setSum(b, h.signed)
	if h.badSum {
		b[offChksum+2]++
	}
	return b
}

func setSum(b []byte, signed bool) {
	copy(b[offChksum:offChksum+8], "        ")
	var sum int64
	for _, c := range b {
		if signed {
			sum += int64(int8(c))
		} else {
			sum += int64(c)
		}
	}
	if sum < 0 {
		sum = -sum // not representable; the test using it checks for an error
	}
	s := strconv.FormatInt(sum, 8)
	for len(s) < 6 {
		s = "0" + s
	}
	copy(b[offChksum:], s+"\x00 ")
}

type tarBuf struct{ bytes.Buffer }

func (t *tarBuf) add(h hdr, data []byte) {
	t.Write(h.block())
	t.Write(data)
	t.pad()
}

func (t *tarBuf) pad() {
	if n := t.Len() % blockSize; n != 0 {
		t.Write(make([]byte, blockSize-n))
	}
}

func (t *tarBuf) end() []byte {
	t.Write(make([]byte, 2*blockSize))
	return t.Bytes()
}

func paxRecord(k, v string) string {
	n := len(k) + len(v) + 3
	n += len(strconv.Itoa(n))
	if r := strconv.Itoa(n) + " " + k + "=" + v + "\n"; len(r) == n {
		return r
	}
	n++
	return strconv.Itoa(n) + " " + k + "=" + v + "\n"
}

// pax adds an extended header of type typ ('x' or 'g') with the records
// (key, value, key, value, ...).
func (t *tarBuf) pax(typ byte, kv ...string) {
	var s strings.Builder
	for i := 0; i < len(kv); i += 2 {
		s.WriteString(paxRecord(kv[i], kv[i+1]))
	}
	t.paxRaw(typ, s.String())
}

func (t *tarBuf) paxRaw(typ byte, data string) {
	t.add(hdr{name: "PaxHeaders/x", typ: typ, magic: magicUSTAR, size: int64(len(data))}, []byte(data))
}

// sparseData returns the packed data of fragments (deterministic bytes) and
// the logical content.
func sparseData(frags []Fragment, size int64) (packed, logical []byte) {
	logical = make([]byte, size)
	for i, f := range frags {
		for j := int64(0); j < f.Length; j++ {
			c := byte(i*7 + int(j)%251 + 1)
			logical[f.Offset+j] = c
			packed = append(packed, c)
		}
	}
	return packed, logical
}

// oldGNUSparse adds a GNU 'S' entry with its extension blocks.
func (t *tarBuf) oldGNUSparse(name string, frags []Fragment, size int64, packed []byte) {
	h := hdr{name: name, typ: 'S', magic: magicGNU, size: int64(len(packed))}
	first := frags[:min(4, len(frags))]
	rest := frags[len(first):]
	h.raw = func(b []byte) {
		for i, f := range first {
			e := b[offGNUSparse+i*24:]
			octal(e[:12], f.Offset)
			octal(e[12:24], f.Length)
		}
		if len(rest) > 0 {
			b[offGNUExtended] = 1
		}
		octal(b[offGNURealSize:offGNURealSize+12], size)
	}
	t.Write(h.block())
	for len(rest) > 0 {
		b := make([]byte, blockSize)
		n := min(21, len(rest))
		for i, f := range rest[:n] {
			octal(b[i*24:i*24+12], f.Offset)
			octal(b[i*24+12:i*24+24], f.Length)
		}
		rest = rest[n:]
		if len(rest) > 0 {
			b[504] = 1
		}
		t.Write(b)
	}
	t.Write(packed)
	t.pad()
}

func mapString(frags []Fragment) string {
	var s []string
	for _, f := range frags {
		s = append(s, strconv.FormatInt(f.Offset, 10), strconv.FormatInt(f.Length, 10))
	}
	return strings.Join(s, ",")
}

// paxSparse adds a PAX GNU sparse entry in version "0.0", "0.1" or "1.0".
func (t *tarBuf) paxSparse(version, name string, frags []Fragment, size int64, packed []byte) {
	data := packed
	switch version {
	case "0.0":
		kv := []string{"GNU.sparse.size", strconv.FormatInt(size, 10), "GNU.sparse.numblocks", strconv.Itoa(len(frags))}
		for _, f := range frags {
			kv = append(kv, "GNU.sparse.offset", strconv.FormatInt(f.Offset, 10), "GNU.sparse.numbytes", strconv.FormatInt(f.Length, 10))
		}
		t.pax('x', kv...)
	case "0.1":
		t.pax('x', "GNU.sparse.size", strconv.FormatInt(size, 10), "GNU.sparse.numblocks", strconv.Itoa(len(frags)),
			"GNU.sparse.map", mapString(frags))
	case "1.0":
		t.pax('x', "GNU.sparse.major", "1", "GNU.sparse.minor", "0", "GNU.sparse.name", name,
			"GNU.sparse.realsize", strconv.FormatInt(size, 10))
		m := strconv.Itoa(len(frags)) + "\n"
		for _, f := range frags {
			m += strconv.FormatInt(f.Offset, 10) + "\n" + strconv.FormatInt(f.Length, 10) + "\n"
		}
		mb := []byte(m)
		for len(mb)%blockSize != 0 {
			mb = append(mb, 0)
		}
		data = append(mb, packed...)
		name = "GNUSparseFile.0/" + name
	}
	t.add(hdr{name: name, typ: '0', magic: magicUSTAR, size: int64(len(data))}, data)
}
