// Package vhostuser is a vhost-user-blk back-end: it serves a read-only
// blockdev.Device to a vhost-user front-end (QEMU, cloud-hypervisor,
// Firecracker) over a unix socket, reading and writing the guest's split
// virtqueues in the shared memory the front-end passes with SCM_RIGHTS.
//
// References: QEMU docs/interop/vhost-user.rst (the protocol) and the
// virtio 1.x specification (split virtqueues, EVENT_IDX, virtio-blk).
package vhostuser

import (
	"encoding/binary"
	"fmt"
)

// Front-end requests (vhost-user.rst, "Front-end message types").
const (
	reqGetFeatures         = 1
	reqSetFeatures         = 2
	reqSetOwner            = 3
	reqResetOwner          = 4
	reqSetMemTable         = 5
	reqSetLogBase          = 6
	reqSetLogFD            = 7
	reqSetVringNum         = 8
	reqSetVringAddr        = 9
	reqSetVringBase        = 10
	reqGetVringBase        = 11
	reqSetVringKick        = 12
	reqSetVringCall        = 13
	reqSetVringErr         = 14
	reqGetProtocolFeatures = 15
	reqSetProtocolFeatures = 16
	reqGetQueueNum         = 17
	reqSetVringEnable      = 18
	reqGetConfig           = 24
	reqSetConfig           = 25
)

var reqNames = map[uint32]string{
	reqGetFeatures: "GET_FEATURES", reqSetFeatures: "SET_FEATURES", reqSetOwner: "SET_OWNER",
	reqResetOwner: "RESET_OWNER", reqSetMemTable: "SET_MEM_TABLE", reqSetLogBase: "SET_LOG_BASE",
	reqSetLogFD: "SET_LOG_FD", reqSetVringNum: "SET_VRING_NUM", reqSetVringAddr: "SET_VRING_ADDR",
	reqSetVringBase: "SET_VRING_BASE", reqGetVringBase: "GET_VRING_BASE", reqSetVringKick: "SET_VRING_KICK",
	reqSetVringCall: "SET_VRING_CALL", reqSetVringErr: "SET_VRING_ERR", reqGetProtocolFeatures: "GET_PROTOCOL_FEATURES",
	reqSetProtocolFeatures: "SET_PROTOCOL_FEATURES", reqGetQueueNum: "GET_QUEUE_NUM", reqSetVringEnable: "SET_VRING_ENABLE",
	reqGetConfig: "GET_CONFIG", reqSetConfig: "SET_CONFIG",
}

func reqName(r uint32) string {
	if n, ok := reqNames[r]; ok {
		return n
	}
	return fmt.Sprintf("request %d", r)
}

// Header flags.
const (
	flagVersion   = 0x1
	flagVersMask  = 0x3
	flagReply     = 0x4
	flagNeedReply = 0x8
)

// Feature bits.
const (
	featBlkSizeMax        = 1 << 1 // VIRTIO_BLK_F_SIZE_MAX (not offered)
	featBlkSegMax         = 1 << 2
	featBlkRO             = 1 << 5
	featBlkBlkSize        = 1 << 6
	featBlkFlush          = 1 << 9 // not offered
	featBlkMQ             = 1 << 12
	featRingIndirect      = 1 << 28
	featRingEventIdx      = 1 << 29
	featProtocolFeatures  = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	featVersion1          = 1 << 32
	offeredFeatures       = featBlkSegMax | featBlkRO | featBlkBlkSize | featBlkMQ | featRingIndirect | featRingEventIdx | featProtocolFeatures | featVersion1
	protoMQ               = 1 << 0
	protoReplyAck         = 1 << 3
	protoConfig           = 1 << 9
	offeredProtocolFeats  = protoMQ | protoReplyAck | protoConfig
	maxPayload            = 4096 // larger than any message this back-end accepts
	maxFDs                = 8    // VHOST_MEMORY_BASELINE_NREGIONS
	maxRegions            = 8
	maxConfigSize         = 256 // VHOST_USER_MAX_CONFIG_SIZE
	vringFdMask           = 0xff
	vringNoFD             = 1 << 8
	headerSize            = 12
	memRegionSize         = 32
	maxQueueSize          = 32768
	vringAddrSize         = 40
	configHeaderSize      = 12
	virtioBlkConfigLength = 96 // struct virtio_blk_config up to the zoned fields
)

