package ociimage

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/source"
)

// Media types.
const (
	MediaTypeIndex          = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest       = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig         = "application/vnd.oci.image.config.v1+json"
	MediaTypeEmpty          = "application/vnd.oci.empty.v1+json"
	MediaTypeDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerConfig   = "application/vnd.docker.container.image.v1+json"
	mediaTypeDockerSchema1  = "application/vnd.docker.distribution.manifest.v1+json"
	mediaTypeDockerSchema1S = "application/vnd.docker.distribution.manifest.v1+prettyjws"

	// AnnotationRefName names a manifest in an OCI layout's index.json.
	AnnotationRefName = "org.opencontainers.image.ref.name"
	// AnnotationTitle names a file (an artifact's layer).
	AnnotationTitle = "org.opencontainers.image.title"
)

// Layer kinds.
const (
	KindTar       = "tar"
	KindTarGzip   = "tar+gzip"
	KindTarZstd   = "tar+zstd"
	KindErofs     = "erofs"
	KindErofsZstd = "erofs+zstd"
)

// layerKinds maps every layer media type accepted to its kind.
var layerKinds = map[string]string{
	"application/vnd.oci.image.layer.v1.tar":                       KindTar,
	"application/vnd.oci.image.layer.v1.tar+gzip":                  KindTarGzip,
	"application/vnd.oci.image.layer.v1.tar+zstd":                  KindTarZstd,
	"application/vnd.oci.image.layer.nondistributable.v1.tar":      KindTar,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": KindTarGzip,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": KindTarZstd,
	"application/vnd.docker.image.rootfs.diff.tar.gzip":            KindTarGzip,
	"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":    KindTarGzip,
	"application/vnd.erofs.layer.v1":                               KindErofs,
	"application/vnd.erofs.layer.v1+zstd":                          KindErofsZstd,
}

// LayerKind returns the kind of a layer media type, or "" when it is not
// one this package accepts.
func LayerKind(mediaType string) string { return layerKinds[mediaType] }

// MaxConfig caps an image config blob.
const MaxConfig = 16 << 20

// maxLayers caps the layers of one image (the kernel's EROFS takes at
// most 2^16 devices; real images have tens).
const maxLayers = 4096

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	URLs         []string          `json:"urls,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	Platform     *Platform         `json:"platform,omitempty"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Data         []byte            `json:"data,omitempty"`
}

// Layer is one layer of an image, bottom first.
type Layer struct {
	MediaType string
	Digest    string
	Size      int64
	// DiffID is the digest of the uncompressed layer (the config's
	// rootfs.diff_ids entry).
	DiffID string
	// Kind is KindTar, KindTarGzip, KindTarZstd, KindErofs or KindErofsZstd.
	Kind string
	// Spec opens the raw (still compressed) blob with source.Opener.Open:
	// oci://HOST/REPO@DIGEST, or the absolute path of the layout's
	// blobs/sha256/HEX. Its digest is not checked here.
	Spec        string
	Annotations map[string]string
	// URLs are a foreign/non-distributable layer's download locations
	// (informational: Spec still names the registry or layout).
	URLs []string
}

// Image is a resolved image manifest.
type Image struct {
	Ref               Ref
	ManifestDigest    string
	ManifestMediaType string
	Manifest          []byte
	// IndexDigest is the index or manifest list the manifest was chosen
	// from ("" if the reference named the manifest itself).
	IndexDigest string
	// Platform is os/arch[/variant] of the image (from the config, else
	// from the index entry).
	Platform     string
	ConfigDigest string
	Config       []byte
	Layers       []Layer
}

// Resolver resolves references to images; it is safe for concurrent use.
type Resolver struct {
	op *source.Opener
}

// NewResolver returns a Resolver reading registries through op.
func NewResolver(op *source.Opener) *Resolver { return &Resolver{op: op} }

