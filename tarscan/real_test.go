package tarscan

import (
	"bytes"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func run(t *testing.T, okCodes []int, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			for _, c := range okCodes {
				if ee.ExitCode() == c {
					return
				}
			}
		}
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian packages: tar, attr, libarchive-tools, coreutils)", tool)
		}
	}
}

func mkdev(major, minor uint32) int {
	return int(minor&0xff | (major&0xfff)<<8 | (minor&^0xff)<<12)
}

type tree struct {
	dir   string            // contains "root"
	files map[string][]byte // entry name -> original content
}

// buildTree makes a source tree exercising every entry type tar can store.
func buildTree(t *testing.T) *tree {
	t.Helper()
	need(t, "tar", "setfattr", "truncate", "dd")
	if os.Geteuid() != 0 {
		t.Skip("needs root (mknod, chown)")
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	tr := &tree{dir: dir, files: map[string][]byte{}}
	rng := rand.New(rand.NewSource(1))
	rnd := func(n int) []byte { b := make([]byte, n); rng.Read(b); return b }
	write := func(name string, data []byte, mode os.FileMode) {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		tr.files["root/"+name] = data
	}
	write("small.txt", []byte("hello\n"), 0o644)
	write("empty", nil, 0o600)
	write("big.bin", rnd(300000), 0o644)
	write("exact512", rnd(512), 0o640)
	write("sub/suid", []byte("#!/bin/sh\n"), 0o4755|os.ModeSetuid)
	write("sub/sgid", []byte("x"), 0o2711|os.ModeSetgid)
	if err := os.Chmod(filepath.Join(root, "sub/suid"), 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "sub/sgid"), 0o711|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	long100 := "l" + strings.Repeat("n", 120)
	write(long100, []byte("long name"), 0o644)
	deep := strings.Repeat(strings.Repeat("a", 60)+"/", 5) + strings.Repeat("f", 70)
	write(deep, rnd(1000), 0o644)
	write("xattr.txt", []byte("with xattrs"), 0o644)
	write("bigid", []byte("ids"), 0o644)
	write("nsec", []byte("n"), 0o644)
	write("old", []byte("o"), 0o644)
	if err := os.Mkdir(filepath.Join(root, "sticky"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "sticky"), 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink("small.txt", filepath.Join(root, "link")))
	must(os.Symlink(strings.Repeat("t/", 70)+"target", filepath.Join(root, "longlink")))
	must(os.Link(filepath.Join(root, "small.txt"), filepath.Join(root, "hard")))
	must(os.Link(filepath.Join(root, "big.bin"), filepath.Join(root, "sub", strings.Repeat("h", 110))))
	must(syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644))
	must(syscall.Mknod(filepath.Join(root, "null"), syscall.S_IFCHR|0o666, mkdev(1, 3)))
	must(os.Chmod(filepath.Join(root, "null"), 0o666))
	must(syscall.Mknod(filepath.Join(root, "blk"), syscall.S_IFBLK|0o660, mkdev(7, 300)))
	must(os.Lchown(filepath.Join(root, "bigid"), 4000000, 4000001))
	run(t, nil, "setfattr", "-n", "user.a", "-v", "1", filepath.Join(root, "xattr.txt"))
	run(t, nil, "setfattr", "-n", "user.bin", "-v", "0x00ff10", filepath.Join(root, "xattr.txt"))
	run(t, nil, "setfattr", "-n", "user.long", "-v", strings.Repeat("v", 300), filepath.Join(root, "xattr.txt"))
	run(t, nil, "setfattr", "-n", "user.dir", "-v", "d", filepath.Join(root, "sub"))

	// Sparse files: truncate, then dd at offsets.
	data := filepath.Join(dir, "data")
	must(os.WriteFile(data, rnd(1<<20), 0o644))
	sparse := func(name string, size int64, at ...[2]int64) {
		p := filepath.Join(root, name)
		run(t, nil, "truncate", "-s", itoa(size), p)
		for _, a := range at {
			run(t, nil, "dd", "if="+data, "of="+p, "bs=4096", "iflag=count_bytes", "oflag=seek_bytes", "conv=notrunc",
				"seek="+itoa(a[0]), "count="+itoa(a[1]), "status=none")
		}
		b, err := os.ReadFile(p)
		must(err)
		tr.files["root/"+name] = b
	}
	sparse("sparse1", 10<<20, [2]int64{0, 4096}, [2]int64{1 << 20, 8192}, [2]int64{5<<20 + 123, 1000}, [2]int64{10<<20 - 512, 512})
	sparse("hole", 3<<20)
	var many [][2]int64
	for i := int64(0); i < 40; i++ {
		many = append(many, [2]int64{i * 65536, 4096})
	}
	sparse("sparse-many", 40*65536+100, many...)
	sparse("sparse-tail", 1<<20, [2]int64{12345, 7})

	// Times last (creating entries changes directory mtimes).
	must(os.Chtimes(filepath.Join(root, "nsec"), time.Now(), time.Date(2021, 3, 4, 5, 6, 7, 123456789, time.UTC)))
	must(os.Chtimes(filepath.Join(root, "old"), time.Now(), time.Date(1960, 1, 1, 0, 0, 0, 500000000, time.UTC)))
	must(os.Chtimes(filepath.Join(root, "sub"), time.Now(), time.Date(2001, 1, 1, 0, 0, 0, 1, time.UTC)))
	return tr
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestRealArchives(t *testing.T) {
	tr := buildTree(t)
	type arch struct {
		name string
		ok   []int // accepted exit codes (formats that cannot hold everything)
		cmd  []string
	}
	out := func(n string) string { return filepath.Join(tr.dir, n+".tar") }
	gnu := func(n string, ok []int, args ...string) arch {
		return arch{n, ok, append([]string{"tar", "-C", tr.dir, "-cf", out(n)}, append(args, "root")...)}
	}
	archs := []arch{
		gnu("gnu", nil, "--format=gnu", "--sparse"),
		gnu("oldgnu", nil, "--format=oldgnu", "--sparse"),
		gnu("pax", nil, "--format=pax", "--sparse", "--xattrs", "--xattrs-include=*"),
		gnu("pax00", nil, "--format=pax", "--sparse", "--sparse-version=0.0"),
		gnu("pax01", nil, "--format=pax", "--sparse", "--sparse-version=0.1"),
		gnu("pax10", nil, "--format=pax", "--sparse", "--sparse-version=1.0", "--xattrs", "--xattrs-include=*"),
		gnu("ustar", []int{2}, "--format=ustar"),
		gnu("v7", []int{2}, "--format=v7"),
		{"gnu-dot", nil, []string{"tar", "-C", filepath.Join(tr.dir, "root"), "-cf", out("gnu-dot"), "--format=gnu", "--sparse", "."}},
		{"gnu-abs", nil, []string{"tar", "-P", "-cf", out("gnu-abs"), "--format=gnu", filepath.Join(tr.dir, "root", "small.txt")}},
		{"gnu-incremental", nil, []string{"tar", "-C", tr.dir, "-cf", out("gnu-incremental"), "--format=gnu",
			"--listed-incremental=" + filepath.Join(tr.dir, "snar"), "root"}},
	}
	if _, err := os.Stat("/usr/bin/bsdtar"); err == nil {
		bsd := func(n string, ok []int, args ...string) arch {
			return arch{n, ok, append([]string{"bsdtar", "-C", tr.dir, "-cf", out(n)}, append(args, "root")...)}
		}
		archs = append(archs,
			bsd("bsd-pax", nil, "--format=pax", "--xattrs"),
			bsd("bsd-gnutar", []int{1}, "--format=gnutar"),
			bsd("bsd-ustar", []int{1}, "--format=ustar"),
		)
	} else {
		t.Log("bsdtar missing (apt libarchive-tools): bsdtar archives not tested")
	}
	for _, a := range archs {
		t.Run(a.name, func(t *testing.T) {
			run(t, a.ok, a.cmd[0], a.cmd[1:]...)
			archive, err := os.ReadFile(out(a.name))
			if err != nil {
				t.Fatal(err)
			}
			orig := tr.files
			if a.name == "gnu-dot" {
				orig = map[string][]byte{}
				for k, v := range tr.files {
					orig[strings.TrimPrefix(k, "root/")] = v
				}
			}
			ents, contents := compareArchive(t, archive, orig)
			m := byName(ents)
			switch a.name {
			case "gnu-dot":
				if m["."] == nil || m["."].Type != TypeDir {
					t.Errorf("no root entry \".\"")
				}
				return
			case "gnu-incremental":
				if m["root"] == nil || m["root"].Type != TypeDir || m["root/sub"].Type != TypeDir {
					t.Errorf("dumpdirs not reported as directories")
				}
				return
			case "gnu-abs":
				if len(ents) != 1 || strings.HasPrefix(ents[0].Name, "/") || !bytes.Equal(contents[ents[0].Name], []byte("hello\n")) {
					t.Errorf("absolute path: %+v", ents[0])
				}
				return
			}
			full := !strings.Contains(a.name, "ustar") && a.name != "v7"
			for name, data := range tr.files {
				e := m[name]
				if e != nil && e.Type == TypeLink {
					contents[name] = contents[e.Linkname]
				}
				if e == nil {
					if full {
						t.Errorf("%s missing", name)
					}
					continue
				}
				if !bytes.Equal(contents[name], data) {
					t.Errorf("%s: content differs from the original", name)
				}
			}
			if !full {
				return
			}
			check := func(name string, typ byte) *Entry {
				t.Helper()
				e := m["root/"+name]
				if e == nil {
					t.Fatalf("%s missing", name)
				}
				if e.Type != typ {
					t.Errorf("%s: type %c, want %c", name, e.Type, typ)
				}
				return e
			}
			if e := check("null", TypeChar); e.Devmajor != 1 || e.Devminor != 3 || e.Mode != 0o666 {
				t.Errorf("null: %+v", e)
			}
			if e := check("blk", TypeBlock); e.Devmajor != 7 || e.Devminor != 300 {
				t.Errorf("blk: %+v", e)
			}
			check("fifo", TypeFifo)
			if e := check("sticky", TypeDir); e.Mode != 0o1777 {
				t.Errorf("sticky: mode %o", e.Mode)
			}
			if e := check("sub/suid", TypeReg); e.Mode != 0o4755 {
				t.Errorf("suid: mode %o", e.Mode)
			}
			if e := check("sub/sgid", TypeReg); e.Mode != 0o2711 {
				t.Errorf("sgid: mode %o", e.Mode)
			}
			if e := check("bigid", TypeReg); e.UID != 4000000 || e.GID != 4000001 {
				t.Errorf("bigid: %d/%d", e.UID, e.GID)
			}
			if e := check("link", TypeSymlink); e.Linkname != "small.txt" {
				t.Errorf("link -> %q", e.Linkname)
			}
			if e := check("longlink", TypeSymlink); e.Linkname != strings.Repeat("t/", 70)+"target" {
				t.Errorf("longlink -> %q", e.Linkname)
			}
			for _, pair := range [][2]string{{"root/hard", "root/small.txt"}, {"root/sub/" + strings.Repeat("h", 110), "root/big.bin"}} {
				a, b := m[pair[0]], m[pair[1]]
				if !(a.Type == TypeLink && a.Linkname == pair[1] && b.Type == TypeReg) && !(b.Type == TypeLink && b.Linkname == pair[0] && a.Type == TypeReg) {
					t.Errorf("hard link pair %q: %+v %+v", pair, a, b)
				}
			}
			pax := strings.HasPrefix(a.name, "pax") || a.name == "bsd-pax"
			// 1960-01-01 00:00:00.5 is -315619199.5 s. libarchive writes
			// PAX times as floor seconds plus a positive fraction
			// ("-315619200.5"), which POSIX (GNU tar, archive/tar, tarscan)
			// reads as -315619200.5 s; bsdtar's gnutar cannot store it.
			wantOld := [2]int64{-315619200, 0}
			switch {
			case a.name == "bsd-pax":
				wantOld = [2]int64{-315619201, 5e8}
			case a.name == "bsd-gnutar":
				wantOld = [2]int64{0, 0}
			case pax:
				wantOld[1] = 5e8
			}
			if e := check("old", TypeReg); e.ModTime != wantOld[0] || int64(e.ModTimeNsec) != wantOld[1] {
				t.Errorf("old: mtime %d.%09d", e.ModTime, e.ModTimeNsec)
			}
			if e := check("nsec", TypeReg); e.ModTime != 1614834367 || (pax && e.ModTimeNsec != 123456789) {
				t.Errorf("nsec: mtime %d.%09d", e.ModTime, e.ModTimeNsec)
			}
			for _, s := range []string{"sparse1", "hole", "sparse-many", "sparse-tail"} {
				e := check(s, TypeReg)
				if a.name != "bsd-gnutar" && e.Sparse == nil {
					t.Errorf("%s: not stored sparse", s)
				}
				if e.Sparse != nil && s == "sparse-many" && len(e.Sparse) < 40 {
					t.Errorf("%s: %d fragments", s, len(e.Sparse))
				}
			}
			if a.name == "pax" || a.name == "pax10" || a.name == "bsd-pax" {
				x := check("xattr.txt", TypeReg)
				want := []Xattr{{"user.a", []byte("1")}, {"user.bin", []byte{0, 0xff, 0x10}}, {"user.long", []byte(strings.Repeat("v", 300))}}
				got := map[string]string{}
				for _, xa := range x.Xattrs {
					got[xa.Name] = string(xa.Value)
				}
				for _, w := range want {
					if got[w.Name] != string(w.Value) {
						t.Errorf("xattr %s = %q, want %q", w.Name, got[w.Name], w.Value)
					}
				}
				if d := check("sub", TypeDir); len(d.Xattrs) != 1 || d.Xattrs[0].Name != "user.dir" {
					t.Errorf("sub xattrs %q", d.Xattrs)
				}
			}
		})
	}
}

// TestGNUVolumes: a volume label ('V') is skipped; the continuation
// ('M') that starts the second volume of a multi-volume archive is refused.
func TestGNUVolumes(t *testing.T) {
	need(t, "tar")
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(3))
	for _, f := range []string{"f1", "f2"} {
		b := make([]byte, 30000)
		rng.Read(b)
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	run(t, nil, "tar", "-C", dir, "-c", "--format=gnu", "-V", "MYLABEL", "-f", p("lab.tar"), "f1", "f2")
	run(t, nil, "tar", "-C", dir, "-c", "--format=gnu", "-M", "-L", "40", "-f", p("v1.tar"), "-f", p("v2.tar"), "f1", "f2")
	lab, err := os.ReadFile(p("lab.tar"))
	if err != nil {
		t.Fatal(err)
	}
	f1, _ := os.ReadFile(p("f1"))
	f2, _ := os.ReadFile(p("f2"))
	ents, _ := compareArchive(t, lab, map[string][]byte{"f1": f1, "f2": f2})
	if len(ents) != 2 || ents[0].Name != "f1" || ents[0].Header != 512 {
		t.Errorf("labelled archive: %+v", ents)
	}
	v2, err := os.ReadFile(p("v2.tar"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = scanBytes(t, v2)
	if errRule(err) != "GNU multivolume continuation entries are not supported" {
		t.Errorf("second volume: %v", err)
	}
}