// header is the 12-byte message header.
type header struct {
	Request uint32
	Flags   uint32
	Size    uint32
}

func parseHeader(b []byte) (header, error) {
	if len(b) != headerSize {
		return header{}, fmt.Errorf("short header (%d bytes)", len(b))
	}
	h := header{binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:])}
	if h.Flags&flagVersMask != flagVersion {
		return h, fmt.Errorf("%s: protocol version %d (want 1)", reqName(h.Request), h.Flags&flagVersMask)
	}
	if h.Flags&flagReply != 0 {
		return h, fmt.Errorf("%s: reply flag set on a request", reqName(h.Request))
	}
	if h.Size > maxPayload {
		return h, fmt.Errorf("%s: payload of %d bytes (limit %d)", reqName(h.Request), h.Size, maxPayload)
	}
	return h, nil
}

// memRegion is one VhostUserMemoryRegion.
type memRegion struct {
	GuestAddr, Size, UserAddr, MmapOffset uint64
}

// vringAddr is struct vhost_vring_addr.
type vringAddr struct {
	Index, Flags           uint32
	Desc, Used, Avail, Log uint64
}

// message is a parsed, checked request.
type message struct {
	header
	U64     uint64      // u64 payloads (features, vring fd index)
	Index   uint32      // vring state index
	Num     uint32      // vring state num
	Regions []memRegion // SET_MEM_TABLE
	Addr    vringAddr   // SET_VRING_ADDR
	CfgOff  uint32      // GET/SET_CONFIG
	CfgSize uint32
	CfgFlag uint32
	Payload []byte
}

