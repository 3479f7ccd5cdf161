package ociimage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/source"
)

// ErrLayoutArtifacts is returned by the artifact functions for images in
// an OCI layout (keep such artifacts elsewhere, e.g. in the cache dir).
var ErrLayoutArtifacts = fmt.Errorf("artifacts are only kept in registries, not in OCI layouts: %w", errors.ErrUnsupported)

// emptyJSON is the OCI empty descriptor's content.
var emptyJSON = []byte("{}")

// File is a file to keep in an artifact.
type File struct {
	Name, MediaType string
	Data            []byte
}

// ArtifactFile is a file of an artifact found in a registry.
type ArtifactFile struct {
	Name, MediaType, Digest string
	Size                    int64
	Spec                    string // oci://HOST/REPO@DIGEST
}

// Artifact is an artifact manifest whose subject is an image.
type Artifact struct {
	Digest       string
	ArtifactType string
	Annotations  map[string]string
	Files        []ArtifactFile
}

// artifactManifest is an OCI 1.1 image manifest used for an artifact.
type artifactManifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType,omitempty"`
	Config        Descriptor        `json:"config"`
	Layers        []Descriptor      `json:"layers"`
	Subject       *Descriptor       `json:"subject,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// FallbackTag is the OCI 1.1 referrers tag schema's tag for subject:
// sha256-HEX.
func FallbackTag(subject string) string { return strings.Replace(subject, ":", "-", 1) }

func checkArtifactType(t string) error {
	if t == "" || len(t) > 255 {
		return fmt.Errorf("artifact type %.80q: want a media type", t)
	}
	if mt, params, err := mime.ParseMediaType(t); err != nil || mt != t || len(params) > 0 || !strings.Contains(t, "/") {
		return fmt.Errorf("artifact type %.80q: want a media type (type/subtype)", t)
	}
	return nil
}

// subject is the descriptor of img's manifest.
func subject(img *Image) Descriptor {
	return Descriptor{MediaType: img.ManifestMediaType, Digest: img.ManifestDigest, Size: int64(len(img.Manifest))}
}

// PushArtifact keeps files in img's repository as an artifact of
// artifactType whose subject is img's manifest: the file blobs, then an
// OCI image manifest (artifactType set, config the empty descriptor, one
// layer per file titled with its Name). When the registry has no
// referrers API it also adds the manifest to the sha256-HEX fallback tag's
// index (read, modify, write: the entries there are kept). It returns the
// artifact manifest's digest; pushing the same files again gives the
// same digest and no duplicate entry.
func (r *Resolver) PushArtifact(ctx context.Context, img *Image, artifactType string, files []File) (string, error) {
	if img.Ref.Transport == Layout {
		return "", ErrLayoutArtifacts
	}
	if r.op == nil {
		return "", fmt.Errorf("image %s: no registry client", img.Ref)
	}
	if err := checkArtifactType(artifactType); err != nil {
		return "", err
	}
	if len(files) == 0 {
		return "", fmt.Errorf("artifact %s: no files", artifactType)
	}
	host, repo := img.Ref.Host, img.Ref.Repo
	seen := map[string]bool{}
	m := artifactManifest{SchemaVersion: 2, MediaType: MediaTypeManifest, ArtifactType: artifactType,
		Config: Descriptor{MediaType: MediaTypeEmpty, Digest: source.Digest(emptyJSON), Size: int64(len(emptyJSON))}}
	sub := subject(img)
	m.Subject = &sub
	for _, f := range files {
		if f.Name == "" || seen[f.Name] || f.MediaType == "" {
			return "", fmt.Errorf("artifact %s: file %.80q: names must be unique and non-empty, media types set", artifactType, f.Name)
		}
		seen[f.Name] = true
		dg, err := r.op.PushBlob(ctx, host, repo, f.Data)
		if err != nil {
			return "", err
		}
		m.Layers = append(m.Layers, Descriptor{MediaType: f.MediaType, Digest: dg, Size: int64(len(f.Data)),
			Annotations: map[string]string{AnnotationTitle: f.Name}})
	}
	if _, err := r.op.PushBlob(ctx, host, repo, emptyJSON); err != nil {
		return "", err
	}
	body, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	dg, err := r.op.PushManifest(ctx, host, repo, "", MediaTypeManifest, body)
	if err != nil {
		return "", err
	}
	_, supported, err := r.op.Referrers(ctx, host, repo, img.ManifestDigest, artifactType)
	if err != nil {
		return "", err
	}
	if supported {
		return dg, nil
	}
	entry := Descriptor{MediaType: MediaTypeManifest, Digest: dg, Size: int64(len(body)), ArtifactType: artifactType}
	if err := r.addReferrer(ctx, img, entry); err != nil {
		return "", err
	}
	return dg, nil
}

// fallbackIndex reads the sha256-HEX tag's index (nil, nil if no tag).
func (r *Resolver) fallbackIndex(ctx context.Context, img *Image) ([]Descriptor, error) {
	tag := FallbackTag(img.ManifestDigest)
	mt, b, dg, err := r.op.FetchManifest(ctx, img.Ref.Host, img.Ref.Repo, tag, []string{MediaTypeIndex})
	if err != nil {
		if errors.Is(err, source.ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	var idx struct {
		MediaType string       `json:"mediaType"`
		Manifests []Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("referrers tag %s (%s): %v", tag, dg, err)
	}
	if mt != MediaTypeIndex && idx.MediaType != MediaTypeIndex {
		return nil, fmt.Errorf("referrers tag %s (%s): media type %.80q, want an image index", tag, dg, mt)
	}
	for i, d := range idx.Manifests {
		if err := checkDescriptor(fmt.Sprintf("referrers tag %s entry %d", tag, i), d); err != nil {
			return nil, err
		}
	}
	return idx.Manifests, nil
}

// addReferrer adds entry to the fallback tag's index, keeping what is
// there. A concurrent writer can still lose an entry between our read and
// write (the tag schema has no compare-and-swap); the write is checked
// by reading the tag again and retried a few times.
func (r *Resolver) addReferrer(ctx context.Context, img *Image, entry Descriptor) error {
	tag := FallbackTag(img.ManifestDigest)
	for attempt := 0; attempt < 3; attempt++ {
		ms, err := r.fallbackIndex(ctx, img)
		if err != nil {
			return err
		}
		present := false
		for _, d := range ms {
			if d.Digest == entry.Digest {
				present = true
			}
		}
		if present {
			return nil
		}
		ms = append(ms, entry)
		body, err := json.Marshal(struct {
			SchemaVersion int          `json:"schemaVersion"`
			MediaType     string       `json:"mediaType"`
			Manifests     []Descriptor `json:"manifests"`
		}{2, MediaTypeIndex, ms})
		if err != nil {
			return err
		}
		if len(body) > source.MaxManifest {
			return fmt.Errorf("referrers tag %s: the index would exceed %d bytes (%d entries)", tag, source.MaxManifest, len(ms))
		}
		if _, err := r.op.PushManifest(ctx, img.Ref.Host, img.Ref.Repo, tag, MediaTypeIndex, body); err != nil {
			return err
		}
	}
	return fmt.Errorf("referrers tag %s: the entry for %s did not stick (concurrent writers?)", tag, entry.Digest)
}

// FindArtifacts lists the artifacts of artifactType whose subject is img's
// manifest, through the referrers API or else the fallback tag, in the
// order listed (the fallback tag's order is the order of pushes).
// Entries whose manifest does not name img's manifest as subject, or is
// of another type, are skipped.
func (r *Resolver) FindArtifacts(ctx context.Context, img *Image, artifactType string) ([]*Artifact, error) {
	if img.Ref.Transport == Layout {
		return nil, ErrLayoutArtifacts
	}
	if r.op == nil {
		return nil, fmt.Errorf("image %s: no registry client", img.Ref)
	}
	if err := checkArtifactType(artifactType); err != nil {
		return nil, err
	}
	host, repo := img.Ref.Host, img.Ref.Repo
	refs, supported, err := r.op.Referrers(ctx, host, repo, img.ManifestDigest, artifactType)
	if err != nil {
		return nil, err
	}
	var ds []Descriptor
	if supported {
		for _, d := range refs {
			ds = append(ds, Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, ArtifactType: d.ArtifactType})
		}
	} else if ds, err = r.fallbackIndex(ctx, img); err != nil {
		return nil, err
	}
	var out []*Artifact
	for _, d := range ds {
		if d.ArtifactType != artifactType || (d.MediaType != "" && d.MediaType != MediaTypeManifest) {
			continue
		}
		a, err := r.readArtifact(ctx, img, d)
		if err != nil {
			return nil, err
		}
		if a != nil && a.ArtifactType == artifactType {
			out = append(out, a)
		}
	}
	return out, nil
}

// FindArtifact is the last of FindArtifacts (with the fallback tag, the
// one pushed last), or nil, nil if there is none. It asks the referrers
// API and reads the fallback tag at the same time (one round trip, not
// two, on a registry without the API), and reads entries from the last
// back only until one matches.
func (r *Resolver) FindArtifact(ctx context.Context, img *Image, artifactType string) (*Artifact, error) {
	if img.Ref.Transport == Layout {
		return nil, ErrLayoutArtifacts
	}
	if r.op == nil {
		return nil, fmt.Errorf("image %s: no registry client", img.Ref)
	}
	if err := checkArtifactType(artifactType); err != nil {
		return nil, err
	}
	type fallback struct {
		ds  []Descriptor
		err error
	}
	fc := make(chan fallback, 1)
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		ds, err := r.fallbackIndex(fctx, img)
		fc <- fallback{ds, err}
	}()
	refs, supported, err := r.op.Referrers(ctx, img.Ref.Host, img.Ref.Repo, img.ManifestDigest, artifactType)
	if err != nil {
		return nil, err
	}
	var ds []Descriptor
	if supported {
		for _, d := range refs {
			ds = append(ds, Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, ArtifactType: d.ArtifactType})
		}
	} else {
		f := <-fc
		if f.err != nil {
			return nil, f.err
		}
		ds = f.ds
	}
	for i := len(ds) - 1; i >= 0; i-- {
		d := ds[i]
		if d.ArtifactType != artifactType || (d.MediaType != "" && d.MediaType != MediaTypeManifest) {
			continue
		}
		a, err := r.readArtifact(ctx, img, d)
		if err != nil {
			return nil, err
		}
		if a != nil && a.ArtifactType == artifactType {
			return a, nil
		}
	}
	return nil, nil
}

func (r *Resolver) readArtifact(ctx context.Context, img *Image, d Descriptor) (*Artifact, error) {
	host, repo := img.Ref.Host, img.Ref.Repo
	_, b, _, err := r.op.FetchManifest(ctx, host, repo, d.Digest, []string{MediaTypeManifest})
	if err != nil {
		return nil, err
	}
	var m artifactManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("artifact %s: %v", d.Digest, err)
	}
	if m.Subject == nil || m.Subject.Digest != img.ManifestDigest {
		return nil, nil // listed for another subject: not ours
	}
	at := m.ArtifactType
	if at == "" {
		at = m.Config.MediaType
	}
	a := &Artifact{Digest: d.Digest, ArtifactType: at, Annotations: m.Annotations}
	for i, l := range m.Layers {
		if err := checkDescriptor(fmt.Sprintf("artifact %s file %d", d.Digest, i), l); err != nil {
			return nil, err
		}
		a.Files = append(a.Files, ArtifactFile{Name: l.Annotations[AnnotationTitle], MediaType: l.MediaType, Digest: l.Digest,
			Size: l.Size, Spec: "oci://" + host + "/" + repo + "@" + l.Digest})
	}
	return a, nil
}

// File returns the file of a named name, or nil.
func (a *Artifact) File(name string) *ArtifactFile {
	for i := range a.Files {
		if a.Files[i].Name == name {
			return &a.Files[i]
		}
	}
	return nil
}

// FetchFile reads an artifact file whole (at most max bytes), its size and
// digest checked.
func (r *Resolver) FetchFile(ctx context.Context, f ArtifactFile, max int64) ([]byte, error) {
	if r.op == nil {
		return nil, fmt.Errorf("file %s: no registry client", f.Name)
	}
	rf, err := ParseRef(f.Spec)
	if err != nil || rf.Transport != Registry || rf.Digest != f.Digest || rf.Tag != "" {
		return nil, fmt.Errorf("file %.80q: spec %.200q is not oci://HOST/REPO@%s", f.Name, f.Spec, f.Digest)
	}
	if f.Size > max || f.Size < 0 {
		return nil, fmt.Errorf("file %.80q (%s): %d bytes, more than the limit of %d", f.Name, f.Digest, f.Size, max)
	}
	b, err := r.op.FetchBlob(ctx, rf.Host, rf.Repo, f.Digest, f.Size)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != f.Size {
		return nil, fmt.Errorf("file %.80q (%s): %d bytes, its descriptor says %d", f.Name, f.Digest, len(b), f.Size)
	}
	return b, nil
}
