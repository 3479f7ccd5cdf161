package vmtest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DefaultModules are the modules the guest loads, in order, unless
// Guest.Modules says otherwise. Dependencies missing from the list are
// resolved through modules.dep and loaded first; crc32c_generic comes first
// because libcrc32c needs a crc32c implementation through the crypto API
// (a soft dependency modules.dep does not record).
var DefaultModules = []string{"crc32c_generic", "libcrc32c", "erofs", "nbd", "ublk_drv", "loop", "virtio_blk"}

// modIndex maps module names (with '-' spelled '_') to their files relative
// to the modules directory, and to their dependencies.
type modIndex struct {
	dir     string // .../lib/modules/<version>
	file    map[string]string
	deps    map[string][]string
	builtin map[string]bool
}

func modName(file string) string {
	b := filepath.Base(file)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

func loadModIndex(kernelDir string) (*modIndex, error) {
	dirs, _ := filepath.Glob(filepath.Join(kernelDir, "lib/modules/*"))
	if len(dirs) != 1 {
		return nil, fmt.Errorf("vmtest: want exactly one lib/modules/<version> in %s, found %d", kernelDir, len(dirs))
	}
	idx := &modIndex{dir: dirs[0], file: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{}}
	f, err := os.Open(filepath.Join(idx.dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("vmtest: %w (run scripts/vm/kernel.sh, which runs depmod)", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		mod, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		name := modName(mod)
		idx.file[name] = mod
		for _, d := range strings.Fields(deps) {
			idx.deps[name] = append(idx.deps[name], modName(d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(filepath.Join(idx.dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			idx.builtin[modName(l)] = true
		}
	}
	return idx, nil
}

// resolve returns the load order for the wanted modules (each entry is a
// module name optionally followed by parameters, "nbd nbds_max=4"):
// dependencies first, built-in modules dropped, no duplicates.
func (idx *modIndex) resolve(wanted []string) (order []string, params map[string]string, err error) {
	params = map[string]string{}
	seen := map[string]bool{}
	var visit func(name string, stack []string) error
	visit = func(name string, stack []string) error {
		if seen[name] {
			return nil
		}
		if _, ok := idx.file[name]; !ok {
			if idx.builtin[name] {
				seen[name] = true
				return nil
			}
			return fmt.Errorf("vmtest: module %q not found in %s (needed by %v)", name, idx.dir, stack)
		}
		seen[name] = true
		for _, d := range idx.deps[name] {
			if err := visit(d, append(stack, name)); err != nil {
				return err
			}
		}
		order = append(order, name)
		return nil
	}
	for _, w := range wanted {
		f := strings.Fields(w)
		if len(f) == 0 {
			continue
		}
		name := strings.ReplaceAll(f[0], "-", "_")
		if len(f) > 1 {
			params[name] = strings.Join(f[1:], " ")
		}
		if err := visit(name, nil); err != nil {
			return nil, nil, err
		}
	}
	return order, params, nil
}

// extract writes the module, decompressed, to dst.
func (idx *modIndex) extract(name, dst string) error {
	src := filepath.Join(idx.dir, idx.file[name])
	var tool string
	switch {
	case strings.HasSuffix(src, ".ko.xz"):
		tool = "xz"
	case strings.HasSuffix(src, ".ko.zst"):
		tool = "zstd"
	case strings.HasSuffix(src, ".ko.gz"):
		tool = "gzip"
	case strings.HasSuffix(src, ".ko"):
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	default:
		return fmt.Errorf("vmtest: unknown module file type %s", src)
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	cmd := exec.Command(tool, "-dc", src)
	cmd.Stdout = out
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Run()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("vmtest: %s -dc %s: %v: %s", tool, src, err, stderr.String())
	}
	return nil
}