// store reads manifests and small blobs of one image, from a registry or
// a layout, checking their digests.
type store interface {
	// root returns the manifest or index named by the reference: its
	// media type ("" if unknown), body and digest; or a synthetic index
	// (digest "") when a layout tag names several manifests.
	root(ctx context.Context) (mediaType string, body []byte, digest string, err error)
	// manifest returns the manifest d names, digest- and size-checked.
	manifest(ctx context.Context, d Descriptor) (mediaType string, body []byte, err error)
	// blob returns the small blob d names, digest- and size-checked.
	blob(ctx context.Context, d Descriptor, max int64) ([]byte, error)
	// spec is the source spec of a blob.
	spec(digest string) string
}

var acceptManifests = []string{MediaTypeIndex, MediaTypeManifest, MediaTypeDockerList, MediaTypeDockerManifest, mediaTypeDockerSchema1S, mediaTypeDockerSchema1}

type registryStore struct {
	op  *source.Opener
	ref Ref
}

func (s *registryStore) root(ctx context.Context) (string, []byte, string, error) {
	return s.op.FetchManifest(ctx, s.ref.Host, s.ref.Repo, s.ref.manifestRef(), acceptManifests)
}

func (s *registryStore) manifest(ctx context.Context, d Descriptor) (string, []byte, error) {
	mt, b, _, err := s.op.FetchManifest(ctx, s.ref.Host, s.ref.Repo, d.Digest, acceptManifests)
	if err != nil {
		return "", nil, err
	}
	if int64(len(b)) != d.Size {
		return "", nil, fmt.Errorf("registry %s repository %s manifest %s: %d bytes, its descriptor says %d", s.ref.Host, s.ref.Repo, d.Digest, len(b), d.Size)
	}
	return mt, b, nil
}

func (s *registryStore) blob(ctx context.Context, d Descriptor, max int64) ([]byte, error) {
	if d.Size > max {
		return nil, fmt.Errorf("registry %s repository %s blob %s: its descriptor says %d bytes, more than the limit of %d", s.ref.Host, s.ref.Repo, d.Digest, d.Size, max)
	}
	b, err := s.op.FetchBlob(ctx, s.ref.Host, s.ref.Repo, d.Digest, d.Size)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != d.Size {
		return nil, fmt.Errorf("registry %s repository %s blob %s: %d bytes, its descriptor says %d", s.ref.Host, s.ref.Repo, d.Digest, len(b), d.Size)
	}
	return b, nil
}

func (s *registryStore) spec(digest string) string {
	return "oci://" + s.ref.Host + "/" + s.ref.Repo + "@" + digest
}

// Resolve resolves ref (ParseRef's syntax) to the image manifest for
// platform ("os/arch[/variant]"; "" = this machine) and its layers.
func (r *Resolver) Resolve(ctx context.Context, ref, platform string) (*Image, error) {
	return r.ResolveNotify(ctx, ref, platform, nil)
}

// ResolveNotify is Resolve, calling onManifest (when not nil, on the
// caller's goroutine) as soon as the image manifest is known, before its
// config is fetched, with an Image holding only Ref, IndexDigest and the
// manifest's digest, media type and bytes: enough to look for artifacts
// about it while the rest resolves.
func (r *Resolver) ResolveNotify(ctx context.Context, ref, platform string, onManifest func(Image)) (*Image, error) {
	rf, err := ParseRef(ref)
	if err != nil {
		return nil, err
	}
	want, err := ParsePlatform(platform)
	if err != nil {
		return nil, err
	}
	st, err := r.store(rf)
	if err != nil {
		return nil, err
	}
	img, err := resolve(ctx, st, rf, want, onManifest)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", rf, err)
	}
	return img, nil
}

func (r *Resolver) store(rf Ref) (store, error) {
	if rf.Transport == Layout {
		return openLayout(rf)
	}
	if r.op == nil {
		return nil, fmt.Errorf("image %s: no registry client", rf)
	}
	return &registryStore{op: r.op, ref: rf}, nil
}

// manifestHead is what every manifest and index has in common.
type manifestHead struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Manifests     json.RawMessage `json:"manifests"`
	Config        json.RawMessage `json:"config"`
	Layers        json.RawMessage `json:"layers"`
	FSLayers      json.RawMessage `json:"fsLayers"`
}

