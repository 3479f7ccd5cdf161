package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/erofs-blockd/erofs-blockd/gzran"
	"github.com/erofs-blockd/erofs-blockd/merge"
	"github.com/erofs-blockd/erofs-blockd/ociimage"
	"github.com/erofs-blockd/erofs-blockd/source"
	"github.com/erofs-blockd/erofs-blockd/zstdseek"
)

// Exports from image references. An image's "index artifacts" are what
// serving it needs besides its layers: the merged metadata-only EROFS
// index, each compressed layer's random-access index (gzip checkpoints /
// zstd frames) and the sha256 of every fetch chunk of every layer, all
// made by streaming each layer once (merge), from bytes whose layer
// digest and diffID were checked on the way. They are kept under the
// cache dir (images/<manifest hex>/, or a private temporary dir without
// --cache-dir) so a restart or a second export of the image reads no
// layer, and can be pushed to the registry as an OCI artifact whose
// subject is the image manifest (erofs-blockd index --push), where serve
// looks first. Every chunk fetched for an image is then checked against
// its digest: wrong bytes from a registry, mirror or CDN are an error
// (EIO), never data.

// ArtifactType is the OCI artifactType of pushed index artifacts.
const ArtifactType = "application/vnd.erofs-blockd.index.v1"

// artifactFile is the manifest of an artifact directory.
const artifactFile = "artifact.json"

// artifact describes a kept (or pushed) set of index artifacts.
type Artifact struct {
	Version  int             `json:"version"`
	Manifest string          `json:"manifest"` // the image manifest digest
	Chunk    int64           `json:"chunk"`    // fetch chunk of the sums
	Index    string          `json:"index"`    // file name of the merged index
	Layers   []artifactLayer `json:"layers"`
	// Files maps every other file's name to its sha256 (hex).
	Files map[string]string `json:"files"`
}

type artifactLayer struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
	Kind   string `json:"kind"`
	DiffID string `json:"diff_id,omitempty"`
	Sums   string `json:"sums,omitempty"`  // chunk digests file
	Zinfo  string `json:"zinfo,omitempty"` // gzip: SOCI zinfo v2
	Gzmeta string `json:"gzmeta,omitempty"`
	Zstd   string `json:"zstd,omitempty"` // zstd frame index
}

// imageState is the daemon's image machinery, made on first use.
type imageState struct {
	mu       sync.Mutex // one build per image at a time
	resolver *ociimage.Resolver
	tmp      string // artifacts without --cache-dir
}

func (d *Daemon) images() *imageState {
	d.imgOnce.Do(func() {
		d.img = &imageState{resolver: ociimage.NewResolver(d.op)}
	})
	return d.img
}

// Resolver returns the daemon's image resolver (shared auth and clients).
func (d *Daemon) Resolver() *ociimage.Resolver { return d.images().resolver }

// imageDir is where an image's artifacts live.
func (d *Daemon) imageDir(manifest string) (string, error) {
	hexd := strings.TrimPrefix(manifest, "sha256:")
	if d.cfg.CacheDir != "" {
		return filepath.Join(d.cfg.CacheDir, "images", hexd), nil
	}
	st := d.images()
	if st.tmp == "" {
		t, err := os.MkdirTemp("", "erofs-blockd-images-")
		if err != nil {
			return "", err
		}
		st.tmp = t
	}
	return filepath.Join(st.tmp, hexd), nil
}

// layerSpec is the blob spec an image layer is served through.
func layerSpec(l ociimage.Layer) string {
	switch l.Kind {
	case "tar+gzip":
		return "gzip:" + l.Spec
	case "tar+zstd", "erofs+zstd":
		return "zstd:" + l.Spec
	}
	return l.Spec
}

