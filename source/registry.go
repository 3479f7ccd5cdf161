package source

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

var (
	repoRE   = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	digestRE = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
)

// ociRef is a parsed oci://HOST[:PORT]/REPO@sha256:HEX.
type ociRef struct {
	host, repo, digest string
}

func parseOCI(spec string) (ociRef, error) {
	rest := strings.TrimPrefix(spec, "oci://")
	hostport, path, ok := strings.Cut(rest, "/")
	repo, dg, ok2 := strings.Cut(path, "@")
	if !ok || !ok2 || hostport == "" {
		return ociRef{}, fmt.Errorf("blob %q: want oci://HOST[:PORT]/REPO@sha256:HEX", spec)
	}
	if !repoRE.MatchString(repo) {
		return ociRef{}, fmt.Errorf("blob %q: bad repository name %q", spec, repo)
	}
	if !digestRE.MatchString(dg) {
		return ociRef{}, fmt.Errorf("blob %q: bad digest %q (want sha256:64 hex)", spec, dg)
	}
	return ociRef{hostport, repo, dg}, nil
}

// registry is one registry host: its client, scheme, credential and tokens,
// shared by every blob on it.
type registry struct {
	hostport, scheme string
	client           *http.Client
	cred             *credential

	mu     sync.Mutex
	tokens map[string]*token // by scope
	basic  bool              // the registry asked for Basic auth
	// lastChallenge is the last Bearer challenge, for refreshing tokens
	// before they expire without another 401 round trip.
	lastChallenge string
}

type token struct {
	mu      sync.Mutex // one fetch at a time per scope; waiters share it
	value   string
	expires time.Time
}

func (o *Opener) registry(hostport string) (*registry, error) {
	o.hosts.mu.Lock()
	defer o.hosts.mu.Unlock()
	if o.regs == nil {
		o.regs = map[string]*registry{}
	}
	if r := o.regs[hostport]; r != nil {
		return r, nil
	}
	cred, err := lookupCredential(o.opt.AuthFile, hostport)
	if err != nil {
		return nil, err
	}
	scheme := "https"
	if slices.Contains(o.opt.Insecure, hostport) {
		scheme = "http"
	}
	tc, err := o.tlsConfig(hostport)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", hostport, err)
	}
	r := &registry{hostport: hostport, scheme: scheme, cred: cred, tokens: map[string]*token{},
		client: &http.Client{Transport: newTransport(tc), CheckRedirect: dropAuthOffHost}}
	o.regs[hostport] = r
	return r, nil
}

// ociBlob requests one blob; it remembers where the registry redirected it.
type ociBlob struct {
	reg  *registry
	ref  ociRef
	name string

	mu       sync.Mutex
	location string // redirect target, cached until it fails
}

func (b *ociBlob) where() string {
	return fmt.Sprintf("registry %s repository %s blob %s", b.ref.host, b.ref.repo, b.ref.digest)
}

func (b *ociBlob) blobURL() string {
	return fmt.Sprintf("%s://%s/v2/%s/blobs/%s", b.reg.scheme, b.ref.host, b.ref.repo, b.ref.digest)
}

func (b *ociBlob) scope() string { return "repository:" + b.ref.repo + ":pull" }

// do GETs the blob: from the cached redirect target when there is one
// (no Authorization: it is another host or a presigned URL), else from
// the registry with credentials, answering one auth challenge.
func (b *ociBlob) do(ctx context.Context, rangeHdr, ifRange string) (*http.Response, error) {
	b.mu.Lock()
	loc := b.location
	b.mu.Unlock()
	if loc != "" {
		resp, err := b.get(ctx, loc, rangeHdr, ifRange, "")
		if err == nil && resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
			return resp, nil
		}
		if err == nil {
			resp.Body.Close()
		}
		b.mu.Lock() // expired or refused: ask the registry again
		if b.location == loc {
			b.location = ""
		}
		b.mu.Unlock()
	}
	for attempt := 0; attempt < 2; attempt++ {
		auth, err := b.reg.authorization(ctx, b.scope(), b.where())
		if err != nil {
			return nil, err
		}
		resp, err := b.get(ctx, b.blobURL(), rangeHdr, ifRange, auth)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 {
			ch := resp.Header.Get("WWW-Authenticate")
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if err := b.reg.challenge(ctx, ch, b.scope(), b.where(), auth); err != nil {
				return nil, err
			}
			continue
		}
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			resp.Body.Close()
			return nil, fmt.Errorf("%s: %s (check the credentials in the auth file)", b.where(), resp.Status)
		}
		if resp.StatusCode == http.StatusNotFound {
			resp.Body.Close()
			return nil, fmt.Errorf("%s: 404 Not Found (no such blob in this repository)", b.where())
		}
		if final := resp.Request.URL.String(); final != b.blobURL() {
			b.mu.Lock()
			b.location = final
			b.mu.Unlock()
		}
		return resp, nil
	}
	return nil, fmt.Errorf("%s: authentication loop", b.where())
}

// get issues one GET. Authorization goes only to the registry host: Go's
// client drops it on redirects to another host, and cached redirect
// targets are fetched without it.
func (b *ociBlob) get(ctx context.Context, u, rangeHdr, ifRange, auth string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", b.where(), err)
	}
	req.Header.Set("Range", rangeHdr)
	if ifRange != "" {
		req.Header.Set("If-Range", ifRange)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := b.reg.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", b.where(), scrub(err))
	}
	return resp, nil
}

