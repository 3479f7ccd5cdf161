package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/erofs-blockd/erofs-blockd/blockdev"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// ErrExportRemoved ends the connections of an export RemoveExport removed.
var ErrExportRemoved = errors.New("nbd: export removed")

// ErrUnknownExport is returned by RemoveExport for a name not served.
var ErrUnknownExport = errors.New("nbd: unknown export")

// Export is one named device the server offers.
type Export struct {
	Name        string
	Description string
	Device      blockdev.Device
	// BlockSize is the preferred block size advertised in
	// NBD_INFO_BLOCK_SIZE (a power of two, 512..4096; 0: 4096), e.g. the
	// filesystem's block size.
	BlockSize uint32
}

// Config tunes a Server. The zero value is usable.
type Config struct {
	// MaxRequest is the largest READ (and WRITE payload) accepted and the
	// maximum payload advertised in NBD_INFO_BLOCK_SIZE. Default 32 MiB;
	// clamped to [4 KiB, 1 GiB].
	MaxRequest uint32
	// MaxInFlight bounds the requests served concurrently per connection.
	// Default 32.
	MaxInFlight int
	// HandshakeTimeout bounds the whole option phase. Default 30s.
	HandshakeTimeout time.Duration
	// MaxConnections bounds concurrent connections accepted by Serve;
	// extra connections are closed at once. 0 means no limit.
	MaxConnections int
	// MaxBufferBytes bounds the READ buffers in flight across all
	// connections (each connection also has its own bound). Default
	// 512 MiB, at least 2*MaxRequest.
	MaxBufferBytes int64
	// WriteTimeout bounds the writing of one batch of replies (one reply,
	// or those that finished while the previous batch was written; at most
	// the connection's READ budget) on connections accepted
	// by Serve or ServeConn: a client that stops reading its replies is
	// disconnected instead of pinning buffers and workers. Default 60s.
	// The kernel path (ServeTransmission) has no write timeout.
	WriteTimeout time.Duration
	// TLS enables NBD_OPT_STARTTLS. With TLSRequire every option other than
	// STARTTLS and ABORT is refused with NBD_REP_ERR_TLS_REQD until TLS is up.
	TLS        *tls.Config
	TLSRequire bool
	// Logger receives connection-level events. Default: discard.
	Logger *slog.Logger
	// Observer, if set, is told about connections and requests (metrics).
	Observer Observer
}

// RequestInfo describes a finished request for an Observer.
type RequestInfo struct {
	Export   string
	Command  Command
	Offset   uint64
	Length   uint32
	Errno    uint32 // NBD error value sent back; 0 on success
	Duration time.Duration
}

// Observer receives optional hooks for metrics. Methods are called from
// many goroutines and must be fast and safe for concurrent use.
type Observer interface {
	ConnOpen(remote string)
	ConnClose(remote string, err error)
	RequestStart(export string, cmd Command, length uint32)
	RequestDone(info RequestInfo)
}

// Server serves exports over the NBD protocol. It is safe for concurrent use.
type Server struct {
	cfg  Config
	log  *slog.Logger
	bufs bufPool

	backendLog rateLog // backend errors: one log line per export per interval
	budget     budget  // READ buffer bytes in flight, server-wide

	mu        sync.Mutex
	exports   map[string]*Export
	order     []string
	def       *Export
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closing   bool
	active    atomic.Int64
	idle      chan struct{} // closed when conns drains during shutdown
}

// NewServer returns a server with cfg, defaults filled in.
func NewServer(cfg Config) *Server {
	if cfg.MaxRequest == 0 {
		cfg.MaxRequest = defaultMaxReq
	}
	cfg.MaxRequest = min(max(cfg.MaxRequest, 4096), 1<<30)
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = defaultInFlight
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	if cfg.MaxBufferBytes <= 0 {
		cfg.MaxBufferBytes = 512 << 20
	}
	cfg.MaxBufferBytes = max(cfg.MaxBufferBytes, 2*int64(cfg.MaxRequest))
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 60 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:       cfg,
		log:       log,
		exports:   make(map[string]*Export),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
	}
	s.budget.init(cfg.MaxBufferBytes)
	return s
}

