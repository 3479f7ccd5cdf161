package ublk

import "unsafe"

// Definitions from include/uapi/linux/ublk_cmd.h (Linux 6.12 and later).

// ioctl-style encoding of the command opcodes (_IOR/_IOWR('u', nr, size)),
// the only encoding new kernels accept without
// CONFIG_BLKDEV_UBLK_LEGACY_OPCODES.
func iocEncode(dir, nr, size uint32) uint32 { return dir<<30 | size<<16 | 'u'<<8 | nr }

const (
	iocWrite = 1
	iocRead  = 2

	ctrlCmdSize = 32 // struct ublksrv_ctrl_cmd
	ioCmdSize   = 16 // struct ublksrv_io_cmd
)

var (
	cmdAddDev      = iocEncode(iocRead|iocWrite, 0x04, ctrlCmdSize) // UBLK_U_CMD_ADD_DEV
	cmdDelDev      = iocEncode(iocRead|iocWrite, 0x05, ctrlCmdSize) // UBLK_U_CMD_DEL_DEV
	cmdStartDev    = iocEncode(iocRead|iocWrite, 0x06, ctrlCmdSize) // UBLK_U_CMD_START_DEV
	cmdStopDev     = iocEncode(iocRead|iocWrite, 0x07, ctrlCmdSize) // UBLK_U_CMD_STOP_DEV
	cmdSetParams   = iocEncode(iocRead|iocWrite, 0x08, ctrlCmdSize) // UBLK_U_CMD_SET_PARAMS
	cmdGetFeatures = iocEncode(iocRead, 0x13, ctrlCmdSize)          // UBLK_U_CMD_GET_FEATURES
	cmdGetDevInfo  = iocEncode(iocRead, 0x02, ctrlCmdSize)          // UBLK_U_CMD_GET_DEV_INFO
	cmdGetParams   = iocEncode(iocRead, 0x09, ctrlCmdSize)          // UBLK_U_CMD_GET_PARAMS

	cmdStartUserRecovery = iocEncode(iocRead|iocWrite, 0x10, ctrlCmdSize) // UBLK_U_CMD_START_USER_RECOVERY
	cmdEndUserRecovery   = iocEncode(iocRead|iocWrite, 0x11, ctrlCmdSize) // UBLK_U_CMD_END_USER_RECOVERY

	ioFetchReq       = iocEncode(iocRead|iocWrite, 0x20, ioCmdSize) // UBLK_U_IO_FETCH_REQ
	ioCommitFetchReq = iocEncode(iocRead|iocWrite, 0x21, ioCmdSize) // UBLK_U_IO_COMMIT_AND_FETCH_REQ
)

// Feature flags (UBLK_F_*).
const (
	featUserRecovery        = 1 << 3 // UBLK_F_USER_RECOVERY: the device outlives its server, I/O waits
	featUserRecoveryReissue = 1 << 4 // UBLK_F_USER_RECOVERY_REISSUE: requests the dead server held are requeued
	featCmdIoctlEncode      = 1 << 6 // UBLK_F_CMD_IOCTL_ENCODE
)

// Device states (UBLK_S_DEV_*), in ublksrv_ctrl_dev_info.state.
const (
	stateDead     = 0 // UBLK_S_DEV_DEAD: added, not started, or stopped
	stateLive     = 1 // UBLK_S_DEV_LIVE: /dev/ublkbN is served
	stateQuiesced = 2 // UBLK_S_DEV_QUIESCED: the server died, I/O is queued (recovery)
	stateFailIO   = 3 // UBLK_S_DEV_FAIL_IO (Linux 6.13+, UBLK_F_USER_RECOVERY_FAIL_IO)
)

// serverTag goes in ublksrv_ctrl_dev_info.ublksrv_flags, which the driver
// stores and returns without looking at it: it marks devices created by
// this package, so that a reattach never adopts another program's device.
const serverTag = 0x6b6c627573666f72 // "rofsublk" little-endian

// I/O ops and results.
const (
	ioOpRead        = 0 // UBLK_IO_OP_READ
	ioOpWrite       = 1
	ioOpFlush       = 2
	ioOpDiscard     = 3
	ioOpWriteSame   = 4
	ioOpWriteZeroes = 5

	ioResOK    = 0   // UBLK_IO_RES_OK
	ioResAbort = -19 // UBLK_IO_RES_ABORT (-ENODEV): the queue is going away

	cmdBufOffset  = 0    // UBLKSRV_CMD_BUF_OFFSET
	maxQueueDepth = 4096 // UBLK_MAX_QUEUE_DEPTH
	ioDescSize    = 24   // struct ublksrv_io_desc
)

// Parameters.
const (
	attrReadOnly   = 1 << 0 // UBLK_ATTR_READ_ONLY
	paramTypeBasic = 1 << 0 // UBLK_PARAM_TYPE_BASIC
)

// ctrlCmd is struct ublksrv_ctrl_cmd.
type ctrlCmd struct {
	DevID      uint32
	QueueID    uint16
	Len        uint16
	Addr       uint64
	Data       uint64
	DevPathLen uint16
	Pad        uint16
	Reserved   uint32
}

// devInfo is struct ublksrv_ctrl_dev_info.
type devInfo struct {
	NrHwQueues    uint16
	QueueDepth    uint16
	State         uint16
	Pad0          uint16
	MaxIOBufBytes uint32
	DevID         uint32
	UblksrvPID    int32
	Pad1          uint32
	Flags         uint64
	UblksrvFlags  uint64
	OwnerUID      uint32
	OwnerGID      uint32
	Reserved1     uint64
	Reserved2     uint64
}

// paramBasic is struct ublk_param_basic.
type paramBasic struct {
	Attrs            uint32
	LogicalBSShift   uint8
	PhysicalBSShift  uint8
	IOOptShift       uint8
	IOMinShift       uint8
	MaxSectors       uint32
	ChunkSectors     uint32
	DevSectors       uint64
	VirtBoundaryMask uint64
}

// params is the head of struct ublk_params: len, types and the basic
// parameters. The kernel copies only len bytes, so the later parameter
// types need not be present.
type params struct {
	Len   uint32
	Types uint32
	Basic paramBasic
}

// ioDesc is struct ublksrv_io_desc, written by the kernel into the queue's
// mmap'd descriptor array.
type ioDesc struct {
	OpFlags     uint32
	NrSectors   uint32
	StartSector uint64
	Addr        uint64
}

// ioCmd is struct ublksrv_io_cmd.
type ioCmd struct {
	QID    uint16
	Tag    uint16
	Result int32
	Addr   uint64
}

// Compile-time size checks against the uapi.
var (
	_ [ctrlCmdSize - unsafe.Sizeof(ctrlCmd{})]struct{}
	_ [unsafe.Sizeof(ctrlCmd{}) - ctrlCmdSize]struct{}
	_ [64 - unsafe.Sizeof(devInfo{})]struct{}
	_ [unsafe.Sizeof(devInfo{}) - 64]struct{}
	_ [32 - unsafe.Sizeof(paramBasic{})]struct{}
	_ [unsafe.Sizeof(paramBasic{}) - 32]struct{}
	_ [ioDescSize - unsafe.Sizeof(ioDesc{})]struct{}
	_ [unsafe.Sizeof(ioDesc{}) - ioDescSize]struct{}
	_ [ioCmdSize - unsafe.Sizeof(ioCmd{})]struct{}
	_ [unsafe.Sizeof(ioCmd{}) - ioCmdSize]struct{}
)