// mediaTypeOf decides what body is: the type the registry or descriptor
// gave when it is a manifest type, checked against the body's own
// mediaType field; else the body's field; else its shape.
func mediaTypeOf(given string, body []byte) (string, error) {
	var h manifestHead
	if err := json.Unmarshal(body, &h); err != nil {
		return "", fmt.Errorf("manifest is not valid JSON: %v", err)
	}
	if h.SchemaVersion == 1 || h.FSLayers != nil || given == mediaTypeDockerSchema1 || given == mediaTypeDockerSchema1S {
		return "", fmt.Errorf("Docker image manifest schema 1 is not supported (deprecated; convert it to schema 2 or OCI, e.g. with skopeo copy --format oci)")
	}
	known := func(t string) bool {
		return t == MediaTypeIndex || t == MediaTypeManifest || t == MediaTypeDockerList || t == MediaTypeDockerManifest
	}
	switch {
	case known(given):
		if h.MediaType != "" && h.MediaType != given {
			return "", fmt.Errorf("manifest served as %s says it is %q", given, h.MediaType)
		}
		return given, nil
	case h.MediaType != "":
		if !known(h.MediaType) {
			return "", fmt.Errorf("media type %q is not an image manifest or index", h.MediaType)
		}
		return h.MediaType, nil
	case h.Manifests != nil && h.Config == nil && h.Layers == nil:
		return MediaTypeIndex, nil
	case h.Config != nil && h.Manifests == nil:
		return MediaTypeManifest, nil
	}
	if given != "" {
		return "", fmt.Errorf("media type %q is not an image manifest or index", given)
	}
	return "", fmt.Errorf("neither an image manifest nor an index")
}

func resolve(ctx context.Context, st store, rf Ref, want Platform, onManifest func(Image)) (*Image, error) {
	given, body, digest, err := st.root(ctx)
	if err != nil {
		return nil, err
	}
	img := &Image{Ref: rf}
	var fromIndex *Platform
	for depth := 0; ; depth++ {
		mt, err := mediaTypeOf(given, body)
		if err != nil {
			if digest != "" {
				return nil, fmt.Errorf("manifest %s: %w", digest, err)
			}
			return nil, err
		}
		if mt == MediaTypeManifest || mt == MediaTypeDockerManifest {
			img.ManifestDigest, img.ManifestMediaType, img.Manifest = digest, mt, body
			break
		}
		if depth >= 3 {
			return nil, fmt.Errorf("index %s: indexes nested too deep", digest)
		}
		d, err := choose(body, digest, want)
		if err != nil {
			return nil, err
		}
		if img.IndexDigest == "" {
			img.IndexDigest = digest
		}
		fromIndex = d.Platform
		given, body, err = st.manifest(ctx, d)
		if err != nil {
			return nil, err
		}
		if d.MediaType != "" {
			if mt, err := mediaTypeOf(given, body); err == nil && mt != d.MediaType {
				return nil, fmt.Errorf("manifest %s: its index entry says %s, it is %s", d.Digest, d.MediaType, mt)
			}
			given = d.MediaType
		}
		digest = d.Digest
	}
	if onManifest != nil {
		onManifest(*img)
	}
	if err := parseManifest(ctx, st, img); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", img.ManifestDigest, err)
	}
	if img.Platform == "" && fromIndex != nil {
		img.Platform = normalize(*fromIndex).String()
	}
	return img, nil
}

// checkDescriptor refuses a descriptor this package cannot read.
func checkDescriptor(what string, d Descriptor) error {
	if !source.IsDigest(d.Digest) {
		if strings.HasPrefix(d.Digest, "sha512:") || strings.HasPrefix(d.Digest, "sha384:") {
			return fmt.Errorf("%s: digest algorithm of %.80q is not supported (only sha256)", what, d.Digest)
		}
		return fmt.Errorf("%s: bad digest %.80q (want sha256:64 lower-case hex)", what, d.Digest)
	}
	if d.Size < 0 {
		return fmt.Errorf("%s %s: negative size %d", what, d.Digest, d.Size)
	}
	return nil
}

