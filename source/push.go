package source

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
)

var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// IsTag reports whether s is a valid tag.
func IsTag(s string) bool { return tagRE.MatchString(s) }

// Descriptor is an OCI content descriptor, as found in image indexes and
// referrers answers.
type Descriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

func pushScope(repo string) string { return "repository:" + repo + ":pull,push" }

// PushBlob uploads data to repo unless the registry has it already (HEAD),
// with a monolithic upload: POST /v2/REPO/blobs/uploads/, then PUT to the
// Location with ?digest=. It returns the digest, sha256:HEX.
func (o *Opener) PushBlob(ctx context.Context, host, repo string, data []byte) (string, error) {
	digest := Digest(data)
	where := fmt.Sprintf("registry %s repository %s blob %s", host, repo, digest)
	reg, err := o.registryFor(host, repo)
	if err != nil {
		return "", err
	}
	base := fmt.Sprintf("%s://%s/v2/%s/blobs/", reg.scheme, host, repo)
	resp, err := reg.send(ctx, regRequest{method: http.MethodHead, url: base + digest, scope: pushScope(repo), where: where})
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK && resp.ContentLength == int64(len(data)) {
		return digest, nil
	}
	resp, err = reg.send(ctx, regRequest{method: http.MethodPost, url: base + "uploads/", scope: pushScope(repo), where: where + ": start upload"})
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusAccepted {
		defer resp.Body.Close()
		return "", fmt.Errorf("%s: start upload: %s", where, statusText(resp))
	}
	drain(resp)
	loc := resp.Header.Get("Location")
	u, err := resp.Request.URL.Parse(loc)
	if loc == "" || err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return "", fmt.Errorf("%s: start upload: no usable Location in the answer", where)
	}
	q := u.Query()
	q.Set("digest", digest)
	u.RawQuery = q.Encode()
	h := http.Header{"Content-Type": {"application/octet-stream"}}
	resp, err = reg.send(ctx, regRequest{method: http.MethodPut, url: u.String(), body: data, header: h, scope: pushScope(repo), where: where + ": upload"})
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("%s: upload: %s", where, statusText(resp))
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != digest {
		return "", fmt.Errorf("%s: upload: the registry stored digest %.80q", where, got)
	}
	return digest, nil
}

// PushManifest PUTs body as /v2/REPO/manifests/REF (a tag, or "" or the
// body's digest to push it by digest) with Content-Type mediaType and
// returns its digest.
func (o *Opener) PushManifest(ctx context.Context, host, repo, ref, mediaType string, body []byte) (string, error) {
	digest := Digest(body)
	if ref == "" {
		ref = digest
	}
	where := fmt.Sprintf("registry %s repository %s manifest %s", host, repo, ref)
	reg, err := o.registryFor(host, repo)
	if err != nil {
		return "", err
	}
	if len(body) > MaxManifest {
		return "", fmt.Errorf("%s: %d bytes exceed the manifest limit of %d", where, len(body), MaxManifest)
	}
	if digestRE.MatchString(ref) && ref != digest {
		return "", fmt.Errorf("%s: the body's digest is %s", where, digest)
	}
	if !digestRE.MatchString(ref) && !tagRE.MatchString(ref) {
		return "", fmt.Errorf("%s: bad tag", where)
	}
	h := http.Header{"Content-Type": {mediaType}}
	resp, err := reg.send(ctx, regRequest{method: http.MethodPut, body: body, header: h, scope: pushScope(repo), where: where,
		url: fmt.Sprintf("%s://%s/v2/%s/manifests/%s", reg.scheme, host, repo, ref)})
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: push: %s", where, statusText(resp))
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != digest {
		return "", fmt.Errorf("%s: push: the registry stored digest %.80q, want %s", where, got, digest)
	}
	return digest, nil
}

// Referrers lists the manifests whose subject is digest in repo, through
// GET /v2/REPO/referrers/DIGEST (filtered by artifactType when not "";
// the filter is applied here too, as registries may ignore it). supported
// is false when the registry has no referrers API (404, as distribution
// 2.8 answers): the caller falls back to the sha256-HEX tag schema.
func (o *Opener) Referrers(ctx context.Context, host, repo, digest, artifactType string) (refs []Descriptor, supported bool, err error) {
	where := fmt.Sprintf("registry %s repository %s referrers of %s", host, repo, digest)
	reg, err := o.registryFor(host, repo)
	if err != nil {
		return nil, false, err
	}
	if !digestRE.MatchString(digest) {
		return nil, false, fmt.Errorf("%s: bad digest (want sha256:64 hex)", where)
	}
	u := fmt.Sprintf("%s://%s/v2/%s/referrers/%s", reg.scheme, host, repo, digest)
	if artifactType != "" {
		u += "?artifactType=" + url.QueryEscape(artifactType)
	}
	h := http.Header{"Accept": {"application/vnd.oci.image.index.v1+json"}}
	resp, err := reg.send(ctx, regRequest{method: http.MethodGet, url: u, header: h, scope: "repository:" + repo + ":pull", where: where})
	if err != nil {
		return nil, false, err
	}
	if resp.StatusCode == http.StatusNotFound {
		drain(resp)
		return nil, false, nil
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, false, fmt.Errorf("%s: %s", where, statusText(resp))
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/vnd.oci.image.index.v1+json") && !strings.HasPrefix(ct, "application/json") {
		drain(resp)
		return nil, false, nil // something else answered (an HTML page): no API
	}
	b, err := readCapped(resp, MaxManifest, where)
	if err != nil {
		return nil, true, err
	}
	var idx struct {
		Manifests []Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, true, fmt.Errorf("%s: not an image index: %v", where, err)
	}
	for _, d := range idx.Manifests {
		if !digestRE.MatchString(d.Digest) || d.Size < 0 {
			return nil, true, fmt.Errorf("%s: bad descriptor (digest %.80q)", where, d.Digest)
		}
		if artifactType == "" || d.ArtifactType == artifactType {
			refs = append(refs, d)
		}
	}
	return refs, true, nil
}
