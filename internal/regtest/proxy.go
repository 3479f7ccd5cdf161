package regtest

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fault is what the proxy does to a ranged GET instead of passing it on.
type Fault string

const (
	FaultNone Fault = ""
	Fault500  Fault = "500" // 500 Internal Server Error, upstream not asked
	Fault503  Fault = "503" // 503 Service Unavailable
	Fault429  Fault = "429" // 429 Too Many Requests
	// FaultReset sends the headers and half the body, then a TCP reset.
	FaultReset Fault = "reset"
	// FaultStall sends half the body, then nothing for the stall time
	// (SetStall; default a minute, longer than any client waits) and
	// then the rest, unless the client gave up.
	FaultStall Fault = "stall"
	// FaultHang sends nothing at all for the stall time, then the response.
	FaultHang Fault = "hang"
	// FaultShortBody declares the full Content-Length, sends half the
	// body and closes the connection.
	FaultShortBody Fault = "short-body"
	// FaultWrongRange asks upstream for the range one byte later and
	// passes that on: a consistent 206 for bytes that were not asked for.
	FaultWrongRange Fault = "wrong-range"
	// FaultRedirect answers a request upstream accepted (2xx, so the
	// credentials were checked) with 307 to RedirectTo/HEX, HEX being the
	// digest in the path (like a registry redirecting to its blob store).
	FaultRedirect Fault = "redirect"
)

// ProxyOptions configure StartProxy.
type ProxyOptions struct {
	// Upstream is the base URL requests are forwarded to.
	Upstream string
	// UpstreamCA is trusted for an https upstream (nil: system pool).
	UpstreamCA *CA
	// TLS, if set, makes the proxy serve https with a certificate from it
	// (written to Dir).
	TLS *CA
	Dir string
}

// Proxy is a reverse proxy in front of a registry or web server that adds
// latency and injects faults into ranged GETs, switchable while it runs.
type Proxy struct {
	URL  string // http(s)://127.0.0.1:PORT
	Addr string // 127.0.0.1:PORT

	upstream string
	client   *http.Client
	srv      *http.Server

	mu         sync.Mutex
	fault      Fault
	rate       float64
	latency    time.Duration
	stallFor   time.Duration
	redirectTo string
	injected   map[Fault]int
	forwarded  int
}

// StartProxy starts a proxy on a free port.
func StartProxy(opt ProxyOptions) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: l.Addr().String(), upstream: strings.TrimSuffix(opt.Upstream, "/"), client: Client(opt.UpstreamCA),
		stallFor: time.Minute, injected: map[Fault]int{}}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve), ReadHeaderTimeout: 10 * time.Second}
	if opt.TLS != nil {
		tc, err := opt.TLS.TLSConfig(opt.Dir, "proxy")
		if err != nil {
			l.Close()
			return nil, err
		}
		p.srv.TLSConfig = tc
		p.URL = "https://" + p.Addr
		go p.srv.ServeTLS(l, "", "")
	} else {
		p.URL = "http://" + p.Addr
		go p.srv.Serve(l)
	}
	return p, nil
}

// SetFault makes a fraction rate (0..1) of ranged GETs suffer f;
// FaultNone or rate 0 turns faults off.
func (p *Proxy) SetFault(f Fault, rate float64) {
	p.mu.Lock()
	p.fault, p.rate = f, rate
	p.mu.Unlock()
}

// SetLatency delays every request by d before it is forwarded.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// SetStall sets how long FaultStall and FaultHang hold a response
// (default a minute).
func (p *Proxy) SetStall(d time.Duration) {
	p.mu.Lock()
	p.stallFor = d
	p.mu.Unlock()
}

// SetRedirect sets FaultRedirect's target base URL.
func (p *Proxy) SetRedirect(base string) {
	p.mu.Lock()
	p.redirectTo = strings.TrimSuffix(base, "/")
	p.mu.Unlock()
}

// Injected counts the requests that suffered f.
func (p *Proxy) Injected(f Fault) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.injected[f]
}

// Forwarded counts requests passed upstream unharmed.
func (p *Proxy) Forwarded() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.forwarded
}

// Close stops the proxy and drops its connections.
func (p *Proxy) Close() { p.srv.Close() }

// pick decides the fate of one request.
func (p *Proxy) pick(r *http.Request) (Fault, time.Duration, time.Duration, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := FaultNone
	if p.fault != FaultNone && r.Method == http.MethodGet && r.Header.Get("Range") != "" && rand.Float64() < p.rate {
		f = p.fault
	}
	if f == FaultNone {
		p.forwarded++
	} else {
		p.injected[f]++
	}
	return f, p.latency, p.stallFor, p.redirectTo
}

var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	f, latency, stall, redirect := p.pick(r)
	if latency > 0 {
		time.Sleep(latency)
	}
	switch f {
	case FaultHang:
		select {
		case <-time.After(stall):
		case <-r.Context().Done():
			return
		}
	case Fault500, Fault503, Fault429:
		code, _ := strconv.Atoi(string(f))
		if f == Fault429 {
			w.Header().Set("Retry-After", "0")
		}
		http.Error(w, http.StatusText(code), code)
		return
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, p.upstream+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	out.ContentLength = r.ContentLength
	if f == FaultWrongRange {
		var a, b int64
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b); err == nil {
			out.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", a+1, b+1))
		}
	}
	resp, err := p.client.Do(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	if f == FaultRedirect && resp.StatusCode/100 == 2 {
		io.Copy(io.Discard, resp.Body)
		http.Redirect(w, r, redirect+"/"+strings.TrimPrefix(path.Base(r.URL.Path), "sha256:"), http.StatusTemporaryRedirect)
		return
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	hdr := w.Header()
	for k, v := range resp.Header {
		hdr[k] = v
	}
	for _, h := range hopHeaders {
		hdr.Del(h)
	}
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	half := len(body) / 2
	switch f {
	case FaultStall:
		w.WriteHeader(resp.StatusCode)
		w.Write(body[:half])
		w.(http.Flusher).Flush()
		select {
		case <-time.After(stall):
		case <-r.Context().Done():
			return
		}
		w.Write(body[half:])
	case FaultReset, FaultShortBody:
		conn, bw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		writeHead(bw, resp.StatusCode, hdr)
		bw.Write(body[:half])
		bw.Flush()
		if f == FaultReset {
			resetOnClose(conn)
		}
	default:
		w.WriteHeader(resp.StatusCode)
		w.Write(body)
	}
}

func writeHead(bw *bufio.ReadWriter, code int, h http.Header) {
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n", code, http.StatusText(code))
	h.Write(bw)
	bw.WriteString("\r\n")
}

// resetOnClose makes Close send a TCP RST instead of a FIN.
func resetOnClose(c net.Conn) {
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = nc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
}
