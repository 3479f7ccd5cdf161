package gzran

import (
	"fmt"
	"hash/crc32"
	"io"
)

// Complete makes an index from elsewhere (a zinfo written by mkfs.erofs
// --gzinfo or SOCI, which carries no checksums) safe to read through: it
// decodes the whole gzip stream r once, verifying every member's CRC32 and
// ISIZE, checks that every point's window equals the 32 KiB of output
// before its Out, and fills in Size, CompSize and SpanCRC. A point whose In
// or Bits lie then decodes to bytes that fail their span's CRC: an error at
// read time, never wrong bytes.
func Complete(r io.Reader, ix *Index) error {
	if len(ix.Points) == 0 {
		return &FormatError{What: "index", Msg: "no points"}
	}
	b := NewBuilder(r, 1<<62) // points at member starts only: the stream check is what matters
	ring := make([]byte, WindowSize)
	var crcs []uint32
	var cur uint32
	next := 1 // the next point whose Out closes a span
	pos := int64(0)
	buf := make([]byte, 256<<10)
	// Windows that differ from the stream: an error unless the point
	// starts a member (no back-references; erofs-utils leaves stale
	// bytes there).
	var differ []int64
	checkWindow := func(p *Point) error {
		n := int64(len(p.Window))
		if n > pos || n > WindowSize {
			return &FormatError{What: "index", Off: p.Out, Msg: fmt.Sprintf("window of %d bytes at output offset %d", n, p.Out)}
		}
		for i := int64(0); i < n; i++ {
			if ring[(pos-n+i)%WindowSize] != p.Window[i] {
				differ = append(differ, p.Out)
				break
			}
		}
		return nil
	}
	for {
		n, err := b.Read(buf)
		data := buf[:n]
		for len(data) > 0 {
			k := int64(len(data))
			if next < len(ix.Points) {
				k = min(k, ix.Points[next].Out-pos)
			}
			cur = crc32.Update(cur, castagnoli, data[:k])
			for i := int64(0); i < k; i++ {
				ring[(pos+i)%WindowSize] = data[i]
			}
			pos += k
			data = data[k:]
			for next < len(ix.Points) && ix.Points[next].Out == pos {
				if werr := checkWindow(&ix.Points[next]); werr != nil {
					return werr
				}
				crcs = append(crcs, cur)
				cur = 0
				next++
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if next < len(ix.Points) {
		return &FormatError{What: "index", Off: ix.Points[next].Out, Msg: fmt.Sprintf("point at output offset %d beyond the stream's %d bytes", ix.Points[next].Out, pos)}
	}
	built, err := b.Index()
	if err != nil {
		return err
	}
	members := map[int64]bool{}
	for _, p := range built.Points {
		members[p.Out] = true
	}
	for _, out := range differ {
		if !members[out] {
			return &FormatError{What: "index", Off: out, Msg: fmt.Sprintf("the window of the point at output offset %d does not match the stream", out)}
		}
	}
	ix.Size, ix.CompSize = pos, built.CompSize
	ix.SpanCRC = append(crcs, cur)
	return ix.Validate()
}
