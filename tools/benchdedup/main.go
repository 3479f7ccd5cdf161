// Command benchdedup builds the image set of `make bench-dedup` (see
// scripts/bench-dedup.sh): N images sharing two base layers, each with its
// own layer in which half the files are byte-identical to files of another
// image (stored in that image's own blob). Files carry ishare fingerprint
// xattrs (internal/layered). It writes DIR/exports.json for `serve --config`
// and prints the unique bytes: distinct file contents rounded up to 4 KiB
// plus every primary image (metadata), which is the least any server must
// read to serve every file of every image.
//
// All exports use the first image's base1 blob file (the same file in
// every export) and their own copy of base2 (byte-identical copies with
// equal sha256 tags), so both blob-level dedup kinds are exercised too.
package main

import (
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"

	"github.com/erofs-blockd/erofs-blockd/internal/layered"
)

func main() {
	dir := flag.String("dir", "", "output directory")
	n := flag.Int("images", 8, "number of images (even)")
	baseFiles := flag.Int("base-files", 24, "files per base layer")
	ownFiles := flag.Int("own-files", 16, "files per own layer (half shared with the pair image)")
	maxSize := flag.Int("max-size", 1<<20, "maximum file size (sizes are uniform in 1..max)")
	flag.Parse()
	if *dir == "" || *n < 2 || *n%2 != 0 {
		fmt.Fprintln(os.Stderr, "usage: benchdedup -dir DIR [-images 8]")
		os.Exit(2)
	}
	if err := build(*dir, *n, *baseFiles, *ownFiles, *maxSize); err != nil {
		fmt.Fprintln(os.Stderr, "benchdedup:", err)
		os.Exit(1)
	}
}

func build(dir string, n, baseFiles, ownFiles, maxSize int) error {
	rng := rand.New(rand.NewSource(1))
	distinct := map[[32]byte]int64{}
	file := func() []byte {
		b := make([]byte, 1+rng.Intn(maxSize))
		rng.Read(b)
		distinct[sha256.Sum256(b)] = int64(len(b)+4095) / 4096 * 4096
		return b
	}
	gen := func(k int) [][]byte {
		out := make([][]byte, k)
		for i := range out {
			out[i] = file()
		}
		return out
	}
	base1, base2 := gen(baseFiles), gen(baseFiles)
	pair := make([][][]byte, n/2) // shared by images 2p and 2p+1
	for p := range pair {
		pair[p] = gen(ownFiles / 2)
	}
	type export struct {
		Name   string   `json:"name"`
		Blobs  []string `json:"blobs"`
		Domain string   `json:"domain"`
	}
	var cfg struct {
		Exports []export `json:"exports"`
	}
	var primaries int64
	var firstBase1 string
	for i := 0; i < n; i++ {
		tree := filepath.Join(dir, "trees", fmt.Sprintf("img%d", i))
		write := func(sub string, files [][]byte, prefix string) error {
			for j, b := range files {
				p := filepath.Join(tree, sub, fmt.Sprintf("d%d", j%3), fmt.Sprintf("%s%03d", prefix, j))
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					return err
				}
				if err := os.WriteFile(p, b, 0o644); err != nil {
					return err
				}
			}
			return nil
		}
		own := gen(ownFiles - ownFiles/2)
		for _, w := range []struct {
			sub, prefix string
			files       [][]byte
		}{{"base1", "a", base1}, {"base2", "b", base2}, {"own", "shared", pair[i/2]}, {"own", "mine", own}} {
			if err := write(w.sub, w.files, w.prefix); err != nil {
				return err
			}
		}
		res, err := layered.Build(tree, filepath.Join(dir, fmt.Sprintf("img%d", i)), []string{"base1", "base2", "own"}, true)
		if err != nil {
			return err
		}
		st, err := os.Stat(res.Files[0])
		if err != nil {
			return err
		}
		primaries += st.Size()
		if i == 0 {
			firstBase1 = res.Files[1]
		}
		files := append([]string{}, res.Files...)
		files[1] = firstBase1
		cfg.Exports = append(cfg.Exports, export{Name: fmt.Sprintf("img%d", i), Blobs: files, Domain: "bench"})
	}
	if err := os.RemoveAll(filepath.Join(dir, "trees")); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "exports.json"), b, 0o644); err != nil {
		return err
	}
	var data int64
	for _, s := range distinct {
		data += s
	}
	fmt.Printf("unique_data_bytes=%d\nprimary_bytes=%d\nunique_bytes=%d\n", data, primaries, data+primaries)
	return nil
}