// imageBlobs resolves spec.Image and returns the export's blob list:
// the merged index, then every layer as the blob its device serves.
func (d *Daemon) imageBlobs(spec Spec) ([]string, error) {
	ctx := context.Background()
	st := d.images()
	t0 := time.Now()
	// As soon as the manifest is known, look for a pushed index while
	// the config is fetched (unless one is kept here already).
	var early chan found
	img, err := st.resolver.ResolveNotify(ctx, spec.Image, spec.Platform, func(im ociimage.Image) {
		if im.Ref.Transport != ociimage.Registry {
			return
		}
		if dir, err := d.imageDir(im.ManifestDigest); err != nil || fileExists(filepath.Join(dir, artifactFile)) {
			return
		}
		early = make(chan found, 1)
		go func() {
			a, err := st.resolver.FindArtifact(ctx, &im, ArtifactType)
			early <- found{a, err}
		}()
	})
	if err != nil {
		if early != nil {
			<-early
		}
		return nil, fmt.Errorf("export %q: %w", spec.Name, err)
	}
	tResolve := time.Since(t0)
	for _, l := range img.Layers {
		if source.IsRemote(l.Spec) {
			d.op.KnowSize(l.Digest, l.Size)
		}
	}
	art, dir, err := d.imageArtifacts(ctx, img, true, early)
	if err != nil {
		return nil, fmt.Errorf("export %q: image %s: %w", spec.Name, spec.Image, err)
	}
	blobs := []string{filepath.Join(dir, art.Index)}
	for _, l := range img.Layers {
		blobs = append(blobs, layerSpec(l))
	}
	d.log.Info("image resolved", "image", img.Ref.String(), "manifest", img.ManifestDigest, "layers", len(img.Layers),
		"resolve", tResolve.Round(time.Millisecond), "index", (time.Since(t0) - tResolve).Round(time.Millisecond))
	return blobs, nil
}

// ImageArtifacts returns an image's index artifacts, from the cache dir,
// else (lookPushed) from the registry, else built by streaming each layer
// once; they are adopted (chunk digests and decode indexes handed to the
// source opener) and kept.
func (d *Daemon) ImageArtifacts(ctx context.Context, img *ociimage.Image, lookPushed bool) (*Artifact, string, error) {
	return d.imageArtifacts(ctx, img, lookPushed, nil)
}

// found is a FindArtifact result.
type found struct {
	a   *ociimage.Artifact
	err error
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// imageArtifacts is ImageArtifacts; early, when not nil, gives the result
// of a FindArtifact started during resolution (always received).
func (d *Daemon) imageArtifacts(ctx context.Context, img *ociimage.Image, lookPushed bool, early <-chan found) (*Artifact, string, error) {
	var got *found
	take := func() *found {
		if got == nil && early != nil {
			f := <-early
			got = &f
		}
		return got
	}
	defer take()
	st := d.images()
	st.mu.Lock()
	defer st.mu.Unlock()
	dir, err := d.imageDir(img.ManifestDigest)
	if err != nil {
		return nil, "", err
	}
	art, err := readArtifact(dir, img)
	if err != nil {
		d.log.Warn("kept image index unusable; making it again", "image", img.Ref.String(), "err", err)
	}
	read := dirReader(dir)
	t0 := time.Now()
	if art == nil && lookPushed {
		var mem fileReader
		if art, mem, err = d.fetchPushed(ctx, img, dir, take()); err != nil {
			d.log.Warn("pushed image index unusable; building one", "image", img.Ref.String(), "err", err)
		} else if art != nil {
			read = mem
			d.log.Info("using the pushed image index", "image", img.Ref.String())
		}
	}
	if art == nil {
		if art, err = d.buildArtifact(ctx, img, dir); err != nil {
			return nil, "", err
		}
	}
	t1 := time.Now()
	if err := d.adopt(art, read, img); err != nil {
		return nil, "", err
	}
	d.log.Debug("image index ready", "image", img.Ref.String(), "get", t1.Sub(t0).Round(time.Millisecond), "adopt", time.Since(t1).Round(time.Millisecond))
	return art, dir, nil
}

// fileReader gives an artifact's files by name (from its directory, or
// from a fetched bundle in memory).
type fileReader func(name string) ([]byte, error)

func dirReader(dir string) fileReader {
	return func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) }
}

// readArtifact loads a kept artifact directory, checking every file.
func readArtifact(dir string, img *ociimage.Image) (*Artifact, error) {
	return checkArtifact(dirReader(dir), img)
}

