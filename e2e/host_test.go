package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/erofs-blockd/erofs-blockd/internal/testtree"
)

// TestHostMountEveryLayout: serve, nbdfuse, kernel `mount -t erofs`, and every
// file's content, mode, symlink target equal the source tree.
func TestHostMountEveryLayout(t *testing.T) {
	need(t, "nbdfuse", "mkfs.erofs")
	for _, im := range layouts(t, testtree.Full(11)) {
		t.Run(im.name, func(t *testing.T) {
			s := serve(t, im.blobArgs()...)
			mnt := fuseMount(t, s.sock)
			compareTree(t, im.tree, mnt)
		})
	}
}

// TestInterop: clients nobody here wrote agree with `compose -o` byte for byte.
func TestInterop(t *testing.T) {
	need(t, "nbdinfo", "nbdcopy", "qemu-img")
	for _, im := range layouts(t, testtree.Options{Seed: 5, Files: 30, Symlinks: true}) {
		t.Run(im.name, func(t *testing.T) {
			flat := composeFile(t, im)
			st, _ := os.Stat(flat)
			s := serve(t, im.blobArgs()...)

			var info struct {
				Exports []struct {
					Size         int64 `json:"export-size"`
					ReadOnly     bool  `json:"is_read_only"`
					MultiConn    bool  `json:"can_multi_conn"`
					BlockSizePre int64 `json:"block_size_preferred"`
				} `json:"exports"`
			}
			out := run(t, "nbdinfo", "--json", s.uri)
			if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
				t.Fatalf("nbdinfo --json: %v\n%s", err, out)
			}
			e := info.Exports[0]
			if e.Size != st.Size() || !e.ReadOnly || !e.MultiConn {
				t.Fatalf("nbdinfo: size %d (want %d) read-only %v multi-conn %v\n%s", e.Size, st.Size(), e.ReadOnly, e.MultiConn, out)
			}

			dir := t.TempDir()
			cp := filepath.Join(dir, "nbdcopy.img")
			run(t, "nbdcopy", "--connections=4", s.uri, cp)
			if fileSHA(t, cp) != fileSHA(t, flat) {
				t.Fatal("nbdcopy output differs from compose -o")
			}
			qi := filepath.Join(dir, "qemu.img")
			run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri, qi)
			if fileSHA(t, qi) != fileSHA(t, flat) {
				t.Fatal("qemu-img convert output differs from compose -o")
			}

			m := run(t, "nbdinfo", "--map", s.uri)
			holes := strings.Contains(m, "hole")
			if (im.name == "aligned") != holes {
				t.Fatalf("nbdinfo --map for %s: holes reported = %v\n%s", im.name, holes, m)
			}
		})
	}
}

// TestServeRefusals: bad inputs are refused with exit 2 and a clear message.
func TestServeRefusals(t *testing.T) {
	need(t, "mkfs.erofs")
	ims := layouts(t, testtree.Options{Seed: 9, Files: 20})
	deb, contig := ims[0], ims[1]
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	b3, _ := os.ReadFile(contig.blobs[3])
	short := write("short.blob", b3[:len(b3)-8192])
	notErofs := write("not-erofs", make([]byte, 16384))
	p, _ := os.ReadFile(deb.blobs[0])
	p[1024+0x10] ^= 0xff
	badCRC := write("badcrc.erofs", p)

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing blob", []string{"--blob", deb.blobs[0], "--blob", filepath.Join(dir, "nope")}, "no such file"},
		{"directory as blob", []string{"--blob", deb.blobs[0], "--blob", dir}, "not a regular file"},
		{"wrong count", []string{"--blob", contig.blobs[0], "--blob", contig.blobs[1]}, "lists 3 extra device(s) but 1 blob(s)"},
		{"short blob", []string{"--blob", contig.blobs[0], "--blob", contig.blobs[1], "--blob", contig.blobs[2], "--blob", short}, "shorter than the"},
		{"not erofs", []string{"--blob", notErofs}, "not a usable EROFS primary image"},
		{"bad crc", []string{"--blob", badCRC, "--blob", deb.blobs[1]}, "checksum"},
		{"no listener", []string{"--blob", deb.blobs[0]}, "nothing to serve"},
	}
	for _, c := range cases {
		args := append([]string{"serve"}, c.args...)
		if c.name != "no listener" {
			args = append(args, "--listen", "unix:"+filepath.Join(dir, "x.sock"))
		}
		out, err := exec.Command(binPath, args...).CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), c.want) {
			t.Errorf("%s: exit %v, output %q; want exit 2 and %q", c.name, err, out, c.want)
		}
	}
}
