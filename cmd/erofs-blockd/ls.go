package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

// lsEntry has the same JSON shape as internal/testtree.Entry, so a test can
// compare an image listing with a source tree.
type lsEntry struct {
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
	Layout string            `json:"layout"`
}

func runLs(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("ls", "[flags] [IMAGE] [PATH]", stderr)
	var img imageFlags
	img.register(fs)
	recursive := fs.BoolP("recursive", "R", false, "list directories recursively")
	withSHA := fs.Bool("sha256", false, "read every regular file and print the sha256 of its content")
	withX := fs.Bool("xattrs", false, "include extended attributes")
	asJSON := fs.Bool("json", false, "print a JSON array")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	pos := fs.Args()
	var imgPos []string
	if len(img.blobs) == 0 && len(pos) > 0 {
		imgPos, pos = pos[:1], pos[1:]
	}
	if len(pos) > 1 {
		fmt.Fprintln(stderr, "erofs-blockd ls: more than one PATH")
		return exitUnusable
	}
	root := "/"
	if len(pos) == 1 {
		root = "/" + strings.Trim(pos[0], "/")
	}
	paths, err := img.resolve(imgPos)
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd ls:", err)
		return exitUnusable
	}
	im, files, err := openImage(paths)
	if err != nil {
		fmt.Fprintln(stderr, "erofs-blockd ls:", err)
		return exitUnusable
	}
	defer files.Close()
	start, err := im.Lookup(root)
	if err != nil {
		fmt.Fprintf(stderr, "erofs-blockd ls: %s: %v\n", root, err)
		return exitUnusable
	}
	var out []lsEntry
	add := func(path string, ino *erofs.Inode) error {
		e, err := describe(im, path, ino, *withSHA, *withX)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, e)
		return nil
	}
	if err := add(root, start); err != nil {
		fmt.Fprintln(stderr, "erofs-blockd ls:", err)
		return exitUnusable
	}
	if start.IsDir() {
		err = listDir(im, root, start, *recursive, 0, add)
		if err != nil {
			fmt.Fprintln(stderr, "erofs-blockd ls:", err)
			return exitUnusable
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", " ")
		if err := enc.Encode(out); err != nil {
			return exitUnusable
		}
		return exitOK
	}
	for _, e := range out {
		line := fmt.Sprintf("%-7s %04o %5d %5d %12d", e.Type, e.Mode, e.UID, e.GID, e.Size)
		if *withSHA {
			sum := e.SHA256
			if sum == "" {
				sum = "-"
			}
			line += fmt.Sprintf(" %-64s", sum)
		}
		line += " " + e.Path
		if e.Target != "" {
			line += " -> " + e.Target
		}
		if e.Rdev != "" {
			line += " [" + e.Rdev + "]"
		}
		fmt.Fprintln(stdout, line)
	}
	return exitOK
}

const maxListDepth = 4096

func listDir(im *erofs.Image, dir string, ino *erofs.Inode, recursive bool, depth int, add func(string, *erofs.Inode) error) error {
	if depth > maxListDepth {
		return fmt.Errorf("%s: directory depth beyond %d", dir, maxListDepth)
	}
	ents, err := im.ReadDir(ino)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	for _, d := range ents {
		if d.Name == "." || d.Name == ".." {
			continue
		}
		p := strings.TrimSuffix(dir, "/") + "/" + d.Name
		child, err := im.Inode(d.Nid)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if err := add(p, child); err != nil {
			return err
		}
		if recursive && child.IsDir() {
			if err := listDir(im, p, child, true, depth+1, add); err != nil {
				return err
			}
		}
	}
	return nil
}

func describe(im *erofs.Image, path string, ino *erofs.Inode, withSHA, withX bool) (lsEntry, error) {
	e := lsEntry{Path: path, Type: ino.TypeName(), Mode: ino.Mode & 0o7777, UID: ino.UID, GID: ino.GID,
		Nid: ino.Nid, Layout: ino.Layout.String()}
	switch {
	case ino.IsReg():
		e.Size, e.Nlink = ino.Size, ino.Nlink
		if withSHA {
			h := sha256.New()
			if ino.Size > 0 {
				f, err := im.OpenFile(ino)
				if err != nil {
					return e, err
				}
				if _, err := io.Copy(h, io.NewSectionReader(f, 0, ino.Size)); err != nil {
					return e, err
				}
			}
			e.SHA256 = hex.EncodeToString(h.Sum(nil))
		}
	case ino.IsSymlink():
		t, err := im.Readlink(ino)
		if err != nil {
			return e, err
		}
		e.Size, e.Target = ino.Size, t
	case ino.Mode&erofs.S_IFMT == erofs.S_IFCHR || ino.Mode&erofs.S_IFMT == erofs.S_IFBLK:
		e.Rdev = fmt.Sprintf("%d:%d", ino.Major(), ino.Minor())
	case ino.IsDir():
		e.Size = ino.Size
	}
	if withX {
		xs, err := im.Xattrs(ino)
		if err != nil {
			return e, err
		}
		for _, x := range xs {
			if e.Xattrs == nil {
				e.Xattrs = map[string]string{}
			}
			e.Xattrs[x.Name] = hex.EncodeToString(x.Value)
		}
	}
	return e, nil
}