// checkArtifact reads artifact.json and checks every file it lists.
func checkArtifact(read fileReader, img *ociimage.Image) (*Artifact, error) {
	b, err := read(artifactFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var a Artifact
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("%s: %w", artifactFile, err)
	}
	if err := a.check(img); err != nil {
		return nil, err
	}
	for name, sum := range a.Files {
		data, err := read(name)
		if err != nil {
			return nil, err
		}
		if h := sha256.Sum256(data); hex.EncodeToString(h[:]) != sum {
			return nil, fmt.Errorf("%s: checksum mismatch", name)
		}
	}
	return &a, nil
}

// check: the artifact belongs to img and names only its own files.
func (a *Artifact) check(img *ociimage.Image) error {
	if a.Version != 1 || a.Manifest != img.ManifestDigest || len(a.Layers) != len(img.Layers) {
		return fmt.Errorf("artifact for manifest %s (%d layers, version %d), image is %s (%d layers)", a.Manifest, len(a.Layers), a.Version, img.ManifestDigest, len(img.Layers))
	}
	if _, ok := a.Files[a.Index]; !ok {
		return errors.New("artifact without its index file")
	}
	for name := range a.Files {
		if name == "" || name != filepath.Base(name) || strings.HasPrefix(name, ".") || name == artifactFile {
			return fmt.Errorf("artifact file name %q", name)
		}
	}
	for i, l := range a.Layers {
		il := img.Layers[i]
		if l.Digest != il.Digest || l.Size != il.Size || l.Kind != il.Kind {
			return fmt.Errorf("layer %d: artifact has %s (%s, %d bytes), image %s (%s, %d bytes)", i+1, l.Digest, l.Kind, l.Size, il.Digest, il.Kind, il.Size)
		}
		for _, f := range []string{l.Sums, l.Zinfo, l.Gzmeta, l.Zstd} {
			if _, ok := a.Files[f]; f != "" && !ok {
				return fmt.Errorf("layer %d: file %q not listed", i+1, f)
			}
		}
	}
	return nil
}

