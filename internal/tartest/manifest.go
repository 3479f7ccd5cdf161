package tartest

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// Entry is testtree.Entry plus what tar layers also carry: the mtime
// (with nanoseconds) and the hard link group.
type Entry struct {
	testtree.Entry
	Mtime string `json:"mtime,omitempty"` // "sec.nsec"; empty for the root
	Link  string `json:"link,omitempty"`  // regular files with nlink > 1: the first path (sorted) of the group in the tree
}

// Manifest is testtree.Manifest (paths, types, modes, owners, sizes,
// contents, targets, rdevs, xattrs, nlink) with mtimes and hard link
// groups. The root's mtime is left out (a tar without a "./" entry has no
// say in it).
func Manifest(root string) ([]Entry, error) {
	base, err := testtree.Manifest(root, true)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, len(base))
	groups := map[[2]uint64]string{}
	keys := make([][2]uint64, len(base))
	for i, e := range base {
		out[i].Entry = e
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, e.Path), &st); err != nil {
			return nil, err
		}
		if e.Path != "/" {
			out[i].Mtime = fmt.Sprintf("%d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
		}
		if e.Type == "file" && st.Nlink > 1 {
			k := [2]uint64{st.Dev, st.Ino}
			keys[i] = k
			if _, ok := groups[k]; !ok {
				groups[k] = e.Path // base is sorted by path
			}
		}
	}
	for i := range out {
		if g, ok := groups[keys[i]]; ok && keys[i] != ([2]uint64{}) {
			out[i].Link = g
		}
	}
	return out, nil
}

// DiffOptions relaxes Diff for readers that do not keep everything.
type DiffOptions struct {
	NoMtime bool // do not compare mtimes
	NoLinks bool // do not compare hard link groups
}

// Diff compares manifests: testtree.Diff's checks, then mtimes and hard
// link groups. At most 50 lines.
func Diff(want, got []Entry, o DiffOptions) []string {
	var wb, gb []testtree.Entry
	for _, e := range want {
		wb = append(wb, e.Entry)
	}
	for _, e := range got {
		gb = append(gb, e.Entry)
	}
	d := testtree.Diff(wb, gb, 1000)
	g := map[string]Entry{}
	for _, e := range got {
		g[e.Path] = e
	}
	for _, w := range want {
		e, ok := g[w.Path]
		if !ok {
			continue
		}
		if !o.NoMtime && w.Mtime != e.Mtime {
			d = append(d, fmt.Sprintf("%s: mtime %s != %s", w.Path, w.Mtime, e.Mtime))
		}
		if !o.NoLinks && w.Link != e.Link {
			d = append(d, fmt.Sprintf("%s: hard link group %q != %q", w.Path, w.Link, e.Link))
		}
	}
	if len(d) > 50 {
		d = append(d[:50], fmt.Sprintf("... and %d more", len(d)-50))
	}
	return d
}

// Compare reports an error on t (and goes on) unless the tree at got
// equals the tree at want (Diff with o); it returns the number of entries
// compared.
func Compare(t testing.TB, want, got string, o DiffOptions) int {
	t.Helper()
	w, err := Manifest(want)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Manifest(got)
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(w, g, o); len(d) > 0 {
		t.Errorf("tree %s differs from %s:\n%s", got, want, strings.Join(d, "\n"))
	}
	return len(w)
}
