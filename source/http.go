package source

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// plainHTTP reads an http(s):// object.
type plainHTTP struct {
	client *http.Client
	u      *url.URL
	name   string
}

func (p *plainHTTP) where() string { return p.name }

func (p *plainHTTP) do(ctx context.Context, rangeHdr, ifRange string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", p.name, err)
	}
	req.Header.Set("Range", rangeHdr)
	if ifRange != "" {
		req.Header.Set("If-Range", ifRange)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", p.name, scrub(err))
	}
	return resp, nil
}

// scrub turns a *url.Error into its inner error, so the URL (whose query
// may carry a signature) never reaches a message.
func scrub(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

func (o *Opener) openHTTP(ctx context.Context, spec string) (Blob, error) {
	u, err := url.Parse(spec)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("blob %q: not a URL", redactSpec(spec))
	}
	name := redact(u)
	c, err := o.httpClient(u.Scheme + "://" + u.Host)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &plainHTTP{client: c, u: u, name: name}
	return o.probe(ctx, p, name, "", o.hosts.get(u.Host))
}

func redactSpec(s string) string {
	if u, err := url.Parse(s); err == nil {
		return redact(u)
	}
	return "(unparsable URL)"
}

// httpClient returns the one client (connection pool, HTTP/2 session) of
// scheme://host:port, shared by every blob there.
func (o *Opener) httpClient(origin string) (*http.Client, error) {
	o.hosts.mu.Lock()
	defer o.hosts.mu.Unlock()
	if c := o.clients[origin]; c != nil {
		return c, nil
	}
	u, _ := url.Parse(origin)
	tc, err := o.tlsConfig(u.Host)
	if err != nil {
		return nil, err
	}
	if o.clients == nil {
		o.clients = map[string]*http.Client{}
	}
	c := &http.Client{Transport: newTransport(tc)}
	o.clients[origin] = c
	return c, nil
}

// newTransport is the HTTP transport for remote blobs: keep-alive, HTTP/2
// where the server offers it, connect and first-byte timeouts.
func newTransport(tc *tls.Config) *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 20 * time.Second,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
	}
}
