package tarscan

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestTestdata checks the committed archives (made by GNU tar and bsdtar;
// they are also the fuzz seeds) against archive/tar.
func TestTestdata(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.tar")
	if len(files) == 0 {
		t.Fatal("no testdata archives")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			ents, _ := compareArchive(t, b, nil)
			if len(ents) < 3 {
				t.Errorf("only %d entries", len(ents))
			}
		})
	}
}

func FuzzReader(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.tar")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, c := range fragCases {
		for _, v := range []string{"old", "0.0", "0.1", "1.0"} {
			var tb tarBuf
			packed, _ := sparseData(c.frags, c.size)
			if v == "old" {
				tb.oldGNUSparse("sp", c.frags, c.size, packed)
			} else {
				tb.paxSparse(v, "sp", c.frags, c.size, packed)
			}
			f.Add(tb.end())
		}
	}
	var tb tarBuf
	tb.pax('g', "uname", "g", "SCHILY.xattr.user.a", "1")
	tb.pax('x', "LIBARCHIVE.xattr.user.b", "AAE", "mtime", "-1.5", "path", "p")
	tb.add(hdr{name: "x", typ: '0', magic: magicUSTAR, size: 3}, []byte("abc"))
	f.Add(tb.end())
	f.Fuzz(func(t *testing.T, b []byte) {
		tr := NewReader(bytes.NewReader(b))
		buf := make([]byte, 1000)
		for i := 0; ; i++ {
			e, err := tr.Next()
			if err != nil {
				var fe *FormatError
				if err != io.EOF && !errors.As(err, &fe) {
					t.Fatalf("error of type %T: %v", err, err)
				}
				if fe != nil && (fe.Off < 0 || fe.Off > int64(len(b))) {
					t.Fatalf("error offset %d outside the input (%d)", fe.Off, len(b))
				}
				return
			}
			if e.Offset%blockSize != 0 || e.Offset > int64(len(b)) || e.Header < 0 || e.Header >= e.Offset || e.DataSize < 0 {
				t.Fatalf("bad positions %+v", e)
			}
			if e.Sparse != nil {
				var sum, end int64
				for _, fr := range e.Sparse {
					if fr.Offset < end || fr.Length <= 0 || fr.Offset+fr.Length > e.Size {
						t.Fatalf("bad fragment %v in %+v", fr, e)
					}
					end = fr.Offset + fr.Length
					sum += fr.Length
				}
				if sum != e.DataSize {
					t.Fatalf("fragments sum %d, DataSize %d", sum, e.DataSize)
				}
			} else if e.Type == TypeReg && e.DataSize != e.Size {
				t.Fatalf("DataSize %d != Size %d", e.DataSize, e.Size)
			}
			pos := e.Offset
			for i%2 == 0 { // read every other entry, skip the rest
				n, err := tr.Read(buf)
				if !bytes.Equal(buf[:n], b[pos:pos+int64(n)]) {
					t.Fatalf("Read at %d returned other bytes than the input's", pos)
				}
				pos += int64(n)
				if err == io.EOF {
					if pos != e.Offset+e.DataSize {
						t.Fatalf("EOF after %d bytes, DataSize %d", pos-e.Offset, e.DataSize)
					}
					break
				}
				if err != nil {
					return
				}
			}
		}
	})
}
