// Package ociimage resolves image references to a manifest and its
// layers, from a registry (through source.Opener: auth files, tokens,
// certs.d trust, insecure registries) or from an OCI image layout on
// disk; and keeps artifacts (files attached to an image through the OCI
// 1.1 subject field) in a registry, found through the referrers API or
// the sha256-HEX tag fallback.
//
// Every manifest, index and config read is digest-checked and size
// capped; layer blobs are not read here: each Layer carries a source spec
// for source.Opener.Open, and its digest is checked by whoever reads it.
package ociimage

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/erofs-blockd/erofs-blockd/source"
)

// Transports of a Ref.
const (
	Registry = "oci"        // oci://HOST[:PORT]/REPO[:TAG|@DIGEST]
	Layout   = "oci-layout" // oci-layout:DIR[:TAG|@DIGEST]
)

// Ref is a parsed image reference.
type Ref struct {
	Transport string // Registry or Layout
	Host      string // HOST[:PORT] (Registry)
	Repo      string // repository (Registry)
	Dir       string // layout directory (Layout)
	// Tag is the tag ("latest" when a registry ref has neither tag nor
	// digest; "" for a layout ref without one: its only manifest).
	Tag string
	// Digest, if set, pins the manifest or index (sha256:HEX); a tag given
	// with it is informational.
	Digest string
}

var (
	hostRE = regexp.MustCompile(`^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$`)
	// layoutTagRE is the OCI layout's ref.name grammar, loosely: no '/'
	// (it is the last component), no '@' and no spaces.
	layoutTagRE = regexp.MustCompile(`^[A-Za-z0-9_.+-][A-Za-z0-9_.+:-]{0,254}$`)
)

// ParseRef parses
//
//	oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]    (default tag "latest")
//	oci-layout:DIR[:TAG][@sha256:HEX]
//
// A trailing @sha256:HEX is always the digest. For a layout, the tag is
// what follows the last ':' after the last '/' of the rest; so a DIR whose
// last component contains ':' is written with a trailing '/'
// (oci-layout:/srv/a:b/ is DIR /srv/a:b, no tag; oci-layout:/srv/a:b/:v1
// has tag v1), and DIR itself may contain ':' anywhere before its last '/'.
func ParseRef(s string) (Ref, error) {
	bad := func(why string) (Ref, error) {
		return Ref{}, fmt.Errorf("image reference %q: %s", s, why)
	}
	switch {
	case strings.HasPrefix(s, "oci://"):
		rest := strings.TrimPrefix(s, "oci://")
		host, path, ok := strings.Cut(rest, "/")
		if !ok || host == "" || path == "" {
			return bad("want oci://HOST[:PORT]/REPO[:TAG|@sha256:HEX]")
		}
		if !hostRE.MatchString(host) {
			return bad(fmt.Sprintf("bad registry host %q", host))
		}
		r := Ref{Transport: Registry, Host: host}
		if i := strings.LastIndexByte(path, '@'); i >= 0 {
			r.Digest, path = path[i+1:], path[:i]
			if !source.IsDigest(r.Digest) {
				return bad(fmt.Sprintf("bad digest %q (want sha256:64 lower-case hex)", r.Digest))
			}
		}
		if i := strings.LastIndexByte(path, ':'); i > strings.LastIndexByte(path, '/') {
			r.Tag, path = path[i+1:], path[:i]
			if !source.IsTag(r.Tag) {
				return bad(fmt.Sprintf("bad tag %q", r.Tag))
			}
		}
		if !source.IsRepository(path) {
			return bad(fmt.Sprintf("bad repository name %q (lower-case letters, digits, separators . _ __ -, components joined by /)", path))
		}
		r.Repo = path
		if r.Tag == "" && r.Digest == "" {
			r.Tag = "latest"
		}
		return r, nil
	case strings.HasPrefix(s, "oci-layout:"):
		rest := strings.TrimPrefix(s, "oci-layout:")
		r := Ref{Transport: Layout}
		if i := strings.LastIndexByte(rest, '@'); i > strings.LastIndexByte(rest, '/') && strings.HasPrefix(rest[i+1:], "sha256:") {
			r.Digest, rest = rest[i+1:], rest[:i]
			if !source.IsDigest(r.Digest) {
				return bad(fmt.Sprintf("bad digest %q (want sha256:64 lower-case hex)", r.Digest))
			}
		}
		if i := strings.LastIndexByte(rest, ':'); i > strings.LastIndexByte(rest, '/') {
			r.Tag, rest = rest[i+1:], rest[:i]
			if !layoutTagRE.MatchString(r.Tag) {
				return bad(fmt.Sprintf("bad tag %q", r.Tag))
			}
		}
		if rest == "" {
			return bad("want oci-layout:DIR[:TAG|@sha256:HEX]")
		}
		if strings.ContainsRune(rest, 0) {
			return bad("NUL in the directory")
		}
		r.Dir = rest
		return r, nil
	}
	return bad("want oci://HOST[:PORT]/REPO[:TAG|@sha256:HEX] or oci-layout:DIR[:TAG|@sha256:HEX]")
}

// String formats r back into a reference ParseRef accepts.
func (r Ref) String() string {
	var s string
	switch r.Transport {
	case Registry:
		s = "oci://" + r.Host + "/" + r.Repo
	case Layout:
		s = "oci-layout:" + r.Dir
		if strings.LastIndexByte(r.Dir, ':') > strings.LastIndexByte(r.Dir, '/') {
			s += "/"
		}
	default:
		return "(no reference)"
	}
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest
	}
	return s
}

// manifestRef is the tag or digest asked of a registry.
func (r Ref) manifestRef() string {
	if r.Digest != "" {
		return r.Digest
	}
	return r.Tag
}