// choose picks the manifest for want from an index or manifest list.
func choose(body []byte, digest string, want Platform) (Descriptor, error) {
	name := "index " + digest
	if digest == "" {
		name = "index.json"
	}
	var idx struct {
		Manifests []Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(body, &idx); err != nil {
		return Descriptor{}, fmt.Errorf("%s: %v", name, err)
	}
	best, bestRank := -1, -1
	var have []string
	for i, d := range idx.Manifests {
		if d.Platform == nil {
			have = append(have, "(no platform)")
			continue
		}
		have = append(have, normalize(*d.Platform).String())
		rk := rank(want, *d.Platform)
		if rk < 0 || (best >= 0 && rk >= bestRank) {
			continue
		}
		if err := checkDescriptor(fmt.Sprintf("%s entry %d", name, i), d); err != nil {
			return Descriptor{}, err
		}
		if d.MediaType != "" && d.MediaType != MediaTypeManifest && d.MediaType != MediaTypeDockerManifest &&
			d.MediaType != MediaTypeIndex && d.MediaType != MediaTypeDockerList {
			continue // an artifact in the index
		}
		best, bestRank = i, rk
	}
	if best < 0 {
		sort.Strings(have)
		have = slices.Compact(have)
		if len(have) == 0 {
			return Descriptor{}, fmt.Errorf("%s lists no manifests", name)
		}
		return Descriptor{}, fmt.Errorf("%s has no manifest for platform %s; it has %s", name, want, strings.Join(have, ", "))
	}
	return idx.Manifests[best], nil
}

// parseManifest reads the layers and the config of img.Manifest.
func parseManifest(ctx context.Context, st store, img *Image) error {
	var m struct {
		Config Descriptor   `json:"config"`
		Layers []Descriptor `json:"layers"`
	}
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		return err
	}
	switch m.Config.MediaType {
	case MediaTypeConfig, MediaTypeDockerConfig:
	case "":
		return fmt.Errorf("no config")
	default:
		return fmt.Errorf("config media type %q is not an image config (an artifact, not an image?)", m.Config.MediaType)
	}
	if err := checkDescriptor("config", m.Config); err != nil {
		return err
	}
	if len(m.Layers) == 0 {
		return fmt.Errorf("no layers")
	}
	if len(m.Layers) > maxLayers {
		return fmt.Errorf("%d layers, more than the %d supported", len(m.Layers), maxLayers)
	}
	for i, l := range m.Layers {
		if err := checkDescriptor(fmt.Sprintf("layer %d", i), l); err != nil {
			return err
		}
		if layerKinds[l.MediaType] == "" {
			return fmt.Errorf("layer %d (%s): media type %q is not supported (want an OCI or Docker tar layer, gzip or zstd compressed or not, or an EROFS layer)", i, l.Digest, l.MediaType)
		}
	}
	cb, err := st.blob(ctx, m.Config, MaxConfig)
	if err != nil {
		return err
	}
	var cfg struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
		RootFS       *struct {
			Type    string   `json:"type"`
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(cb, &cfg); err != nil {
		return fmt.Errorf("config %s: %v", m.Config.Digest, err)
	}
	if cfg.RootFS == nil || cfg.RootFS.Type != "layers" {
		return fmt.Errorf("config %s: no rootfs of type \"layers\"", m.Config.Digest)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return fmt.Errorf("config %s: %d rootfs.diff_ids for %d layers", m.Config.Digest, len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	img.ConfigDigest, img.Config = m.Config.Digest, cb
	if cfg.OS != "" && cfg.Architecture != "" {
		img.Platform = normalize(Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}).String()
	}
	for i, l := range m.Layers {
		if !source.IsDigest(cfg.RootFS.DiffIDs[i]) {
			return fmt.Errorf("config %s: rootfs.diff_ids[%d] %.80q is not a sha256 digest", m.Config.Digest, i, cfg.RootFS.DiffIDs[i])
		}
		img.Layers = append(img.Layers, Layer{
			MediaType: l.MediaType, Digest: l.Digest, Size: l.Size, DiffID: cfg.RootFS.DiffIDs[i],
			Kind: layerKinds[l.MediaType], Spec: st.spec(l.Digest), Annotations: l.Annotations, URLs: l.URLs,
		})
	}
	return nil
}