// AddExport adds e; it may be called while serving. The first export added
// to a server without a default export becomes the default, reached with
// the empty name (see RemoveExport).
func (s *Server) AddExport(e Export) error {
	if e.Device == nil {
		return fmt.Errorf("nbd: export %q: nil device", e.Name)
	}
	if e.Device.Size() < 0 {
		return fmt.Errorf("nbd: export %q: negative size %d", e.Name, e.Device.Size())
	}
	if len(e.Name) > maxNameLen || strings.IndexByte(e.Name, 0) >= 0 {
		return fmt.Errorf("nbd: export name %q: longer than %d bytes or contains NUL", e.Name, maxNameLen)
	}
	if len(e.Description) > maxNameLen || strings.IndexByte(e.Description, 0) >= 0 {
		return fmt.Errorf("nbd: export %q: description longer than %d bytes or contains NUL", e.Name, maxNameLen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.exports[e.Name]; dup {
		return fmt.Errorf("nbd: export %q already exists", e.Name)
	}
	ex := e
	s.exports[e.Name] = &ex
	s.order = append(s.order, e.Name)
	if s.def == nil {
		s.def = &ex
	}
	return nil
}

// RemoveExport removes the export called name while serving: it leaves
// NBD_OPT_LIST and is unknown to new connections at once. Each of its
// connections stops reading requests, finishes those it has read (their
// replies are sent whole) and is closed; clients see a disconnect, never a
// partial or wrong reply. Other exports' connections are untouched.
// RemoveExport waits until those connections have ended.
//
// If the export was the default one, the server has no default export
// ("" is unknown) until the next AddExport, whose export becomes the
// default: a client asking for "" never silently gets another existing
// export.
func (s *Server) RemoveExport(name string) error {
	return s.RemoveExportContext(context.Background(), name)
}

// RemoveExportContext is RemoveExport, but when ctx ends before the
// export's connections have finished, they are closed forcibly (what they
// have not sent is dropped, no reply is cut short by bytes of another) and
// ctx.Err() is returned. The export is removed either way.
func (s *Server) RemoveExportContext(ctx context.Context, name string) error {
	s.mu.Lock()
	e, ok := s.exports[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("%w %q", ErrUnknownExport, name)
	}
	delete(s.exports, name)
	s.order = slices.DeleteFunc(s.order, func(n string) bool { return n == name })
	if s.def == e {
		s.def = nil
	}
	var victims []*conn
	for c := range s.conns {
		if c.attached == e {
			victims = append(victims, c)
		}
	}
	s.mu.Unlock()
	for _, c := range victims {
		c.stop(ErrExportRemoved)
	}
	for _, c := range victims {
		select {
		case <-c.done:
		case <-ctx.Done():
			for _, c := range victims {
				c.raw.Close()
			}
			return ctx.Err()
		}
	}
	return nil
}

// attach binds c to the export it negotiated, unless that export was
// removed meanwhile (between lookup and now): RemoveExport then finds and
// ends c, and a removed export is never served.
func (s *Server) attach(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.exports[c.exp.Name]; !ok || e != c.exp {
		return false
	}
	c.attached = c.exp
	return true
}

// lookup resolves an export name; "" is the default export.
func (s *Server) lookup(name string) *Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.exports[name]; ok {
		return e
	}
	if name == "" {
		return s.def
	}
	return nil
}

func (s *Server) exportList() []*Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Export, 0, len(s.order))
	for _, n := range s.order {
		out = append(out, s.exports[n])
	}
	return out
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Serve accepts connections on l and serves each in its own goroutine until
// Shutdown, when it returns ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if s.cfg.MaxConnections > 0 && s.active.Load() >= int64(s.cfg.MaxConnections) {
			s.log.Warn("nbd: connection limit reached, refusing", "remote", remoteName(c), "limit", s.cfg.MaxConnections)
			c.Close()
			continue
		}
		s.active.Add(1) // counted before the goroutine runs so the limit holds
		go func() {
			defer s.active.Add(-1)
			if err := s.serve(context.Background(), c, "", false); err != nil {
				s.log.Debug("nbd: connection ended", "remote", remoteName(c), "err", err)
			}
		}()
	}
}

