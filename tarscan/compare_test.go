package tarscan

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// scanAll reads every entry of archive with tarscan, checking the Reader's
// own invariants, and returns the entries and each regular file's stored
// data as returned by Read.
func scanAll(t *testing.T, archive []byte, r io.Reader) ([]*Entry, [][]byte) {
	t.Helper()
	tr := NewReader(r)
	var ents []*Entry
	var datas [][]byte
	last := int64(-1)
	for {
		e, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("tarscan Next after %d entries: %v", len(ents), err)
		}
		if e.Header <= last || e.Offset < e.Header+blockSize || e.Offset%blockSize != 0 || e.Header%blockSize != 0 {
			t.Fatalf("%s: bad positions Header %d Offset %d (previous header %d)", e.Name, e.Header, e.Offset, last)
		}
		last = e.Header
		if tr.Offset() != e.Offset {
			t.Fatalf("%s: Offset() %d after Next, entry Offset %d", e.Name, tr.Offset(), e.Offset)
		}
		var data []byte
		if e.Type == TypeReg {
			data, err = io.ReadAll(tr)
			if err != nil {
				t.Fatalf("%s: Read: %v", e.Name, err)
			}
			if int64(len(data)) != e.DataSize {
				t.Fatalf("%s: Read returned %d bytes, DataSize %d", e.Name, len(data), e.DataSize)
			}
			if e.Offset+e.DataSize > int64(len(archive)) || !bytes.Equal(archive[e.Offset:e.Offset+e.DataSize], data) {
				t.Fatalf("%s: bytes at [Offset, Offset+DataSize) differ from Read", e.Name)
			}
			if e.Sparse == nil && e.DataSize != e.Size {
				t.Fatalf("%s: DataSize %d != Size %d without a sparse map", e.Name, e.DataSize, e.Size)
			}
		} else if e.DataSize != 0 || e.Sparse != nil {
			t.Fatalf("%s: type %c with DataSize %d sparse %v", e.Name, e.Type, e.DataSize, e.Sparse)
		}
		ents = append(ents, e)
		datas = append(datas, data)
	}
	if tr.Offset() > int64(len(archive)) {
		t.Fatalf("Offset() %d beyond the archive (%d)", tr.Offset(), len(archive))
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Fatalf("Next after EOF: %v", err)
	}
	return ents, datas
}

// expand turns stored data and a sparse map into the logical content.
func expand(e *Entry, stored []byte) []byte {
	if e.Sparse == nil {
		return stored
	}
	out := make([]byte, e.Size)
	pos := int64(0)
	for _, f := range e.Sparse {
		copy(out[f.Offset:f.Offset+f.Length], stored[pos:pos+f.Length])
		pos += f.Length
	}
	return out
}

func refName(s string) string {
	s = path.Clean("/" + s)
	if s == "/" {
		return "."
	}
	return s[1:]
}

func refType(h *tar.Header) byte {
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeCont, tar.TypeGNUSparse:
		return TypeReg
	case 'D':
		return TypeDir
	}
	return h.Typeflag
}

func refXattrs(t *testing.T, h *tar.Header) map[string]string {
	m := map[string]string{}
	for k, v := range h.PAXRecords {
		if n, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			m[n] = v
		}
	}
	for k, v := range h.PAXRecords {
		if n, ok := strings.CutPrefix(k, "LIBARCHIVE.xattr."); ok {
			n, err := url.PathUnescape(n)
			if err != nil {
				t.Fatal(err)
			}
			b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(v, "="))
			if err != nil {
				t.Fatal(err)
			}
			if old, ok := m[n]; ok && old != string(b) {
				t.Fatalf("%s: xattr %s differs between SCHILY and LIBARCHIVE records", h.Name, n)
			}
			m[n] = string(b)
		}
	}
	return m
}

