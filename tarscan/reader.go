// Package tarscan is a streaming tar parser that reports, for every entry,
// its metadata and where its data lies in the tar stream.
//
// It reads v7, ustar, GNU (oldgnu and gnu: long names and links, base-256
// numbers, old sparse files with extension blocks, dumpdirs) and PAX
// archives (local and global extended headers, xattrs, the GNU sparse
// formats 0.0, 0.1 and 1.0), modelled on archive/tar's Reader. Unlike
// archive/tar it exposes the byte offset of every entry's data and the
// sparse map, so that an index (an EROFS image made like mkfs.erofs
// --tar=i) can point straight into the uncompressed tar.
//
// Every length read from the archive is checked before it is used; errors
// are *FormatError values naming the offset and the rule.
package tarscan

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
)

// Entry types after normalization.
const (
	TypeReg     = '0' // also '\x00', '7' (contiguous) and GNU 'S' (sparse)
	TypeLink    = '1' // hard link
	TypeSymlink = '2'
	TypeChar    = '3'
	TypeBlock   = '4'
	TypeDir     = '5' // also GNU 'D' (dumpdir) and v7 '\x00' with a trailing slash
	TypeFifo    = '6'
)

// Limits on what an archive may make the Reader hold in memory.
const (
	// MaxHeaderSize bounds the data of one PAX ('x', 'g') or GNU long
	// name/link ('L', 'K') header, the PAX records accumulated for one
	// entry and the global records in force.
	MaxHeaderSize = 1 << 20
	// MaxFragments bounds the number of entries in one sparse map.
	MaxFragments = 1 << 20
)

const blockSize = 512

// Xattr is an extended attribute of an entry.
type Xattr struct {
	Name  string
	Value []byte
}

// Fragment is a data run of a sparse file, in logical file offsets.
type Fragment struct {
	Offset, Length int64
}

// Entry describes one archive member and where its data is stored.
type Entry struct {
	// Name is the path after long-name, PAX and prefix resolution, cleaned:
	// no leading "./" or "/", no trailing "/", no empty or "." components,
	// "." for the root. Paths with ".." components are refused.
	Name        string
	Type        byte   // one of the Type constants
	Mode        uint32 // permission bits plus setuid, setgid, sticky (07777)
	UID, GID    int64
	Uname       string
	Gname       string
	ModTime     int64  // seconds since the epoch (may be negative)
	ModTimeNsec uint32 // nanoseconds, from a PAX mtime with a fraction
	Size        int64  // logical size of a regular file (sparse: the real size); 0 for other types
	Linkname    string // symlink target (as stored) or hard link target (cleaned like Name)
	Devmajor    uint32
	Devminor    uint32
	// Xattrs come from SCHILY.xattr.NAME and LIBARCHIVE.xattr.NAME PAX
	// records in archive order; a later record for the same name replaces
	// the value of an earlier one in place.
	Xattrs []Xattr
	// PAX holds every PAX record that applied to the entry (global and
	// local; local ones win), for diagnostics. nil if there were none.
	PAX map[string]string

	Header   int64      // offset of the entry's first header block (including PAX and GNU long-name headers)
	Offset   int64      // offset of the entry's stored data (after a PAX 1.0 sparse map); a multiple of 512
	DataSize int64      // bytes of data stored at Offset (sparse: the sum of the fragment lengths); 0 unless regular
	Sparse   []Fragment // non-nil only for sparse files: the data runs, stored back to back from Offset
}

// Reader reads the entries of a tar stream in order.
type Reader struct {
	r       io.Reader
	off     int64
	remain  int64 // unread data of the current entry, returned by Read
	skip    int64 // bytes to discard after remain before the next header
	err     error // sticky
	global  []paxRec
	blk     [blockSize]byte
	scratch []byte
}

type paxRec struct{ k, v string }

// NewReader returns a Reader over r. r is read sequentially with reads of at
// most a block for headers and of the caller's size for data; give it a
// buffered stream (a *bufio.Reader is also used to skip data).
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Offset returns the number of bytes consumed from the underlying reader.
func (tr *Reader) Offset() int64 { return tr.off }

