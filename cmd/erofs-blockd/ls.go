package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/erofs"
)

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
	im, files, err := openImage(paths, img.opener())
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
	var out []erofs.Entry
	add := func(path string, ino *erofs.Inode) error {
		e, err := im.Describe(path, ino, erofs.ListOptions{Content: *withSHA, Xattrs: *withX})
		if err != nil {
			return err
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