// authorization returns the header value for scope ("" = anonymous):
// Basic when the registry asked for it, else the bearer token, fetched
// again (from the last challenge seen) shortly before it expires.
func (r *registry) authorization(ctx context.Context, scope, where string) (string, error) {
	r.mu.Lock()
	basic, ch := r.basic, r.lastChallenge
	t := r.tokens[scope]
	r.mu.Unlock()
	if basic && r.cred != nil {
		req, _ := http.NewRequest(http.MethodGet, "/", nil)
		req.SetBasicAuth(r.cred.user, r.cred.pass)
		return req.Header.Get("Authorization"), nil
	}
	if t == nil || ch == "" {
		return "", nil
	}
	t.mu.Lock()
	v, ok := t.value, t.value != "" && time.Now().Before(t.expires)
	t.mu.Unlock()
	if !ok {
		if err := r.challenge(ctx, ch, scope, where, "Bearer "+v); err != nil {
			return "", err
		}
		t.mu.Lock()
		v = t.value
		t.mu.Unlock()
	}
	return "Bearer " + v, nil
}

// challenge answers a WWW-Authenticate header: Basic → send credentials;
// Bearer → fetch a token from the realm (one fetch per scope at a time,
// concurrent requests wait for it and share it).
func (r *registry) challenge(ctx context.Context, hdr, scope, where, used string) error {
	kind, params := parseChallenge(hdr)
	switch kind {
	case "basic":
		if r.cred == nil {
			return fmt.Errorf("%s: 401 Unauthorized: the registry wants credentials and the auth file has none for %s", where, r.hostport)
		}
		r.mu.Lock()
		r.basic = true
		r.mu.Unlock()
		return nil
	case "bearer":
		r.mu.Lock()
		r.lastChallenge = hdr
		r.mu.Unlock()
	default:
		return fmt.Errorf("%s: 401 Unauthorized with an unsupported challenge %q", where, kind)
	}
	r.mu.Lock()
	t := r.tokens[scope]
	if t == nil {
		t = &token{}
		r.tokens[scope] = t
	}
	r.mu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.value != "" && time.Now().Before(t.expires) && "Bearer "+t.value != used {
		return nil // another request fetched a new one meanwhile
	}
	realm := params["realm"]
	ru, err := url.Parse(realm)
	if err != nil || (ru.Scheme != "https" && ru.Scheme != "http") {
		return fmt.Errorf("%s: bad token realm in the challenge", where)
	}
	q := ru.Query()
	if s := params["service"]; s != "" {
		q.Set("service", s)
	}
	sc := params["scope"]
	if sc == "" {
		sc = scope
	}
	q.Set("scope", sc)
	ru.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ru.String(), nil)
	if err != nil {
		return fmt.Errorf("%s: token request: %v", where, err)
	}
	if r.cred != nil {
		req.SetBasicAuth(r.cred.user, r.cred.pass)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: token server %s: %v", where, ru.Host, scrub(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: token server %s answered %s (check the credentials in the auth file)", where, ru.Host, resp.Status)
	}
	var tr struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&tr); err != nil {
		return fmt.Errorf("%s: token server %s: bad JSON", where, ru.Host)
	}
	v := tr.Token
	if v == "" {
		v = tr.AccessToken
	}
	if v == "" {
		return fmt.Errorf("%s: token server %s returned no token", where, ru.Host)
	}
	life := time.Duration(tr.ExpiresIn) * time.Second
	if life <= 0 {
		life = 60 * time.Second // the distribution spec's default
	}
	// Refresh ahead of expiry: a tenth of the lifetime early, at most 30 s.
	t.value, t.expires = v, time.Now().Add(life-min(life/10, 30*time.Second))
	return nil
}

// parseChallenge parses `Bearer realm="...",service="...",scope="..."`.
func parseChallenge(h string) (string, map[string]string) {
	kind, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	params := map[string]string{}
	for rest != "" {
		rest = strings.TrimLeft(rest, " ,")
		k, v, ok := strings.Cut(rest, "=")
		if !ok {
			break
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if strings.HasPrefix(v, `"`) {
			end := strings.Index(v[1:], `"`)
			if end < 0 {
				params[k] = v[1:]
				break
			}
			params[k], rest = v[1:1+end], v[2+end:]
		} else {
			val, r, _ := strings.Cut(v, ",")
			params[k], rest = val, r
		}
	}
	return strings.ToLower(kind), params
}

func (o *Opener) openOCI(ctx context.Context, spec string) (Blob, error) {
	ref, err := parseOCI(spec)
	if err != nil {
		return nil, err
	}
	reg, err := o.registry(ref.host)
	if err != nil {
		return nil, err
	}
	b := &ociBlob{reg: reg, ref: ref, name: spec}
	return o.probe(ctx, b, spec, "oci:"+ref.digest, o.hosts.get(ref.host))
}

// dropAuthOffHost follows up to 10 redirects and never sends Authorization
// to a host:port other than the original request's (Go's own rule keeps
// it for the same host name on another port).
func dropAuthOffHost(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return fmt.Errorf("stopped after 10 redirects")
	}
	if req.URL.Host != via[0].URL.Host || req.URL.Scheme != via[0].URL.Scheme {
		req.Header.Del("Authorization")
	}
	return nil
}
