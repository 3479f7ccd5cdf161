package verify

import (
	"bytes"
	"encoding/binary"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

type dirent struct {
	Name string
	Nid  uint64
	Type uint8
	phys int64 // byte offset of the 12-byte dirent (see physOf)
}

// dirMaxSize bounds the directory size read (names are at most 255 bytes,
// so even 2^32 entries fit far below this).
const dirMaxSize = 1 << 40

// readDir reads and checks every dirent block of dir, reporting all
// problems, and returns the usable entries (nil if the data is unreadable).
func (c *checker) readDir(dir *erofs.Inode, path *pathNode) []dirent {
	if dir.Size == 0 {
		return []dirent{}
	}
	if dir.Size > dirMaxSize {
		c.addf(path, dir.Nid, dir.Off+8, RuleInodeSize, "directory size %d too large", dir.Size)
		return nil
	}
	n := c.nodes[dir.Nid]
	ranges, ok := c.rangesOf(n)
	if !ok {
		return nil // already reported by checkInode
	}
	f, err := c.img.OpenFile(dir)
	if err != nil {
		c.addErr(path, dir.Nid, dir.Off, RuleDirentRead, err)
		return nil
	}
	bs := c.bs
	if len(c.buf) < int(bs) {
		c.buf = make([]byte, bs)
	}
	le := binary.LittleEndian
	var out []dirent
	var prev []byte
	havePrev := false
	for bstart := int64(0); bstart < dir.Size; bstart += bs {
		if c.stop.Load() {
			return nil
		}
		maxsize := int(min(bs, dir.Size-bstart))
		b := c.buf[:maxsize]
		if _, err := f.ReadAt(b, bstart); err != nil {
			c.addErr(path, dir.Nid, dir.Off, RuleDirentRead, err)
			return out
		}
		at := func(logical int64) (int64, string) { return physOf(ranges, logical) }
		if maxsize < 12 {
			o, sp := at(bstart)
			c.add(Problem{Path: path.String(), Nid: dir.Nid, Off: o, Space: sp, Rule: RuleDirentNameoff, Detail: sprintf("dirent block %d has only %d bytes", bstart/bs, maxsize)})
			continue
		}
		nameoff0 := int(le.Uint16(b[8:]))
		if nameoff0 == 0 || nameoff0 >= int(bs) || nameoff0%12 != 0 || nameoff0 > maxsize {
			o, sp := at(bstart + 8)
			c.add(Problem{Path: path.String(), Nid: dir.Nid, Off: o, Space: sp, Rule: RuleDirentNameoff, Detail: sprintf("block %d: first nameoff %d invalid (must be a non-zero multiple of 12 below %d)", bstart/bs, nameoff0, maxsize)})
			continue
		}
		cnt := nameoff0 / 12
		expect := nameoff0
		for i := 0; i < cnt; i++ {
			d := b[i*12:]
			doff := bstart + int64(i)*12
			o, sp := at(doff)
			report := func(rule, format string, a ...any) {
				c.add(Problem{Path: path.String(), Nid: dir.Nid, Off: o, Space: sp, Rule: rule, Detail: sprintf("block %d entry %d: ", bstart/bs, i) + sprintf(format, a...)})
			}
			nameoff := int(le.Uint16(d[8:]))
			if nameoff < nameoff0 || nameoff >= maxsize {
				report(RuleDirentNameoff, "nameoff %d outside [%d, %d)", nameoff, nameoff0, maxsize)
				expect = -1
				continue
			}
			if expect >= 0 && nameoff != expect {
				report(RuleDirentNameoff, "nameoff %d, names are not contiguous (previous name ends at %d)", nameoff, expect)
			}
			var end int
			if i+1 < cnt {
				end = int(le.Uint16(d[20:]))
				if end > maxsize {
					report(RuleDirentNameoff, "next nameoff %d beyond block data %d", end, maxsize)
					end = maxsize
				}
			} else {
				end = nameoff
				for end < maxsize && b[end] != 0 {
					end++
				}
				for j := end; j < maxsize; j++ {
					if b[j] != 0 {
						report(RuleDirentNameoff, "non-zero bytes after the last name")
						break
					}
				}
			}
			expect = end
			nl := end - nameoff
			if nl <= 0 {
				report(RuleDirentNameLen, "empty name (nameoff %d, end %d)", nameoff, end)
				continue
			}
			name := b[nameoff:end]
			if nl > 255 {
				report(RuleDirentNameLen, "name of %d bytes (max 255)", nl)
			}
			if bytes.IndexByte(name, '/') >= 0 {
				report(RuleDirentNameChar, "name %q contains '/'", name)
			} else if bytes.IndexByte(name, 0) >= 0 {
				report(RuleDirentNameChar, "name %q contains NUL", name)
			}
			ft := d[10]
			if ft >= 8 {
				report(RuleDirentFileType, "file_type %d (max 7)", ft)
			}
			if havePrev {
				switch cmp := bytes.Compare(prev, name); {
				case cmp == 0:
					report(RuleDirentDup, "name %q appears twice", name)
				case cmp > 0:
					report(RuleDirentOrder, "name %q sorts before the previous name %q", name, prev)
				}
			}
			prev = append(prev[:0], name...)
			havePrev = true
			out = append(out, dirent{Name: string(name), Nid: le.Uint64(d[0:]), Type: ft, phys: o})
		}
	}
	if out == nil {
		out = []dirent{}
	}
	return out
}

// physOf maps a logical offset in an inode's data to a physical offset and
// its space for problem reports.
func physOf(rs []erofs.Range, logical int64) (int64, string) {
	for _, r := range rs {
		if logical < r.Logical || logical >= r.Logical+r.Length {
			continue
		}
		in := logical - r.Logical
		switch r.Kind {
		case erofs.KindFlat, erofs.KindChunk:
			if r.Device != 0 {
				return r.Phys + in, sprintf("device %d", r.Device)
			}
			return r.Phys + in, ""
		case erofs.KindInline:
			if r.Compressed {
				return logical, "logical"
			}
			if r.InMetabox {
				return r.Phys + in, "metabox"
			}
			return r.Phys + in, ""
		}
		return logical, "logical"
	}
	return logical, "logical"
}