// Next advances to the next entry, skipping the unread data of the current
// one. It returns io.EOF at the end of the archive (two zero blocks, one zero
// block and the end of the stream, or the end of the stream at a header
// boundary). After any other error the Reader is unusable.
func (tr *Reader) Next() (*Entry, error) {
	if tr.err != nil {
		return nil, tr.err
	}
	e, err := tr.next()
	if err != nil {
		tr.err = err
		tr.remain, tr.skip = 0, 0
	}
	return e, err
}

// Read reads the current entry's stored data: DataSize bytes starting at
// Offset (for sparse files the fragments packed back to back). It returns
// io.EOF at the end of the data.
func (tr *Reader) Read(p []byte) (int, error) {
	if tr.err != nil {
		return 0, tr.err
	}
	if tr.remain <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > tr.remain {
		p = p[:tr.remain]
	}
	n, err := tr.r.Read(p)
	if n < 0 || n > len(p) {
		n, err = 0, errors.New("invalid read count from underlying reader")
	}
	tr.off += int64(n)
	tr.remain -= int64(n)
	switch {
	case err == io.EOF && tr.remain == 0:
		err = nil
	case err != nil:
		err = tr.ioErr(err, "entry data")
		tr.err = err
	}
	return n, err
}

// ioErr wraps an error of the underlying reader; EOFs become
// io.ErrUnexpectedEOF.
func (tr *Reader) ioErr(err error, what string) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return &FormatError{Off: tr.off, Rule: "archive truncated in " + what, Err: io.ErrUnexpectedEOF}
	}
	return &FormatError{Off: tr.off, Rule: "reading " + what, Err: err}
}

func (tr *Reader) readFull(p []byte) error {
	n, err := io.ReadFull(tr.r, p)
	tr.off += int64(n)
	return err
}

// readBlock reads one block into tr.blk.
func (tr *Reader) readBlock(what string) error {
	if err := tr.readFull(tr.blk[:]); err != nil {
		return tr.ioErr(err, what)
	}
	return nil
}

type discarder interface {
	Discard(n int) (int, error)
}

// discard skips n bytes by reading them.
func (tr *Reader) discard(n int64) error {
	if d, ok := tr.r.(discarder); ok {
		for n > 0 {
			c := min(n, 1<<30)
			m, err := d.Discard(int(c))
			if m < 0 || int64(m) > c {
				return errors.New("invalid discard count from underlying reader")
			}
			tr.off += int64(m)
			n -= int64(m)
			if err != nil {
				return err
			}
		}
		return nil
	}
	if int64(len(tr.scratch)) < min(n, 64<<10) {
		tr.scratch = make([]byte, min(max(n, 4<<10), 64<<10))
	}
	for n > 0 {
		c := min(n, int64(len(tr.scratch)))
		if err := tr.readFull(tr.scratch[:c]); err != nil {
			return err
		}
		n -= c
	}
	return nil
}

func blockPad(n int64) int64 { return -n & (blockSize - 1) }

// readSpecial reads the data of a PAX or long-name header of size bytes
// and its padding.
func (tr *Reader) readSpecial(hoff, size int64, what string) ([]byte, error) {
	if size > MaxHeaderSize {
		return nil, ferr(hoff, what+" larger than 1 MiB", size)
	}
	var buf []byte
	if size <= 64<<10 {
		buf = make([]byte, size)
		if err := tr.readFull(buf); err != nil {
			return nil, tr.ioErr(err, what)
		}
	} else {
		// Grow with the data actually present, not with the claim.
		var b bytes.Buffer
		n, err := b.ReadFrom(io.LimitReader(tr.r, size))
		tr.off += n
		if err == nil && n < size {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, tr.ioErr(err, what)
		}
		buf = b.Bytes()
	}
	if err := tr.discard(blockPad(size)); err != nil {
		return nil, tr.ioErr(err, what)
	}
	return buf, nil
}