// compareArchive checks tarscan against archive/tar on the same archive and
// returns tarscan's entries with each regular file's logical content.
// orig, when not nil, maps entry names to the original file contents.
func compareArchive(t *testing.T, archive []byte, orig map[string][]byte) ([]*Entry, map[string][]byte) {
	t.Helper()
	ents, datas := scanAll(t, archive, bufio.NewReaderSize(bytes.NewReader(archive), 1<<16))
	// The same through a reader without Discard returning short reads.
	ents2, _ := scanAll(t, archive, iotest.HalfReader(bytes.NewReader(archive)))
	if !reflect.DeepEqual(ents, ents2) {
		t.Fatalf("entries differ between a bufio.Reader and a plain reader")
	}

	ref := tar.NewReader(bytes.NewReader(archive))
	contents := map[string][]byte{}
	i := 0
	for {
		h, err := ref.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("archive/tar: %v", err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader || h.Typeflag == 'V' {
			continue
		}
		if i >= len(ents) {
			t.Fatalf("archive/tar has more entries than tarscan (%d): %s", len(ents), h.Name)
		}
		e := ents[i]
		want := &Entry{
			Name: refName(h.Name), Type: refType(h), Mode: uint32(h.Mode) & 07777,
			UID: int64(h.Uid), GID: int64(h.Gid), Uname: h.Uname, Gname: h.Gname,
			ModTime: h.ModTime.Unix(), ModTimeNsec: uint32(h.ModTime.Nanosecond()),
		}
		got := &Entry{Name: e.Name, Type: e.Type, Mode: e.Mode, UID: e.UID, GID: e.GID, Uname: e.Uname, Gname: e.Gname,
			ModTime: e.ModTime, ModTimeNsec: e.ModTimeNsec}
		switch want.Type {
		case TypeReg:
			want.Size, got.Size = h.Size, e.Size
		case TypeLink:
			want.Linkname, got.Linkname = refName(h.Linkname), e.Linkname
		case TypeSymlink:
			want.Linkname, got.Linkname = h.Linkname, e.Linkname
		case TypeChar, TypeBlock:
			want.Devmajor, want.Devminor = uint32(h.Devmajor), uint32(h.Devminor)
			got.Devmajor, got.Devminor = e.Devmajor, e.Devminor
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("entry %d:\n tarscan    %+v\n archive/tar %+v", i, got, want)
		}
		gx := map[string]string{}
		for _, x := range e.Xattrs {
			if _, dup := gx[x.Name]; dup {
				t.Errorf("%s: xattr %s twice", e.Name, x.Name)
			}
			gx[x.Name] = string(x.Value)
		}
		if wx := refXattrs(t, h); !reflect.DeepEqual(gx, wx) {
			t.Errorf("%s: xattrs %q, archive/tar %q", e.Name, gx, wx)
		}
		for k, v := range h.PAXRecords {
			if e.PAX[k] != v {
				t.Errorf("%s: PAX[%q] = %q, archive/tar %q", e.Name, k, e.PAX[k], v)
			}
		}
		if e.Type == TypeReg {
			content, err := io.ReadAll(ref)
			if err != nil {
				t.Fatalf("archive/tar read %s: %v", h.Name, err)
			}
			got := expand(e, datas[i])
			if !bytes.Equal(got, content) {
				t.Errorf("%s: content differs from archive/tar's (%d vs %d bytes)", e.Name, len(got), len(content))
			}
			if o, ok := orig[e.Name]; ok && !bytes.Equal(got, o) {
				t.Errorf("%s: content differs from the original file", e.Name)
			}
			contents[e.Name] = got
		}
		i++
	}
	if i != len(ents) {
		t.Fatalf("tarscan has %d entries, archive/tar %d", len(ents), i)
	}
	return ents, contents
}

func byName(ents []*Entry) map[string]*Entry {
	m := map[string]*Entry{}
	for _, e := range ents {
		m[e.Name] = e
	}
	return m
}

func errRule(err error) string {
	var fe *FormatError
	if errors.As(err, &fe) {
		return fe.Rule
	}
	return fmt.Sprint(err)
}