// parseMessage checks a request's payload size and its number of fds
// against its type. Unknown requests are returned with their payload for
// the caller to refuse.
func parseMessage(h header, p []byte, nfds int) (*message, error) {
	m := &message{header: h, Payload: p}
	name := reqName(h.Request)
	if int(h.Size) != len(p) {
		return nil, fmt.Errorf("%s: payload %d bytes, header says %d", name, len(p), h.Size)
	}
	if nfds > maxFDs {
		return nil, fmt.Errorf("%s: %d fds", name, nfds)
	}
	le := binary.LittleEndian
	wantFDs := 0
	size := func(n int) error {
		if len(p) != n {
			return fmt.Errorf("%s: payload %d bytes (want %d)", name, len(p), n)
		}
		return nil
	}
	switch h.Request {
	case reqGetFeatures, reqGetProtocolFeatures, reqGetQueueNum, reqSetOwner, reqResetOwner:
		// No payload is expected; QEMU sends none (some front-ends send
		// a zero u64 for GET_*: tolerated).
		if len(p) != 0 && len(p) != 8 {
			return nil, size(0)
		}
	case reqSetFeatures, reqSetProtocolFeatures:
		if err := size(8); err != nil {
			return nil, err
		}
		m.U64 = le.Uint64(p)
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		if err := size(8); err != nil {
			return nil, err
		}
		m.U64 = le.Uint64(p)
		if m.U64&^uint64(vringFdMask|vringNoFD) != 0 {
			return nil, fmt.Errorf("%s: reserved bits set in %#x", name, m.U64)
		}
		m.Index = uint32(m.U64 & vringFdMask)
		if m.U64&vringNoFD == 0 {
			wantFDs = 1
		}
	case reqSetVringNum, reqSetVringBase, reqGetVringBase, reqSetVringEnable:
		if err := size(8); err != nil {
			return nil, err
		}
		m.Index, m.Num = le.Uint32(p), le.Uint32(p[4:])
	case reqSetVringAddr:
		if err := size(vringAddrSize); err != nil {
			return nil, err
		}
		m.Addr = vringAddr{le.Uint32(p), le.Uint32(p[4:]), le.Uint64(p[8:]), le.Uint64(p[16:]), le.Uint64(p[24:]), le.Uint64(p[32:])}
		m.Index = m.Addr.Index
	case reqSetMemTable:
		if len(p) < 8 {
			return nil, fmt.Errorf("%s: payload %d bytes", name, len(p))
		}
		n := le.Uint32(p)
		if n == 0 || n > maxRegions {
			return nil, fmt.Errorf("%s: %d regions (1..%d)", name, n, maxRegions)
		}
		// QEMU sends the whole fixed-size array; accept exactly n or the
		// full array of maxRegions.
		if len(p) != 8+int(n)*memRegionSize && len(p) != 8+maxRegions*memRegionSize {
			return nil, fmt.Errorf("%s: payload %d bytes for %d regions", name, len(p), n)
		}
		wantFDs = int(n)
		for i := 0; i < int(n); i++ {
			b := p[8+i*memRegionSize:]
			r := memRegion{le.Uint64(b), le.Uint64(b[8:]), le.Uint64(b[16:]), le.Uint64(b[24:])}
			if err := checkRegion(r); err != nil {
				return nil, fmt.Errorf("%s: region %d: %v", name, i, err)
			}
			for j, o := range m.Regions {
				if overlaps(r.GuestAddr, r.Size, o.GuestAddr, o.Size) {
					return nil, fmt.Errorf("%s: region %d overlaps region %d in guest addresses", name, i, j)
				}
				if overlaps(r.UserAddr, r.Size, o.UserAddr, o.Size) {
					return nil, fmt.Errorf("%s: region %d overlaps region %d in front-end addresses", name, i, j)
				}
			}
			m.Regions = append(m.Regions, r)
		}
	case reqGetConfig, reqSetConfig:
		if len(p) < configHeaderSize {
			return nil, fmt.Errorf("%s: payload %d bytes", name, len(p))
		}
		m.CfgOff, m.CfgSize, m.CfgFlag = le.Uint32(p), le.Uint32(p[4:]), le.Uint32(p[8:])
		if m.CfgSize > maxConfigSize || m.CfgOff > maxConfigSize || m.CfgOff+m.CfgSize > maxConfigSize {
			return nil, fmt.Errorf("%s: offset %d size %d beyond %d bytes", name, m.CfgOff, m.CfgSize, maxConfigSize)
		}
		if len(p) != configHeaderSize+int(m.CfgSize) {
			return nil, fmt.Errorf("%s: payload %d bytes for %d config bytes", name, len(p), m.CfgSize)
		}
	case reqSetLogBase:
		wantFDs = nfds // refused by the caller; its fd is closed
	default:
		wantFDs = nfds
	}
	if nfds != wantFDs {
		return nil, fmt.Errorf("%s: %d fds (want %d)", name, nfds, wantFDs)
	}
	return m, nil
}

// checkRegion refuses empty regions and ranges that wrap.
func checkRegion(r memRegion) error {
	const maxRegionSize = 1 << 46 // 64 TiB: more than any guest
	if r.Size == 0 || r.Size > maxRegionSize {
		return fmt.Errorf("size %d", r.Size)
	}
	if r.GuestAddr+r.Size < r.GuestAddr || r.UserAddr+r.Size < r.UserAddr {
		return fmt.Errorf("address range wraps (guest %#x user %#x size %#x)", r.GuestAddr, r.UserAddr, r.Size)
	}
	if r.MmapOffset > maxRegionSize || r.MmapOffset+r.Size < r.MmapOffset {
		return fmt.Errorf("mmap offset %#x", r.MmapOffset)
	}
	return nil
}

func overlaps(a, an, b, bn uint64) bool { return a < b+bn && b < a+an }

// encode builds a reply: the request's header with the reply flag and payload.
func encodeReply(req uint32, payload []byte) []byte {
	b := make([]byte, headerSize+len(payload))
	binary.LittleEndian.PutUint32(b, req)
	binary.LittleEndian.PutUint32(b[4:], flagVersion|flagReply)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(payload)))
	copy(b[headerSize:], payload)
	return b
}

func u64Bytes(v uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	return b
}
