package ociimage

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/source"
)

// layoutStore reads an OCI image layout: DIR/oci-layout, DIR/index.json
// and DIR/blobs/sha256/HEX.
type layoutStore struct {
	dir string // absolute
	ref Ref
}

func openLayout(rf Ref) (*layoutStore, error) {
	dir, err := filepath.Abs(rf.Dir)
	if err != nil {
		return nil, fmt.Errorf("image %s: %v", rf, err)
	}
	b, err := readCapped(filepath.Join(dir, "oci-layout"), 4096)
	if err != nil {
		return nil, fmt.Errorf("image %s: not an OCI image layout: %v", rf, err)
	}
	var l struct {
		Version string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("image %s: oci-layout: %v", rf, err)
	}
	if !strings.HasPrefix(l.Version, "1.") {
		return nil, fmt.Errorf("image %s: oci-layout: imageLayoutVersion %.40q is not supported (want 1.x)", rf, l.Version)
	}
	return &layoutStore{dir: dir, ref: rf}, nil
}

// readCapped reads a file of at most max bytes.
func readCapped(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if st.Size() > max {
		return nil, fmt.Errorf("%s: %d bytes, more than the limit of %d", path, st.Size(), max)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: more than the limit of %d bytes", path, max)
	}
	return b, nil
}

func (s *layoutStore) blobPath(digest string) string {
	return filepath.Join(s.dir, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:"))
}

func (s *layoutStore) spec(digest string) string { return s.blobPath(digest) }

func (s *layoutStore) blob(_ context.Context, d Descriptor, max int64) ([]byte, error) {
	if err := checkDescriptor("blob", d); err != nil {
		return nil, err
	}
	if d.Size > max {
		return nil, fmt.Errorf("blob %s: its descriptor says %d bytes, more than the limit of %d", d.Digest, d.Size, max)
	}
	b, err := readCapped(s.blobPath(d.Digest), d.Size)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %v", d.Digest, err)
	}
	if int64(len(b)) != d.Size {
		return nil, fmt.Errorf("blob %s: %d bytes, its descriptor says %d", d.Digest, len(b), d.Size)
	}
	if got := source.Digest(b); got != d.Digest {
		return nil, fmt.Errorf("blob %s: its content's digest is %s (the layout is damaged or was modified)", d.Digest, got)
	}
	return b, nil
}

func (s *layoutStore) manifest(ctx context.Context, d Descriptor) (string, []byte, error) {
	if d.Size > source.MaxManifest {
		return "", nil, fmt.Errorf("manifest %s: %d bytes, more than the limit of %d", d.Digest, d.Size, source.MaxManifest)
	}
	b, err := s.blob(ctx, d, source.MaxManifest)
	return d.MediaType, b, err
}

func (s *layoutStore) index() ([]Descriptor, error) {
	b, err := readCapped(filepath.Join(s.dir, "index.json"), source.MaxManifest)
	if err != nil {
		return nil, err
	}
	var idx struct {
		SchemaVersion int          `json:"schemaVersion"`
		Manifests     []Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("index.json: %v", err)
	}
	if idx.SchemaVersion != 2 {
		return nil, fmt.Errorf("index.json: schemaVersion %d, want 2", idx.SchemaVersion)
	}
	return idx.Manifests, nil
}

func (s *layoutStore) root(ctx context.Context) (string, []byte, string, error) {
	if s.ref.Digest != "" {
		// Any manifest or index in the layout, by digest: its size is
		// what the file has (capped), its digest checked.
		st, err := os.Stat(s.blobPath(s.ref.Digest))
		if err != nil {
			return "", nil, "", fmt.Errorf("manifest %s: %v", s.ref.Digest, err)
		}
		d := Descriptor{Digest: s.ref.Digest, Size: st.Size()}
		mt, b, err := s.manifest(ctx, d)
		return mt, b, s.ref.Digest, err
	}
	ms, err := s.index()
	if err != nil {
		return "", nil, "", err
	}
	var pick []Descriptor
	var tags []string
	for _, d := range ms {
		name := d.Annotations[AnnotationRefName]
		if name != "" {
			tags = append(tags, name)
		}
		if s.ref.Tag == "" || name == s.ref.Tag {
			pick = append(pick, d)
		}
	}
	sort.Strings(tags)
	switch {
	case len(pick) == 0 && s.ref.Tag != "":
		if len(tags) == 0 {
			return "", nil, "", fmt.Errorf("index.json has no manifest named %q (it names none)", s.ref.Tag)
		}
		return "", nil, "", fmt.Errorf("index.json has no manifest named %q; it has %s", s.ref.Tag, strings.Join(tags, ", "))
	case len(pick) == 0:
		return "", nil, "", fmt.Errorf("index.json lists no manifests")
	case len(pick) == 1:
		if err := checkDescriptor("index.json entry", pick[0]); err != nil {
			return "", nil, "", err
		}
		mt, b, err := s.manifest(ctx, pick[0])
		return mt, b, pick[0].Digest, err
	case s.ref.Tag == "" && len(tags) > 0:
		return "", nil, "", fmt.Errorf("index.json lists %d manifests: name one (%s)", len(pick), strings.Join(tags, ", "))
	}
	// Several entries for the tag (or several unnamed): choose among them
	// by platform, as from an index.
	b, err := json.Marshal(struct {
		Manifests []Descriptor `json:"manifests"`
	}{pick})
	return MediaTypeIndex, b, "", err
}