// header is one parsed header block.
type header struct {
	off         int64
	typ         byte
	gnu         bool // oldgnu/gnu magic
	name        string
	linkname    string
	mode        int64
	uid, gid    int64
	size, mtime int64
	uname       string
	gname       string
	devmajor    int64
	devminor    int64
	// GNU old sparse ('S')
	realSize   int64
	sparse     []Fragment
	isExtended bool
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// pending collects what meta headers say about the next entry.
type pending struct {
	start    int64 // offset of the first meta header, -1 if none
	local    []paxRec
	localLen int
	longName string
	hasName  bool
	longLink string
	hasLink  bool
}

func (p *pending) any() bool { return p.start >= 0 }

func (tr *Reader) next() (*Entry, error) {
	if n := tr.remain + tr.skip; n > 0 {
		if err := tr.discard(n); err != nil {
			return nil, tr.ioErr(err, "entry data")
		}
		tr.remain, tr.skip = 0, 0
	}
	p := pending{start: -1}
	for {
		hoff := tr.off
		n, err := io.ReadFull(tr.r, tr.blk[:])
		tr.off += int64(n)
		if err != nil {
			if err == io.EOF && !p.any() {
				return nil, io.EOF
			}
			return nil, tr.ioErr(err, "header")
		}
		if isZero(tr.blk[:]) {
			if p.any() {
				return nil, ferr(hoff, "extended header not followed by an entry", nil)
			}
			n, err := io.ReadFull(tr.r, tr.blk[:])
			tr.off += int64(n)
			switch {
			case err == io.EOF:
				return nil, io.EOF
			case err != nil:
				return nil, tr.ioErr(err, "end-of-archive marker")
			case isZero(tr.blk[:]):
				return nil, io.EOF
			}
			return nil, ferr(hoff+blockSize, "zero block followed by a non-zero block", nil)
		}
		h, err := parseHeader(&tr.blk, hoff)
		if err != nil {
			return nil, err
		}
		switch h.typ {
		case 'x', 'g':
			if p.start < 0 && h.typ == 'x' {
				p.start = hoff
			}
			data, err := tr.readSpecial(hoff, h.size, "PAX header")
			if err != nil {
				return nil, err
			}
			recs, err := parsePAX(data, hoff+blockSize)
			if err != nil {
				return nil, err
			}
			if h.typ == 'g' {
				if err := tr.setGlobal(recs, hoff); err != nil {
					return nil, err
				}
				continue
			}
			p.localLen += len(data)
			if p.localLen > MaxHeaderSize {
				return nil, ferr(hoff, "PAX headers of one entry larger than 1 MiB", p.localLen)
			}
			p.local = append(p.local, recs...)
			continue
		case 'L', 'K':
			if p.start < 0 {
				p.start = hoff
			}
			data, err := tr.readSpecial(hoff, h.size, "GNU long name header")
			if err != nil {
				return nil, err
			}
			s := cstring(data)
			if h.typ == 'L' {
				p.longName, p.hasName = s, true
			} else {
				p.longLink, p.hasLink = s, true
			}
			continue
		case 'V':
			// A GNU volume label: not a file. Skip it and its data.
			if err := tr.checkSize(h, h.size); err != nil {
				return nil, err
			}
			if err := tr.discard(h.size + blockPad(h.size)); err != nil {
				return nil, tr.ioErr(err, "volume header data")
			}
			continue
		case 'M':
			return nil, ferr(hoff, "GNU multivolume continuation entries are not supported", h.name)
		}
		if p.start < 0 {
			p.start = hoff
		}
		return tr.makeEntry(h, &p)
	}
}

func (tr *Reader) checkSize(h *header, size int64) error {
	if size < 0 || size > math.MaxInt64-tr.off-2*blockSize {
		return ferr(h.off, "entry size out of range", size)
	}
	return nil
}

// setGlobal merges the records of a global header into those in force: an
// empty value deletes the record.
func (tr *Reader) setGlobal(recs []paxRec, hoff int64) error {
	m := make(map[string]int, len(tr.global)+len(recs))
	var out []paxRec
	for _, r := range append(tr.global[:len(tr.global):len(tr.global)], recs...) {
		if i, ok := m[r.k]; ok {
			out[i].v = r.v
			continue
		}
		m[r.k] = len(out)
		out = append(out, r)
	}
	total := 0
	kept := out[:0]
	for _, r := range out {
		if r.v != "" {
			kept = append(kept, r)
			total += len(r.k) + len(r.v)
		}
	}
	if total > MaxHeaderSize {
		return ferr(hoff, "global PAX records larger than 1 MiB", total)
	}
	tr.global = kept
	return nil
}

// effective merges global and local records: one per key, in the position
// of its first appearance, with the last value.
func (tr *Reader) effective(local []paxRec) []paxRec {
	if len(tr.global) == 0 && len(local) == 0 {
		return nil
	}
	m := make(map[string]int, len(tr.global)+len(local))
	out := make([]paxRec, 0, len(tr.global)+len(local))
	for _, list := range [][]paxRec{tr.global, local} {
		for _, r := range list {
			if i, ok := m[r.k]; ok {
				out[i].v = r.v
				continue
			}
			m[r.k] = len(out)
			out = append(out, r)
		}
	}
	return out
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// parseNumeric parses a numeric header field: base-256 (two's complement,
// big endian, the first bit set) or octal padded with spaces and NULs.
func parseNumeric(b []byte) (int64, bool) {
	if len(b) > 0 && b[0]&0x80 != 0 {
		var inv byte
		if b[0]&0x40 != 0 {
			inv = 0xff
		}
		var x uint64
		for i, c := range b {
			c ^= inv
			if i == 0 {
				c &= 0x7f
			}
			if x>>56 != 0 {
				return 0, false
			}
			x = x<<8 | uint64(c)
		}
		if x>>63 != 0 {
			return 0, false
		}
		if inv == 0xff {
			return ^int64(x), true
		}
		return int64(x), true
	}
	b = bytes.Trim(b, " \x00")
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	var x int64
	for _, c := range b {
		if c < '0' || c > '7' || x > math.MaxInt64>>3 {
			return 0, false
		}
		x = x<<3 | int64(c-'0')
	}
	return x, true
}

// Header field positions.
const (
	offName     = 0
	offMode     = 100
	offUID      = 108
	offGID      = 116
	offSize     = 124
	offMtime    = 136
	offChksum   = 148
	offType     = 156
	offLinkname = 157
	offMagic    = 257
	offUname    = 265
	offGname    = 297
	offDevmajor = 329
	offDevminor = 337
	offPrefix   = 345
	// GNU
	offGNUSparse   = 386
	offGNUExtended = 482
	offGNURealSize = 483
)

func parseHeader(b *[blockSize]byte, off int64) (*header, error) {
	stored, ok := parseNumeric(b[offChksum : offChksum+8])
	var uns, sig int64
	for i, c := range b {
		if i >= offChksum && i < offChksum+8 {
			c = ' '
		}
		uns += int64(c)
		sig += int64(int8(c))
	}
	if !ok || (stored != uns && stored != sig) {
		return nil, ferr(off, "header checksum mismatch", strconv.Quote(string(b[offChksum:offChksum+8]))+" computed "+strconv.FormatInt(uns, 8))
	}
	h := &header{off: off, typ: b[offType]}
	var bad string
	num := func(field string, at, n int) int64 {
		v, ok := parseNumeric(b[at : at+n])
		if !ok && bad == "" {
			bad = field
		}
		return v
	}
	h.mode = num("mode", offMode, 8)
	h.uid = num("uid", offUID, 8)
	h.gid = num("gid", offGID, 8)
	h.size = num("size", offSize, 12)
	h.mtime = num("mtime", offMtime, 12)
	name := cstring(b[offName : offName+100])
	h.linkname = cstring(b[offLinkname : offLinkname+100])

	magic := string(b[offMagic : offMagic+8])
	ustar := magic[:6] == "ustar\x00"
	h.gnu = magic == "ustar  \x00"
	if ustar || h.gnu {
		h.uname = cstring(b[offUname : offUname+32])
		h.gname = cstring(b[offGname : offGname+32])
		h.devmajor = num("devmajor", offDevmajor, 8)
		h.devminor = num("devminor", offDevminor, 8)
	}
	if ustar {
		plen := 155
		if string(b[508:512]) == "tar\x00" { // star: prefix, atime, ctime
			plen = 131
		}
		if prefix := cstring(b[offPrefix : offPrefix+plen]); prefix != "" {
			name = prefix + "/" + name
		}
	}
	h.name = name
	if h.typ == 'S' {
		if !h.gnu {
			return nil, ferr(off, "GNU sparse entry without GNU magic", nil)
		}
		h.realSize = num("realsize", offGNURealSize, 12)
		frags, ext, err := parseSparseBlock(b[offGNUSparse:offGNUExtended+1], 4, off, nil)
		if err != nil {
			return nil, err
		}
		h.sparse, h.isExtended = frags, ext
	}
	if bad != "" {
		return nil, ferr(off, "bad number in header field "+bad, nil)
	}
	if h.size < 0 {
		return nil, ferr(off, "negative size", h.size)
	}
	return h, nil
}

// parseSparseBlock parses n old-GNU sparse entries (24 bytes each) from b,
// followed by the isextended byte, appending to frags.
func parseSparseBlock(b []byte, n int, off int64, frags []Fragment) ([]Fragment, bool, error) {
	for i := range n {
		e := b[i*24 : i*24+24]
		if e[0] == 0 {
			break
		}
		o, ok1 := parseNumeric(e[:12])
		l, ok2 := parseNumeric(e[12:])
		if !ok1 || !ok2 {
			return nil, false, ferr(off, "bad number in GNU sparse map", nil)
		}
		if len(frags) >= MaxFragments {
			return nil, false, ferr(off, "sparse map with more than 1M fragments", nil)
		}
		frags = append(frags, Fragment{o, l})
	}
	return frags, b[n*24] != 0, nil
}

// parsePAX parses the records of a PAX header whose data starts at base.
// GNU sparse 0.0 offset/numbytes pairs are folded into GNU.sparse.map.
func parsePAX(data []byte, base int64) ([]paxRec, error) {
	var recs []paxRec
	var sp []string
	for pos := 0; pos < len(data); {
		roff := base + int64(pos)
		rest := data[pos:]
		sp0 := bytes.IndexByte(rest, ' ')
		if sp0 <= 0 || sp0 > 8 {
			return nil, ferr(roff, "PAX record without a length", nil)
		}
		n := 0
		for _, c := range rest[:sp0] {
			if c < '0' || c > '9' {
				return nil, ferr(roff, "bad PAX record length", string(rest[:sp0]))
			}
			n = n*10 + int(c-'0')
		}
		if n <= sp0+1 || n > len(rest) {
			return nil, ferr(roff, "bad PAX record length", n)
		}
		if rest[n-1] != '\n' {
			return nil, ferr(roff, "PAX record not terminated by a newline", n)
		}
		k, v, ok := strings.Cut(string(rest[sp0+1:n-1]), "=")
		if !ok || k == "" {
			return nil, ferr(roff, "PAX record without a keyword", nil)
		}
		if strings.IndexByte(k, 0) >= 0 {
			return nil, ferr(roff, "NUL in PAX keyword", k)
		}
		switch k {
		case "path", "linkpath", "uname", "gname":
			if strings.IndexByte(v, 0) >= 0 {
				return nil, ferr(roff, "NUL in PAX record "+k, nil)
			}
		case "GNU.sparse.offset", "GNU.sparse.numbytes":
			want := "GNU.sparse.offset"
			if len(sp)%2 == 1 {
				want = "GNU.sparse.numbytes"
			}
			if k != want || strings.IndexByte(v, ',') >= 0 {
				return nil, ferr(roff, "GNU sparse 0.0 records out of order", k)
			}
			sp = append(sp, v)
			pos += n
			continue
		}
		recs = append(recs, paxRec{k, v})
		pos += n
	}
	if len(sp) > 0 {
		recs = append(recs, paxRec{"GNU.sparse.map", strings.Join(sp, ",")})
	}
	return recs, nil
}

func parsePAXTime(s string) (int64, uint32, bool) {
	ss, sn, frac := strings.Cut(s, ".")
	secs, err := strconv.ParseInt(ss, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	if !frac {
		return secs, 0, true
	}
	var ns int64
	for i := 0; i < len(sn); i++ {
		c := sn[i]
		if c < '0' || c > '9' {
			return 0, 0, false
		}
		if i < 9 {
			ns = ns*10 + int64(c-'0')
		}
	}
	for i := len(sn); i < 9; i++ {
		ns *= 10
	}
	if strings.HasPrefix(ss, "-") && ns > 0 {
		if secs == math.MinInt64 {
			return 0, 0, false
		}
		secs--
		ns = 1e9 - ns
	}
	return secs, uint32(ns), true
}

// cleanName cleans an archive path: no leading "/" or "./", no empty or "."
// components, no trailing "/"; "." when nothing is left. ok is false for a
// ".." component.
func cleanName(p string) (string, bool) {
	clean := p != ""
	for rest := p; rest != "" && clean; {
		var c string
		var more bool
		c, rest, more = strings.Cut(rest, "/")
		switch {
		case c == "" || c == ".":
			clean = false
		case c == "..":
			return "", false
		case more && rest == "":
			clean = false // trailing slash
		}
	}
	if clean {
		return p, true
	}
	var b strings.Builder
	for rest := p; rest != ""; {
		var c string
		c, rest, _ = strings.Cut(rest, "/")
		switch c {
		case "", ".":
			continue
		case "..":
			return "", false
		}
		if b.Len() > 0 {
			b.WriteByte('/')
		}
		b.WriteString(c)
	}
	if b.Len() == 0 {
		return ".", true
	}
	return b.String(), true
}

// unescapeURL decodes %XX escapes (libarchive's xattr names).
func unescapeURL(s string) (string, bool) {
	if strings.IndexByte(s, '%') < 0 {
		return s, true
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b = append(b, s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		h, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", false
		}
		b = append(b, byte(h))
		i += 2
	}
	return string(b), true
}

func (tr *Reader) makeEntry(h *header, p *pending) (*Entry, error) {
	e := &Entry{
		Header:  p.start,
		UID:     h.uid,
		GID:     h.gid,
		Uname:   h.uname,
		Gname:   h.gname,
		ModTime: h.mtime,
	}
	if h.mode < 0 || h.mode > math.MaxUint32 {
		return nil, ferr(h.off, "mode out of range", h.mode)
	}
	e.Mode = uint32(h.mode) & 07777
	name, linkname, size := h.name, h.linkname, h.size
	recs := tr.effective(p.local)
	var xidx map[string]int
	for _, r := range recs {
		var err error
		k, v := r.k, r.v
		if v == "" {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				xidx = e.addXattr(xidx, x, nil)
			} else if x, ok := strings.CutPrefix(k, "LIBARCHIVE.xattr."); ok {
				if x, ok = unescapeURL(x); !ok {
					return nil, ferr(p.start, "bad PAX record", k)
				}
				xidx = e.addXattr(xidx, x, nil)
			}
			continue // a standard keyword with an empty value: the header field applies
		}
		switch k {
		case "path":
			name = v
		case "linkpath":
			linkname = v
		case "uname":
			e.Uname = v
		case "gname":
			e.Gname = v
		case "uid":
			e.UID, err = strconv.ParseInt(v, 10, 64)
		case "gid":
			e.GID, err = strconv.ParseInt(v, 10, 64)
		case "size":
			size, err = strconv.ParseInt(v, 10, 64)
			if err == nil && size < 0 {
				err = errors.New("negative")
			}
		case "mtime":
			var ok bool
			if e.ModTime, e.ModTimeNsec, ok = parsePAXTime(v); !ok {
				err = errors.New("bad time")
			}
		default:
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				xidx = e.addXattr(xidx, x, []byte(v))
			} else if x, ok := strings.CutPrefix(k, "LIBARCHIVE.xattr."); ok {
				var val []byte
				if x, ok = unescapeURL(x); ok {
					val, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(v, "="))
				}
				if !ok || err != nil {
					return nil, ferr(p.start, "bad PAX record", k)
				}
				xidx = e.addXattr(xidx, x, val)
			}
		}
		if err != nil {
			return nil, ferr(p.start, "bad PAX record "+k, v)
		}
	}
	if len(recs) > 0 {
		e.PAX = make(map[string]string, len(recs))
		for _, r := range recs {
			e.PAX[r.k] = r.v
		}
	}
	if p.hasName {
		name = p.longName
	}
	if p.hasLink {
		linkname = p.longLink
	}

	// Sparse PAX formats.
	var frags []Fragment
	sparse, sparse10 := false, false
	if h.typ == 'S' {
		sparse = true
		frags = h.sparse
		e.Size = h.realSize
	} else if e.PAX != nil {
		major, minor := e.PAX["GNU.sparse.major"], e.PAX["GNU.sparse.minor"]
		_, hasMap := e.PAX["GNU.sparse.map"]
		switch {
		case major == "0" && (minor == "0" || minor == "1"):
			sparse = true
		case major == "1" && minor == "0":
			sparse, sparse10 = true, true
		case major != "" || minor != "":
			return nil, ferr(p.start, "unsupported GNU sparse format version", major+"."+minor)
		case hasMap:
			sparse = true
		}
		if sparse {
			if n := e.PAX["GNU.sparse.name"]; n != "" {
				name = n
			}
			rs := e.PAX["GNU.sparse.size"]
			if rs == "" {
				rs = e.PAX["GNU.sparse.realsize"]
			}
			e.Size = size
			if rs != "" {
				var err error
				e.Size, err = strconv.ParseInt(rs, 10, 64)
				if err != nil || e.Size < 0 {
					return nil, ferr(p.start, "bad GNU sparse real size", rs)
				}
			}
			if !sparse10 {
				var err error
				if frags, err = parseMap01(e.PAX, p.start); err != nil {
					return nil, err
				}
			}
		}
	}

	// Type normalization; what is stored.
	stored := size
	switch h.typ {
	case '0', '7', 'S':
		e.Type = TypeReg
	case 0:
		e.Type = TypeReg
		if strings.HasSuffix(name, "/") {
			e.Type = TypeDir
		}
	case '1', '2', '3', '4', '5', '6':
		e.Type = h.typ
		stored = 0 // header-only types, as archive/tar
	case 'D':
		e.Type = TypeDir // the dumpdir listing is skipped
	default:
		return nil, ferr(h.off, "unsupported entry type", strconv.QuoteRune(rune(h.typ)))
	}
	if err := tr.checkSize(h, stored); err != nil {
		return nil, err
	}
	if sparse && e.Type != TypeReg {
		return nil, ferr(p.start, "sparse map on a non-regular entry", strconv.QuoteRune(rune(h.typ)))
	}

	var ok bool
	if e.Name, ok = cleanName(name); !ok {
		return nil, ferr(h.off, "path with a .. component", name)
	}
	switch e.Type {
	case TypeLink:
		if e.Linkname, ok = cleanName(linkname); !ok {
			return nil, ferr(h.off, "hard link target with a .. component", linkname)
		}
		if linkname == "" {
			return nil, ferr(h.off, "hard link without a target", nil)
		}
	case TypeSymlink:
		e.Linkname = linkname
	case TypeChar, TypeBlock:
		if h.devmajor > math.MaxUint32 || h.devminor > math.MaxUint32 || h.devmajor < 0 || h.devminor < 0 {
			return nil, ferr(h.off, "device number out of range", [2]int64{h.devmajor, h.devminor})
		}
		e.Devmajor, e.Devminor = uint32(h.devmajor), uint32(h.devminor)
	}

	// Old GNU sparse extension blocks follow the header.
	if h.typ == 'S' && h.isExtended {
		ext := true
		for blocks := 0; ext; blocks++ {
			boff := tr.off
			if blocks > MaxFragments/21+1 {
				return nil, ferr(boff, "sparse map with more than 1M fragments", nil)
			}
			if err := tr.readBlock("GNU sparse extension block"); err != nil {
				return nil, err
			}
			var err error
			if frags, ext, err = parseSparseBlock(tr.blk[:], 21, boff, frags); err != nil {
				return nil, err
			}
		}
	}
	pad := blockPad(stored)
	if sparse10 {
		var used int64
		var err error
		if frags, used, err = tr.readMap10(stored); err != nil {
			return nil, err
		}
		stored -= used
	}
	e.Offset = tr.off
	if sparse {
		var sum int64
		var err error
		if e.Sparse, sum, err = checkFragments(frags, e.Size, e.Offset); err != nil {
			return nil, err
		}
		if sum != stored {
			return nil, ferr(e.Offset, "sparse fragments do not add up to the stored data", [2]int64{sum, stored})
		}
	} else if e.Type == TypeReg {
		e.Size = stored
	}
	if e.Type == TypeReg {
		e.DataSize = stored
		tr.remain = stored
		tr.skip = pad
	} else {
		tr.remain = 0
		tr.skip = stored + pad
	}
	return e, nil
}

