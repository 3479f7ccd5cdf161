package tarscan

import (
	"archive/tar"
	"bufio"
	"bytes"
	"io"
	"strconv"
	"testing"
)

func benchArchive(b *testing.B) []byte {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	data := make([]byte, 32<<10)
	for i := range 1000 {
		w.WriteHeader(&tar.Header{Name: "dir/file" + strconv.Itoa(i), Mode: 0o644, Size: int64(len(data) - i), Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.x": "v"}})
		w.Write(data[:len(data)-i])
	}
	w.Close()
	return buf.Bytes()
}

func benchScan(b *testing.B, read bool) {
	a := benchArchive(b)
	b.SetBytes(int64(len(a)))
	b.ResetTimer()
	for range b.N {
		tr := NewReader(bufio.NewReaderSize(bytes.NewReader(a), 1<<20))
		for {
			_, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if read {
				if _, err := io.Copy(io.Discard, tr); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
}

func BenchmarkNext(b *testing.B)     { benchScan(b, false) }
func BenchmarkNextRead(b *testing.B) { benchScan(b, true) }
