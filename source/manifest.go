package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MaxManifest caps a manifest or index body (the distribution spec's
// recommended limit for registries is 4 MiB).
const MaxManifest = 4 << 20

// ErrNotFound is matched (errors.Is) by the errors of FetchManifest and
// FetchBlob for a 404: no such tag, manifest or blob in the repository.
var ErrNotFound = errors.New("not found")

type notFound struct{ msg string }

func (e *notFound) Error() string        { return e.msg }
func (e *notFound) Is(target error) bool { return target == ErrNotFound }

// regRequest is one request to a registry's API with the per-registry
// credentials, tokens and TLS; body (if any) is replayed on the retry
// after an auth challenge and on redirects.
type regRequest struct {
	method, url, scope, where string
	body                      []byte
	header                    http.Header
}

// send issues req, answering one auth challenge. Authorization goes only
// to the registry's own host (see dropAuthOffHost). The caller closes the
// body; 401 and 403 after the challenge are turned into errors here.
func (r *registry) send(ctx context.Context, q regRequest) (*http.Response, error) {
	for attempt := 0; attempt < 2; attempt++ {
		auth, err := r.authorization(ctx, q.scope, q.where)
		if err != nil {
			return nil, err
		}
		var rd io.Reader
		if q.body != nil {
			rd = bytes.NewReader(q.body)
		}
		req, err := http.NewRequestWithContext(ctx, q.method, q.url, rd)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", q.where, err)
		}
		if q.body != nil {
			body := q.body
			req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
			req.ContentLength = int64(len(body))
		}
		for k, v := range q.header {
			req.Header[k] = v
		}
		if auth != "" && req.URL.Host == r.hostport {
			req.Header.Set("Authorization", auth)
		}
		resp, err := r.client.Do(req)
		if err != nil {
			permanent := ctx.Err() != nil || untrusted(err)
			err = fmt.Errorf("%s: %v", q.where, scrub(err))
			if !permanent {
				err = &transient{err: err}
			}
			return nil, err
		}
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 {
			ch := resp.Header.Get("WWW-Authenticate")
			drain(resp)
			if err := r.challenge(ctx, ch, q.scope, q.where, auth); err != nil {
				return nil, err
			}
			continue
		}
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			st := statusText(resp)
			resp.Body.Close()
			return nil, fmt.Errorf("%s: %s: check the credentials in the auth file (scope %s)", q.where, st, q.scope)
		}
		return resp, nil
	}
	return nil, fmt.Errorf("%s: authentication loop", q.where)
}

// transient marks an error worth retrying: the connection failed, the
// registry answered 429 or 5xx, the body broke off or did not match its
// digest. after is the server's Retry-After, if it gave one.
type transient struct {
	err   error
	after time.Duration
}

func (e *transient) Error() string { return e.err.Error() }
func (e *transient) Unwrap() error { return e.err }

// untrusted reports errors a retry cannot fix: the server's certificate
// is not trusted, or it does not speak TLS.
func untrusted(err error) bool {
	var cv *tls.CertificateVerificationError
	var rh tls.RecordHeaderError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &cv) || errors.As(err, &rh) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci)
}

// statusErr is the error for an unexpected answer, transient for 429
// and 5xx.
func statusErr(resp *http.Response, where string) error {
	err := fmt.Errorf("%s: %s", where, statusText(resp))
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
		t := &transient{err: err}
		if secs, e := strconv.Atoi(resp.Header.Get("Retry-After")); e == nil && secs >= 0 {
			t.after = time.Duration(min(secs, 30)) * time.Second
		}
		return t
	}
	return err
}

// retrying runs get until it succeeds or fails for good, retrying
// transient failures up to Options.Retries times with the blob reads'
// backoff (RetryBase doubled per retry, at most 5 s, or the server's
// Retry-After): manifest and config GETs are idempotent.
func (o *Opener) retrying(ctx context.Context, get func() error) error {
	for attempt := 0; ; attempt++ {
		err := get()
		var t *transient
		if err == nil || !errors.As(err, &t) || attempt >= o.opt.Retries {
			return err
		}
		d := min(o.opt.RetryBase<<attempt, 5*time.Second)
		if t.after > 0 {
			d = t.after
		}
		o.opt.Logger.Debug("registry request failed; retrying", "err", err, "in", d)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(d):
		}
	}
}

func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
}

// readCapped reads at most max bytes of the body; more is an error.
func readCapped(resp *http.Response, max int64, where string) ([]byte, error) {
	defer resp.Body.Close()
	if resp.ContentLength > max {
		return nil, fmt.Errorf("%s: body of %d bytes exceeds the limit of %d", where, resp.ContentLength, max)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, &transient{err: fmt.Errorf("%s: reading the body: %v", where, scrub(err))}
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: body exceeds the limit of %d bytes", where, max)
	}
	return b, nil
}

// Digest is the sha256 digest of b, sha256:HEX.
func Digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// IsDigest reports whether s is sha256:64 lower-case hex.
func IsDigest(s string) bool { return digestRE.MatchString(s) }

// IsRepository reports whether s is a valid repository name.
func IsRepository(s string) bool { return repoRE.MatchString(s) }

