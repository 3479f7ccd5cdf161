package erofs

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
)

// Entry describes one path of an image in the same terms as a source-tree
// manifest (internal/testtree.Entry has the same fields and JSON names).
type Entry struct {
	Path   string            `json:"path"`
	Type   string            `json:"type"`
	Mode   uint32            `json:"mode"`
	UID    uint32            `json:"uid"`
	GID    uint32            `json:"gid"`
	Size   int64             `json:"size"`
	Target string            `json:"target,omitempty"`
	Rdev   string            `json:"rdev,omitempty"`
	SHA256 string            `json:"sha256,omitempty"`
	Nlink  uint32            `json:"nlink,omitempty"`
	Xattrs map[string]string `json:"xattrs,omitempty"`
	Nid    uint64            `json:"nid"`
	Layout string            `json:"layout,omitempty"`
}

// ListOptions selects what List computes.
type ListOptions struct {
	Xattrs  bool // fill Xattrs (named entries only)
	Content bool // read regular files and fill SHA256
}

// List walks the image and returns one Entry per path, sorted by path.
func (img *Image) List(o ListOptions) ([]Entry, error) {
	var out []Entry
	err := img.Walk(func(p string, ino *Inode, d Dirent) error {
		e, err := img.Describe(p, ino, o)
		if err != nil {
			return err
		}
		out = append(out, e)
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, err
}

// Describe returns the Entry of inode ino reached at path p.
func (img *Image) Describe(p string, ino *Inode, o ListOptions) (Entry, error) {
	e := Entry{Path: p, Type: ino.TypeName(), Mode: ino.Mode & 0o7777, UID: ino.UID, GID: ino.GID,
		Nid: ino.Nid, Layout: ino.Layout.String()}
	switch ino.Mode & S_IFMT {
	case S_IFREG:
		e.Size, e.Nlink = ino.Size, ino.Nlink
		if o.Content {
			sum, err := img.hashFile(ino)
			if err != nil {
				return e, fmt.Errorf("%s: %w", p, err)
			}
			e.SHA256 = sum
		}
	case S_IFLNK:
		e.Size = ino.Size
		t, err := img.Readlink(ino)
		if err != nil {
			return e, fmt.Errorf("%s: %w", p, err)
		}
		e.Target = t
	case S_IFCHR, S_IFBLK:
		e.Rdev = fmt.Sprintf("%d:%d", ino.Major(), ino.Minor())
	}
	if o.Xattrs {
		xs, err := img.Xattrs(ino)
		if err != nil {
			return e, fmt.Errorf("%s: %w", p, err)
		}
		for _, x := range xs {
			if x.Name == "" {
				continue
			}
			if e.Xattrs == nil {
				e.Xattrs = map[string]string{}
			}
			e.Xattrs[x.Name] = hex.EncodeToString(x.Value)
		}
	}
	return e, nil
}

func (img *Image) hashFile(ino *Inode) (string, error) {
	f, err := img.OpenFile(ino)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, ino.Size)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
