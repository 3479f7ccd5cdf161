// Package nbd serves read-only block devices (blockdev.Device) over the
// Network Block Device protocol: the fixed newstyle handshake, the
// transmission phase with simple and structured replies, base:allocation
// block status, and STARTTLS. Attaching /dev/nbdX is done elsewhere
// (package nbd/kernel), which hands connected sockets to ServeTransmission.
//
// API:
//
//	type Export struct { Name, Description string; Device blockdev.Device }
//	type Config struct { MaxRequest uint32; MaxInFlight int; HandshakeTimeout time.Duration;
//	                     MaxConnections int; TLS *tls.Config; TLSRequire bool;
//	                     Logger *slog.Logger; Observer Observer }
//	func NewServer(cfg Config) *Server
//	func (s *Server) AddExport(e Export) error       // first export is the default ("")
//	func (s *Server) Serve(l net.Listener) error       // until Shutdown: ErrServerClosed
//	func (s *Server) ServeConn(ctx context.Context, c net.Conn) error
//	func (s *Server) ServeTransmission(ctx context.Context, c net.Conn, export string) error
//	func (s *Server) Shutdown(ctx context.Context) error
//	func Listen(spec string) (net.Listener, string, error) // "unix:/path" | "tcp:host:port"
//
//	type Observer interface { ConnOpen(remote string); ConnClose(remote string, err error);
//	                          RequestStart(export string, cmd Command, length uint32);
//	                          RequestDone(RequestInfo) }
//	type RequestInfo struct { Export string; Command Command; Offset uint64; Length uint32;
//	                          Errno uint32; Duration time.Duration }
//	type Command uint16 // CmdRead, CmdWrite, ... with String()
//	var ErrServerClosed // returned by Serve after Shutdown
//
// For the kernel attach path (package nbd/kernel):
//
//	const TransmissionFlags = FlagHasFlags|FlagReadOnly|FlagSendFlush|FlagCanMultiConn|FlagSendCache
//	const KernelBlockSize = 4096
//	func KernelSize(size int64) int64 // size rounded up to KernelBlockSize
//
// ServeTransmission accepts reads up to KernelSize(Device.Size()) and
// serves the rounded tail as zeros, so the kernel may be given that size.
// It returns nil when the kernel sends NBD_CMD_DISC or closes the socket.
//
// Handshake. The server offers FIXED_NEWSTYLE|NO_ZEROES and supports
// NBD_OPT_EXPORT_NAME, LIST, ABORT, INFO, GO (NBD_INFO_EXPORT, NAME,
// DESCRIPTION, BLOCK_SIZE = 1 / 4096 / MaxRequest), STRUCTURED_REPLY,
// LIST_META_CONTEXT and SET_META_CONTEXT (base:allocation only) and, when
// Config.TLS is set, STARTTLS (with TLSRequire every other option except
// ABORT gets NBD_REP_ERR_TLS_REQD). Unknown options get NBD_REP_ERR_UNSUP.
// Option data above 64 KiB is refused before anything is allocated, and the
// whole option phase runs under Config.HandshakeTimeout.
//
// Errors. ServeConn and ServeTransmission return nil for a clean end
// (NBD_CMD_DISC, NBD_OPT_ABORT, the peer closing between requests, or
// Shutdown; ErrServerClosed if called after it), ctx.Err() when ctx is cancelled, and a descriptive error for
// protocol violations (bad magic, oversized option or WRITE payload,
// unknown export in NBD_OPT_EXPORT_NAME, handshake timeout). Replies use
// the NBD error values EPERM, EIO, EINVAL (exported as constants).
//
// Transmission. Exports are read-only: flags HAS_FLAGS|READ_ONLY|SEND_FLUSH|
// CAN_MULTI_CONN|SEND_CACHE, plus SEND_DF with structured replies. One
// goroutine per connection decodes requests (up to 64 KiB of them per read
// syscall); READ, CACHE and BLOCK_STATUS run on up to MaxInFlight workers
// (holding at most max(64 MiB, 2*MaxRequest) of READ buffers per
// connection), so replies can leave out of order, but never interleave. A
// READ of at most 64 KiB that is not sent zero-copy is first tried on the
// reader itself when the device is a blockdev.NoWaitReader (flatdev over
// files: preadv2 with RWF_NOWAIT, i.e. page-cache hits; content-cache
// hits): no hand-off, and its reply waits (holding its READ budget) until
// the reader has decoded every request already buffered, or at most 64
// replies / 1 MiB, and is queued before the reader does anything that may
// wait (reading the socket, waiting for budget or a worker); on a plain
// socket one read attempt that does not wait first takes in requests that
// arrived meanwhile. Only what would block goes to a worker. Finished replies join a per-connection queue; the
// goroutine that finds no write in progress becomes the writer and sends
// everything queued, one writev per batch under one write deadline
// (WriteTimeout), so under load there is one write syscall per batch
// rather than per request; READ buffers and their budget are released
// once written. Transmission sockets ask for a 4 MiB SO_SNDBUF (capped by
// net.core.wmem_max). READs of at least 64 KiB that the device maps to one
// file (blockdev.FileRanger, e.g. inside one flatdev blob read directly
// from its *os.File) are sent zero-copy: header, then sendfile(2) from the
// file, never with TLS. The file's size is checked (fstat) first, and a
// too-short file takes the normal path (EIO); if it shrinks after that,
// the header is already committed, so the connection is closed (and the
// rate-limited backend log says why) rather than sending wrong bytes.
// Otherwise a READ is read entirely from the device into a pooled buffer
// first, so a device error becomes an EIO reply and the connection survives; bad ranges get EINVAL. WRITE
// (payload skipped), TRIM and WRITE_ZEROES get EPERM; FLUSH succeeds; CACHE
// calls blockdev.Prefetcher when the device has it; unknown commands get
// EINVAL. NBD_CMD_DISC and Shutdown finish in-flight requests before closing.
//
// Query syntax for metadata contexts: "base:allocation" selects the only
// context; "base:" lists it. Holes reported by blockdev.Mapper are
// NBD_STATE_HOLE|NBD_STATE_ZERO; everything else (or every byte when the
// device has no Mapper) is reported as data.
package nbd