func (e *Entry) addXattr(idx map[string]int, name string, val []byte) map[string]int {
	if val == nil {
		val = []byte{}
	}
	if idx == nil {
		idx = make(map[string]int)
	}
	if i, ok := idx[name]; ok {
		e.Xattrs[i].Value = val
		return idx
	}
	idx[name] = len(e.Xattrs)
	e.Xattrs = append(e.Xattrs, Xattr{Name: name, Value: val})
	return idx
}

// parseMap01 reads a GNU sparse 0.0/0.1 map from GNU.sparse.map (and
// checks GNU.sparse.numblocks when present).
func parseMap01(pax map[string]string, off int64) ([]Fragment, error) {
	m := pax["GNU.sparse.map"]
	var nums []string
	if m != "" {
		nums = strings.Split(m, ",")
	}
	if len(nums)%2 != 0 {
		return nil, ferr(off, "GNU sparse map with an odd number of values", len(nums))
	}
	if nb, ok := pax["GNU.sparse.numblocks"]; ok {
		n, err := strconv.ParseInt(nb, 10, 64)
		if err != nil || n != int64(len(nums)/2) {
			return nil, ferr(off, "GNU.sparse.numblocks does not match GNU.sparse.map", nb)
		}
	}
	if len(nums)/2 > MaxFragments {
		return nil, ferr(off, "sparse map with more than 1M fragments", len(nums)/2)
	}
	frags := make([]Fragment, 0, len(nums)/2)
	for i := 0; i < len(nums); i += 2 {
		o, err1 := strconv.ParseInt(nums[i], 10, 64)
		l, err2 := strconv.ParseInt(nums[i+1], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, ferr(off, "bad number in GNU sparse map", nums[i]+","+nums[i+1])
		}
		frags = append(frags, Fragment{o, l})
	}
	return frags, nil
}