// buildArtifact merges the image's layers in one pass each and keeps the
// result in dir (written to a temporary dir, then renamed).
func (d *Daemon) buildArtifact(ctx context.Context, img *ociimage.Image, dir string) (*Artifact, error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	d.log.Info("indexing image layers (one pass each)", "image", img.Ref.String(), "layers", len(img.Layers))
	a := &Artifact{Version: 1, Manifest: img.ManifestDigest, Chunk: d.op.FetchChunk(), Index: "index.erofs", Files: map[string]string{}}
	var layers []merge.Layer
	var blobs []source.Blob
	var hashers []*source.ChunkHasher
	defer func() {
		for _, b := range blobs {
			b.Close()
		}
	}()
	for i, l := range img.Layers {
		spec := l.Spec
		if l.Kind == "erofs+zstd" {
			spec = "zstd:" + spec // merge reads the EROFS image itself
		}
		b, err := d.op.Open(ctx, spec)
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i+1, l.Digest, err)
		}
		blobs = append(blobs, b)
		ml := merge.Layer{Name: fmt.Sprintf("layer %d (%s)", i+1, shortDigest(l.Digest)), R: b, Size: b.Size()}
		var h *source.ChunkHasher
		if strings.HasPrefix(l.Kind, "tar") {
			ml.DiffID, ml.Digest = l.DiffID, l.Digest
			if source.IsRemote(l.Spec) {
				h = source.NewChunkHasher(a.Chunk)
				ml.Raw = h
			}
		}
		hashers = append(hashers, h)
		layers = append(layers, ml)
		a.Layers = append(a.Layers, artifactLayer{Digest: l.Digest, Size: l.Size, Kind: l.Kind, DiffID: l.DiffID})
	}
	f, err := os.Create(filepath.Join(tmp, a.Index))
	if err != nil {
		return nil, err
	}
	// Layers start on fetch-chunk boundaries (at least 1 MiB), with a hole
	// after the index: readahead near a device's end then stays in it,
	// and a layer whose chunks fail (wrong bytes from the registry) does
	// not take the index's or a neighbour's reads with it.
	rep, err := merge.Merge(f, layers, merge.Options{AlignBytes: max(a.Chunk, 1<<20)})
	if err == nil {
		err = f.Truncate(int64(rep.Stats.Blocks) * rep.Stats.BlockSize)
	}
	if err2 := f.Close(); err == nil {
		err = err2
	}
	if err != nil {
		return nil, err
	}
	put := func(name string, data []byte) error {
		h := sha256.Sum256(data)
		a.Files[name] = hex.EncodeToString(h[:])
		return os.WriteFile(filepath.Join(tmp, name), data, 0o644)
	}
	idx, err := os.ReadFile(filepath.Join(tmp, a.Index))
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(idx)
	a.Files[a.Index] = hex.EncodeToString(h[:])
	for i, in := range rep.Info {
		al := &a.Layers[i]
		if hashers[i] != nil {
			sb, _ := hashers[i].Sums().MarshalBinary()
			al.Sums = fmt.Sprintf("layer-%d.sums", i+1)
			if err := put(al.Sums, sb); err != nil {
				return nil, err
			}
		}
		switch {
		case in.Gzip != nil:
			var z bytes.Buffer
			if err := in.Gzip.WriteZinfo(&z); err != nil {
				return nil, err
			}
			al.Zinfo, al.Gzmeta = fmt.Sprintf("layer-%d.zinfo", i+1), fmt.Sprintf("layer-%d.gzmeta", i+1)
			if err := put(al.Zinfo, z.Bytes()); err != nil {
				return nil, err
			}
			if err := put(al.Gzmeta, in.Gzip.MarshalMeta()); err != nil {
				return nil, err
			}
		case in.Zstd != nil:
			zb, err := in.Zstd.MarshalBinary()
			if err != nil {
				return nil, err
			}
			al.Zstd = fmt.Sprintf("layer-%d.zstdidx", i+1)
			if err := put(al.Zstd, zb); err != nil {
				return nil, err
			}
		}
	}
	j, _ := json.MarshalIndent(a, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, artifactFile), j, 0o644); err != nil {
		return nil, err
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	d.log.Info("image indexed", "image", img.Ref.String(), "files", rep.Files, "index_bytes", len(idx))
	return a, nil
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// adopt hands an artifact's chunk digests and decode indexes to the
// source opener, so the layers open without a pass and every fetch is
// checked.
func (d *Daemon) adopt(a *Artifact, read fileReader, img *ociimage.Image) error {
	for i, l := range a.Layers {
		il := img.Layers[i]
		id := "oci:" + l.Digest
		if l.Sums != "" && source.IsRemote(il.Spec) {
			b, err := read(l.Sums)
			if err != nil {
				return err
			}
			var cs source.ChunkSums
			if err := cs.UnmarshalBinary(b); err != nil {
				return fmt.Errorf("layer %d: %w", i+1, err)
			}
			if err := d.op.SetChunkSums(id, &cs); err != nil {
				d.log.Warn("chunk digests not used", "layer", l.Digest, "err", err)
			}
		}
		if !source.IsRemote(il.Spec) {
			// A layout's layer is a local file: its identity is the file.
			continue
		}
		switch {
		case l.Zinfo != "":
			z, err := read(l.Zinfo)
			if err != nil {
				return err
			}
			m, err := read(l.Gzmeta)
			if err != nil {
				return err
			}
			ix, err := gzran.ReadZinfo(bytes.NewReader(z))
			if err == nil {
				err = ix.UnmarshalMeta(m)
			}
			if err != nil {
				return fmt.Errorf("layer %d gzip index: %w", i+1, err)
			}
			d.op.AdoptGzipIndex(id, l.Size, ix)
		case l.Zstd != "":
			z, err := read(l.Zstd)
			if err != nil {
				return err
			}
			ix := new(zstdseek.Index)
			if err := ix.UnmarshalBinary(z); err != nil {
				return fmt.Errorf("layer %d zstd index: %w", i+1, err)
			}
			d.op.AdoptZstdIndex(id, l.Size, ix)
		}
	}
	return nil
}

// bundleName is the one file of a pushed artifact: a zstd-compressed tar
// of artifact.json and every file it lists (one blob: one request to
// fetch; the gzip windows in it compress to about a third).
const bundleName = "erofs-blockd-index.tar.zst"

// PushImageArtifacts pushes an image's kept artifacts to its registry.
func (d *Daemon) PushImageArtifacts(ctx context.Context, img *ociimage.Image, a *Artifact, dir string) (string, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	j, _ := json.Marshal(a)
	if err := add(artifactFile, j); err != nil {
		return "", err
	}
	for _, name := range slices.Sorted(maps.Keys(a.Files)) {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return "", err
		}
		if err := add(name, data); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return "", err
	}
	packed := enc.EncodeAll(buf.Bytes(), nil)
	enc.Close()
	files := []ociimage.File{{Name: bundleName, MediaType: "application/vnd.erofs-blockd.index.v1.tar+zstd", Data: packed}}
	return d.images().resolver.PushArtifact(ctx, img, ArtifactType, files)
}