// ServeConn runs the fixed newstyle handshake and then the transmission
// phase on c, and closes c. It returns nil when the client disconnects
// cleanly (NBD_CMD_DISC, NBD_OPT_ABORT) or the server shuts down.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	return s.serve(ctx, c, "", false)
}

// ServeTransmission serves the transmission phase of exportName on c with
// no handshake and simple replies only: the path for sockets handed to the
// kernel's NBD client. Reads are accepted up to KernelSize of the device,
// and the tail past the device size reads as zeros. It closes c.
func (s *Server) ServeTransmission(ctx context.Context, c net.Conn, exportName string) error {
	return s.serve(ctx, c, exportName, true)
}

// KernelBlockSize is the block size the kernel attach path should use.
const KernelBlockSize = 4096

// KernelSize is the device size to hand to the kernel: size rounded up to
// KernelBlockSize. ServeTransmission serves the rounded tail as zeros.
func KernelSize(size int64) int64 {
	return (size + KernelBlockSize - 1) &^ (KernelBlockSize - 1)
}

func (s *Server) serve(ctx context.Context, nc net.Conn, exportName string, kernel bool) (err error) {
	c := &conn{srv: s, raw: nc, nc: nc, remote: remoteName(nc), done: make(chan struct{})}
	setSendBuffer(nc)
	if !kernel {
		c.writeTimeout = s.cfg.WriteTimeout
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		nc.Close()
		return ErrServerClosed
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	if obs := s.cfg.Observer; obs != nil {
		obs.ConnOpen(c.remote)
	}
	stop := context.AfterFunc(ctx, func() { c.stop(ctx.Err()) })
	defer func() {
		stop()
		nc.Close()
		s.mu.Lock()
		delete(s.conns, c)
		close(c.done)
		if s.closing && len(s.conns) == 0 && s.idle != nil {
			close(s.idle)
			s.idle = nil
		}
		s.mu.Unlock()
		if r := recover(); r != nil {
			err = fmt.Errorf("nbd: panic serving %s: %v", c.remote, r)
			s.log.Error("nbd: panic", "remote", c.remote, "panic", r)
		}
		if obs := s.cfg.Observer; obs != nil {
			obs.ConnClose(c.remote, err)
		}
	}()
	if kernel {
		e := s.lookup(exportName)
		if e == nil {
			return fmt.Errorf("nbd: unknown export %q", exportName)
		}
		c.setupTransmission(e, false, false, true)
	} else {
		ok, herr := c.handshake(ctx)
		if herr != nil || !ok {
			if herr != nil && c.stopped() {
				return c.stopErr()
			}
			return herr
		}
	}
	if !s.attach(c) {
		return fmt.Errorf("nbd: export %q: %w", c.exp.Name, ErrExportRemoved)
	}
	return c.transmit()
}

// Shutdown stops accepting connections, interrupts option haggling and
// request reading, lets in-flight requests send their replies, and closes
// every connection. If ctx ends first, remaining connections are closed
// forcibly and ctx.Err() is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	var idle chan struct{}
	if len(s.conns) > 0 {
		if s.idle == nil {
			s.idle = make(chan struct{})
		}
		idle = s.idle
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.stop(nil)
	}
	if idle == nil {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.raw.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

func remoteName(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil && a.String() != "" {
		return a.Network() + ":" + a.String()
	}
	if a := c.LocalAddr(); a != nil {
		return a.Network() + ":" + a.String()
	}
	return "?"
}
