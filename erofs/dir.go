package erofs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io/fs"
	"strings"
)

// File types in dirents.
const (
	FtUnknown = 0
	FtReg     = 1
	FtDir     = 2
	FtChr     = 3
	FtBlk     = 4
	FtFifo    = 5
	FtSock    = 6
	FtSymlink = 7
)

// Dirent is one directory entry.
type Dirent struct {
	Name string
	Nid  uint64
	Type uint8
	Off  int64 // logical offset of the 12-byte dirent within the directory data
}

// ReadDir decodes all entries of directory ino (including "." and "..").
func (img *Image) ReadDir(ino *Inode) ([]Dirent, error) {
	var out []Dirent
	err := img.scanDir(ino, func(d Dirent) error {
		out = append(out, d)
		return nil
	})
	if err != nil {
		return nil, withNid(err, ino.Nid)
	}
	return out, nil
}

// scanDir calls fn for every dirent of ino. Offsets in errors are logical
// offsets in the directory data.
func (img *Image) scanDir(ino *Inode, fn func(Dirent) error) error {
	if !ino.IsDir() {
		return &FormatError{Off: ino.Off + 4, Rule: "not a directory", Val: fmt.Sprintf("%o", ino.Mode)}
	}
	f, err := img.OpenFile(ino)
	if err != nil {
		return err
	}
	buf := make([]byte, img.bs)
	le := binary.LittleEndian
	var prev []byte
	first := true
	for bstart := int64(0); bstart < ino.Size; bstart += img.bs {
		maxsize := int(min(img.bs, ino.Size-bstart))
		b := buf[:maxsize]
		if _, err := f.readAt(b, bstart); err != nil {
			return err
		}
		if maxsize < 12 {
			return ferr(bstart, "dirent block too small", maxsize)
		}
		nameoff0 := int(le.Uint16(b[8:]))
		if nameoff0 == 0 || nameoff0 >= int(img.bs) || nameoff0%12 != 0 {
			return ferr(bstart+8, "dirent nameoff0 invalid", nameoff0)
		}
		if nameoff0 > maxsize {
			return ferr(bstart+8, "dirent nameoff0 beyond block data", nameoff0)
		}
		n := nameoff0 / 12
		for i := 0; i < n; i++ {
			d := b[i*12:]
			nameoff := int(le.Uint16(d[8:]))
			var end int
			if i+1 < n {
				end = int(le.Uint16(d[20:]))
				if end > maxsize {
					return ferr(bstart+int64(i+1)*12+8, "dirent nameoff beyond block data", end)
				}
			} else {
				if nameoff >= maxsize {
					return ferr(bstart+int64(i)*12+8, "dirent nameoff beyond block data", nameoff)
				}
				end = nameoff
				for end < maxsize && b[end] != 0 {
					end++
				}
			}
			if nameoff < nameoff0 || nameoff > maxsize {
				return ferr(bstart+int64(i)*12+8, "dirent nameoff out of range", nameoff)
			}
			nl := end - nameoff
			if nl <= 0 {
				return ferr(bstart+int64(i)*12+8, "dirent name length 0 or negative", nl)
			}
			if nl > 255 {
				return ferr(bstart+int64(i)*12+8, "dirent name longer than 255", nl)
			}
			name := b[nameoff:end]
			// Names ascend strictly (bytewise), within and across blocks:
			// lookup is a binary search. This also bounds the work a
			// directory made of repeated blocks can cause.
			if !first && bytes.Compare(prev, name) >= 0 {
				return ferr(bstart+int64(i)*12, "dirent names not in ascending order", string(name))
			}
			prev, first = append(prev[:0], name...), false
			de := Dirent{
				Name: string(name),
				Nid:  le.Uint64(d[0:]),
				Type: d[10],
				Off:  bstart + int64(i)*12,
			}
			if err := fn(de); err != nil {
				return err
			}
		}
	}
	return nil
}

// Lookup resolves a slash-separated path from the root without following
// symlinks ("" and "/" are the root).
func (img *Image) Lookup(path string) (*Inode, error) {
	cur := img.root
	for _, part := range strings.Split(path, "/") {
		if part == "" || part == "." {
			continue
		}
		if !cur.IsDir() {
			return nil, fmt.Errorf("erofs: lookup %q: parent of %q is not a directory: %w", path, part, fs.ErrNotExist)
		}
		nid, found := uint64(0), false
		err := img.scanDir(cur, func(d Dirent) error {
			if d.Name == part {
				nid, found = d.Nid, true
				return errStop
			}
			return nil
		})
		if err != nil && err != errStop {
			return nil, withNid(err, cur.Nid)
		}
		if !found {
			return nil, fmt.Errorf("erofs: lookup %q: %q: %w", path, part, fs.ErrNotExist)
		}
		ino, err := img.Inode(nid)
		if err != nil {
			return nil, err
		}
		cur = ino
	}
	return cur, nil
}

type stopErr struct{}

func (stopErr) Error() string { return "stop" }

var errStop error = stopErr{}

// WalkFunc is called for every path found by Walk. path is "/" for the root
// and "/a/b" below it. Returning SkipDir from a directory skips its entries.
type WalkFunc func(path string, ino *Inode, d Dirent) error

// SkipDir may be returned by a WalkFunc to skip a directory's entries.
var SkipDir error = skipDirErr{}

type skipDirErr struct{}

func (skipDirErr) Error() string { return "skip this directory" }

// Walk visits the tree depth first in dirent order ("." and ".." are not
// reported). It fails on a directory reached twice (a cycle or a hard-linked
// directory) and bounds the depth.
func (img *Image) Walk(fn WalkFunc) error {
	seen := map[uint64]bool{img.root.Nid: true}
	if err := fn("/", img.root, Dirent{Name: "/", Nid: img.root.Nid, Type: FtDir}); err != nil {
		if err == SkipDir {
			return nil
		}
		return err
	}
	return img.walk("", img.root, 0, seen, fn)
}

const maxDepth = 4096

func (img *Image) walk(prefix string, dir *Inode, depth int, seen map[uint64]bool, fn WalkFunc) error {
	if depth > maxDepth {
		return &FormatError{Off: dir.Off, Rule: "directory tree too deep", Val: depth, Nid: dir.Nid, HasNid: true}
	}
	ents, err := img.ReadDir(dir)
	if err != nil {
		if prefix == "" {
			return err
		}
		return fmt.Errorf("%s: %w", prefix, err)
	}
	for _, d := range ents {
		if d.Name == "." || d.Name == ".." {
			continue
		}
		p := prefix + "/" + d.Name
		ino, err := img.Inode(d.Nid)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if ino.IsDir() {
			if seen[ino.Nid] {
				return &FormatError{Off: d.Off, Rule: "directory reached twice (cycle or hard link)", Val: p, Nid: dir.Nid, HasNid: true}
			}
			seen[ino.Nid] = true
		}
		err = fn(p, ino, d)
		if err == SkipDir {
			continue
		}
		if err != nil {
			return err
		}
		if ino.IsDir() {
			if err := img.walk(p, ino, depth+1, seen, fn); err != nil {
				return err
			}
		}
	}
	return nil
}