// fetchPushed looks for a pushed artifact and keeps it in dir.
func (d *Daemon) fetchPushed(ctx context.Context, img *ociimage.Image, dir string, early *found) (*Artifact, fileReader, error) {
	if img.Ref.Transport != ociimage.Registry {
		return nil, nil, nil
	}
	res := d.images().resolver
	t0 := time.Now()
	var pa *ociimage.Artifact
	var err error
	if early != nil {
		pa, err = early.a, early.err
	} else {
		pa, err = res.FindArtifact(ctx, img, ArtifactType)
	}
	if err != nil || pa == nil {
		return nil, nil, err
	}
	tFind := time.Since(t0)
	defer func() {
		d.log.Debug("pushed image index fetched", "find", tFind.Round(time.Millisecond), "bundle", (time.Since(t0) - tFind).Round(time.Millisecond))
	}()
	var bf *ociimage.ArtifactFile
	for i := range pa.Files {
		if pa.Files[i].Name == bundleName {
			bf = &pa.Files[i]
		}
	}
	if bf == nil {
		return nil, nil, errors.New("pushed artifact without " + bundleName)
	}
	const maxBundle = 1 << 30
	tGet := time.Now()
	data, err := res.FetchFile(ctx, *bf, maxBundle) // digest-checked
	if err != nil {
		return nil, nil, err
	}
	d.log.Debug("index bundle fetched", "bytes", len(data), "took", time.Since(tGet).Round(time.Millisecond))
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, nil, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".fetch-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(tmp)
	// One DecodeAll into memory: several times faster than a streaming
	// reader for a bundle of a few MiB (it is in memory anyway).
	zd, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(4*maxBundle), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, nil, err
	}
	plain, err := zd.DecodeAll(data, nil)
	zd.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", bundleName, err)
	}
	tr := tar.NewReader(bytes.NewReader(plain))
	seen := map[string]bool{}
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", bundleName, err)
		}
		name := h.Name
		if h.Typeflag != tar.TypeReg || name != filepath.Base(name) || name == "" || strings.HasPrefix(name, ".") || seen[name] || h.Size > maxBundle {
			return nil, nil, fmt.Errorf("%s: unexpected entry %q", bundleName, name)
		}
		seen[name] = true
		b := make([]byte, h.Size)
		_, err = io.ReadFull(tr, b)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", bundleName, err)
		}
		files[name] = b
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
			return nil, nil, err
		}
	}
	// The same checks as for a kept artifact: it is this image's, and
	// every file matches its checksum (in memory: no reading back).
	mem := func(name string) ([]byte, error) {
		if b, ok := files[name]; ok {
			return b, nil
		}
		return nil, fmt.Errorf("%s: no file %q", bundleName, name)
	}
	a, err := checkArtifact(mem, img)
	if err != nil {
		return nil, nil, err
	}
	if a == nil || len(files) != len(a.Files)+1 {
		return nil, nil, errors.New(bundleName + ": not artifact.json and exactly the files it lists")
	}
	if a.Chunk != d.op.FetchChunk() {
		return nil, nil, fmt.Errorf("pushed index has %d-byte chunk digests, this daemon fetches %d-byte chunks", a.Chunk, d.op.FetchChunk())
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return nil, nil, err
	}
	return a, mem, nil
}
