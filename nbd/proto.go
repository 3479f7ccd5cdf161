package nbd

import "encoding/binary"

// Wire constants from the NBD protocol (doc/proto.md in NetworkBlockDevice/nbd).
const (
	magicNBD       = 0x4e42444d41474943 // "NBDMAGIC"
	magicIHaveOpt  = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply  = 0x0003e889045565a9
	magicRequest   = 0x25609513
	magicSimple    = 0x67446698
	magicStructRep = 0x668e33ef

	// handshake flags (server) and client flags
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	// options
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10

	// option reply types
	repAck          = 1
	repServer       = 2
	repInfo         = 3
	repMetaContext  = 4
	repErrUnsup     = 0x80000001
	repErrPolicy    = 0x80000002
	repErrInvalid   = 0x80000003
	repErrTLSReqd   = 0x80000005
	repErrUnknown   = 0x80000006
	repErrShutdown  = 0x80000007
	repErrTooBig    = 0x80000009
	repErrPlatform  = 0x80000004
	repErrBlockSize = 0x80000008

	// NBD_INFO_* types
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	// command flags
	cmdFlagFUA     = 1 << 0
	cmdFlagNoHole  = 1 << 1
	cmdFlagDF      = 1 << 2
	cmdFlagReqOne  = 1 << 3
	cmdFlagFastZ   = 1 << 4
	cmdFlagsKnown  = cmdFlagFUA | cmdFlagNoHole | cmdFlagDF | cmdFlagReqOne | cmdFlagFastZ
	replyFlagDone  = 1 << 0
	replyTypeNone  = 0
	replyTypeData  = 1
	replyTypeBS    = 5
	replyTypeError = 0x8001

	stateHole = 1 << 0
	stateZero = 1 << 1

	// metaAllocID is the context id this server hands out for base:allocation.
	metaAllocID     = 1
	metaAllocation  = "base:allocation"
	requestHdrLen   = 28
	simpleHdrLen    = 16
	structHdrLen    = 20
	readHeadroom    = 32 // bytes reserved in front of read data for a reply header
	maxOptionLen    = 64 << 10
	maxNameLen      = 4096
	maxDescriptors  = 1 << 16
	defaultMaxReq   = 32 << 20
	defaultInFlight = 32
	readBudget      = 64 << 20 // READ bytes in flight per connection (at least 2*MaxRequest)
)

// Transmission flags (NBD_FLAG_*).
const (
	FlagHasFlags     uint16 = 1 << 0
	FlagReadOnly     uint16 = 1 << 1
	FlagSendFlush    uint16 = 1 << 2
	FlagSendDF       uint16 = 1 << 7
	FlagCanMultiConn uint16 = 1 << 8
	FlagSendCache    uint16 = 1 << 10

	// TransmissionFlags are the flags every export of this server carries
	// (FlagSendDF is added when structured replies are negotiated). The
	// kernel attach path passes them to the kernel as the server flags.
	TransmissionFlags = FlagHasFlags | FlagReadOnly | FlagSendFlush | FlagCanMultiConn | FlagSendCache
)

// NBD error values carried in replies.
const (
	EPERM     uint32 = 1
	EIO       uint32 = 5
	ENOMEM    uint32 = 12
	EINVAL    uint32 = 22
	ENOSPC    uint32 = 28
	EOVERFLOW uint32 = 75
	ENOTSUP   uint32 = 95
	ESHUTDOWN uint32 = 108
)

// Command is an NBD request type (NBD_CMD_*).
type Command uint16

// Commands defined by the protocol.
const (
	CmdRead        Command = 0
	CmdWrite       Command = 1
	CmdDisc        Command = 2
	CmdFlush       Command = 3
	CmdTrim        Command = 4
	CmdCache       Command = 5
	CmdWriteZeroes Command = 6
	CmdBlockStatus Command = 7
)

func (c Command) String() string {
	switch c {
	case CmdRead:
		return "read"
	case CmdWrite:
		return "write"
	case CmdDisc:
		return "disc"
	case CmdFlush:
		return "flush"
	case CmdTrim:
		return "trim"
	case CmdCache:
		return "cache"
	case CmdWriteZeroes:
		return "write_zeroes"
	case CmdBlockStatus:
		return "block_status"
	}
	return "unknown"
}

// request is one decoded transmission request header.
type request struct {
	flags  uint16
	typ    Command
	cookie uint64
	offset uint64
	length uint32
}

// decodeRequest decodes a 28-byte request header. ok is false on a bad magic.
func decodeRequest(b *[requestHdrLen]byte) (r request, ok bool) {
	if binary.BigEndian.Uint32(b[0:4]) != magicRequest {
		return r, false
	}
	r.flags = binary.BigEndian.Uint16(b[4:6])
	r.typ = Command(binary.BigEndian.Uint16(b[6:8]))
	r.cookie = binary.BigEndian.Uint64(b[8:16])
	r.offset = binary.BigEndian.Uint64(b[16:24])
	r.length = binary.BigEndian.Uint32(b[24:28])
	return r, true
}

// putSimpleReply encodes a simple reply header into b[:16].
func putSimpleReply(b []byte, errno uint32, cookie uint64) {
	_ = b[15]
	binary.BigEndian.PutUint32(b[0:4], magicSimple)
	binary.BigEndian.PutUint32(b[4:8], errno)
	binary.BigEndian.PutUint64(b[8:16], cookie)
}

// putChunkHeader encodes a structured reply chunk header into b[:20].
func putChunkHeader(b []byte, flags, typ uint16, cookie uint64, length uint32) {
	_ = b[19]
	binary.BigEndian.PutUint32(b[0:4], magicStructRep)
	binary.BigEndian.PutUint16(b[4:6], flags)
	binary.BigEndian.PutUint16(b[6:8], typ)
	binary.BigEndian.PutUint64(b[8:16], cookie)
	binary.BigEndian.PutUint32(b[16:20], length)
}