// readMap10 reads a GNU sparse 1.0 map from the start of the entry's data:
// newline-terminated decimal numbers (count, then offset/length pairs),
// padded to a block. It returns the fragments and the bytes used.
func (tr *Reader) readMap10(stored int64) ([]Fragment, int64, error) {
	var (
		frags  []Fragment
		count  int64 = -1
		cur    int64
		digits int
		first  bool
		pend   int64
		used   int64
	)
	for {
		boff := tr.off
		if used+blockSize > stored {
			return nil, 0, ferr(boff, "GNU sparse 1.0 map runs past the entry's data", stored)
		}
		if err := tr.readBlock("GNU sparse 1.0 map"); err != nil {
			return nil, 0, err
		}
		used += blockSize
		for i, c := range tr.blk {
			if c >= '0' && c <= '9' {
				d := int64(c - '0')
				if cur > (math.MaxInt64-d)/10 {
					return nil, 0, ferr(boff+int64(i), "number out of range in GNU sparse 1.0 map", nil)
				}
				cur = cur*10 + d
				digits++
				continue
			}
			if c != '\n' || digits == 0 {
				return nil, 0, ferr(boff+int64(i), "bad character in GNU sparse 1.0 map", strconv.QuoteRune(rune(c)))
			}
			v := cur
			cur, digits = 0, 0
			switch {
			case count < 0:
				if v > MaxFragments {
					return nil, 0, ferr(boff+int64(i), "sparse map with more than 1M fragments", v)
				}
				count = v
			case !first:
				pend, first = v, true
			default:
				frags = append(frags, Fragment{pend, v})
				first = false
			}
			if count >= 0 && int64(len(frags)) == count {
				if frags == nil {
					frags = []Fragment{}
				}
				return frags, used, nil
			}
		}
	}
}

// checkFragments validates a sparse map against the real size and returns
// the non-empty fragments and the sum of their lengths.
func checkFragments(frags []Fragment, size, off int64) ([]Fragment, int64, error) {
	out := make([]Fragment, 0, len(frags))
	var end, sum int64
	for _, f := range frags {
		switch {
		case f.Offset < 0 || f.Length < 0 || f.Offset > math.MaxInt64-f.Length:
			return nil, 0, ferr(off, "sparse fragment out of range", f)
		case f.Offset < end:
			return nil, 0, ferr(off, "sparse fragments out of order or overlapping", f)
		case f.Offset+f.Length > size:
			return nil, 0, ferr(off, "sparse fragment beyond the real size", f)
		}
		end = f.Offset + f.Length
		if f.Length > 0 {
			out = append(out, f)
			sum += f.Length
		}
	}
	return out, sum, nil
}