// statusText is a short, credential-free description of an error answer:
// the status and the first error code of a distribution error body.
func statusText(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	s := resp.Status
	if i := bytes.Index(b, []byte(`"code":"`)); i >= 0 {
		rest := b[i+8:]
		if j := bytes.IndexByte(rest, '"'); j > 0 && j < 64 {
			s += " (" + string(rest[:j]) + ")"
		}
	}
	return s
}

func (o *Opener) registryFor(host, repo string) (*registry, error) {
	if host == "" || strings.ContainsAny(host, "/@ ") {
		return nil, fmt.Errorf("bad registry host %q", host)
	}
	if !repoRE.MatchString(repo) {
		return nil, fmt.Errorf("registry %s: bad repository name %q", host, repo)
	}
	return o.registry(host)
}

// FetchManifest GETs /v2/REPO/manifests/REF (a tag or a sha256 digest)
// with accept as the Accept header and returns the media type the
// registry gave (Content-Type without parameters), the body (at most
// MaxManifest bytes) and its digest. A digest ref must equal sha256 of the
// body; for a tag, the Docker-Content-Digest header (when present) must.
//
// Transient failures (connection errors, 429, 5xx, a broken or mismatching
// body) are retried as blob reads are.
func (o *Opener) FetchManifest(ctx context.Context, host, repo, ref string, accept []string) (mediaType string, body []byte, digest string, err error) {
	err = o.retrying(ctx, func() error {
		var e error
		mediaType, body, digest, e = o.fetchManifest(ctx, host, repo, ref, accept)
		return e
	})
	return mediaType, body, digest, err
}

func (o *Opener) fetchManifest(ctx context.Context, host, repo, ref string, accept []string) (mediaType string, body []byte, digest string, err error) {
	where := fmt.Sprintf("registry %s repository %s manifest %s", host, repo, ref)
	reg, err := o.registryFor(host, repo)
	if err != nil {
		return "", nil, "", err
	}
	if ref == "" || len(ref) > 256 || strings.ContainsAny(ref, "/?# ") {
		return "", nil, "", fmt.Errorf("%s: bad tag or digest", where)
	}
	h := http.Header{}
	if len(accept) > 0 {
		h.Set("Accept", strings.Join(accept, ", "))
	}
	resp, err := reg.send(ctx, regRequest{method: http.MethodGet, scope: "repository:" + repo + ":pull", where: where, header: h,
		url: fmt.Sprintf("%s://%s/v2/%s/manifests/%s", reg.scheme, host, repo, ref)})
	if err != nil {
		return "", nil, "", err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return "", nil, "", &notFound{fmt.Sprintf("%s: %s: no such manifest in this repository", where, statusText(resp))}
		}
		return "", nil, "", statusErr(resp, where)
	}
	body, err = readCapped(resp, MaxManifest, where)
	if err != nil {
		return "", nil, "", err
	}
	digest = Digest(body)
	if digestRE.MatchString(ref) {
		if digest != ref {
			return "", nil, "", &transient{err: fmt.Errorf("%s: the body's digest is %s: the registry sent another manifest", where, digest)}
		}
	} else if dcd := resp.Header.Get("Docker-Content-Digest"); dcd != "" && dcd != digest {
		if len(dcd) > 100 {
			dcd = dcd[:100] + "..."
		}
		return "", nil, "", fmt.Errorf("%s: Docker-Content-Digest %q does not match the body's digest %s", where, dcd, digest)
	}
	mediaType = resp.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(mediaType); err == nil {
		mediaType = mt
	}
	return mediaType, body, digest, nil
}

// FetchBlob GETs a small blob (a config) whole: at most max bytes, its
// sha256 checked against digest.
// Transient failures are retried as in FetchManifest.
func (o *Opener) FetchBlob(ctx context.Context, host, repo, digest string, max int64) ([]byte, error) {
	var b []byte
	err := o.retrying(ctx, func() error {
		var e error
		b, e = o.fetchBlob(ctx, host, repo, digest, max)
		return e
	})
	return b, err
}

func (o *Opener) fetchBlob(ctx context.Context, host, repo, digest string, max int64) ([]byte, error) {
	where := fmt.Sprintf("registry %s repository %s blob %s", host, repo, digest)
	reg, err := o.registryFor(host, repo)
	if err != nil {
		return nil, err
	}
	if !digestRE.MatchString(digest) {
		return nil, fmt.Errorf("%s: bad digest (want sha256:64 hex)", where)
	}
	t0 := time.Now()
	resp, err := reg.send(ctx, regRequest{method: http.MethodGet, scope: "repository:" + repo + ":pull", where: where,
		url: fmt.Sprintf("%s://%s/v2/%s/blobs/%s", reg.scheme, host, repo, digest)})
	if err != nil {
		return nil, err
	}
	t1 := time.Now()
	defer func() {
		o.opt.Logger.Debug("blob fetched", "where", where, "headers", t1.Sub(t0), "total", time.Since(t0))
	}()
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return nil, &notFound{fmt.Sprintf("%s: %s: no such blob in this repository", where, statusText(resp))}
		}
		return nil, statusErr(resp, where)
	}
	b, err := readCapped(resp, max, where)
	if err != nil {
		return nil, err
	}
	if got := Digest(b); got != digest {
		return nil, &transient{err: fmt.Errorf("%s: the body's digest is %s (corrupt or wrong blob)", where, got)}
	}
	return b, nil
}
