// Package ublk serves a read-only blockdev.Device to the kernel as a ublk
// block device (/dev/ublkbN), the io_uring based userspace block driver
// (drivers/block/ublk_drv.c, Linux 6.0+; the guest tests use 6.12).
//
// Control path, as documented in include/uapi/linux/ublk_cmd.h: commands
// are IORING_OP_URING_CMD SQEs (128-byte SQEs, the struct ublksrv_ctrl_cmd
// payload) on /dev/ublk-control, with the ioctl-encoded opcodes
// (UBLK_U_CMD_*, UBLK_F_CMD_IOCTL_ENCODE): ADD_DEV (queues, depth, maximum
// I/O size), SET_PARAMS (logical/physical block size, size in sectors,
// UBLK_ATTR_READ_ONLY), then START_DEV once every queue has posted its
// FETCH_REQs; Close sends STOP_DEV and DEL_DEV.
//
// Data path: one goroutine per hardware queue, locked to its OS thread
// (the driver requires every command of a queue to come from the task that
// fetched it), owns an io_uring on /dev/ublkcN. It posts one
// UBLK_U_IO_FETCH_REQ per tag with that tag's buffer; a completion means
// the kernel put a request in the tag's struct ublksrv_io_desc (the queue's
// read-only mmap of /dev/ublkcN). Reads run in their own goroutine (so a
// slow blob read does not hold up the queue), which reports back through an
// eventfd the ring reads; the queue thread answers with
// UBLK_U_IO_COMMIT_AND_FETCH_REQ, which completes the request and fetches
// the next. Writes, discards and write-zeroes get EPERM (the disk is
// read-only anyway); flushes succeed. STOP_DEV makes the kernel complete the
// outstanding fetches with UBLK_IO_RES_ABORT, and a queue ends when every
// tag has been aborted.
//
// Recovery: devices are created with UBLK_F_USER_RECOVERY and
// UBLK_F_USER_RECOVERY_REISSUE (Config.NoRecovery turns both off) and
// ublksrv_flags set to a tag of this package. When the server dies (kill
// -9), the driver's cancel of each queue's FETCH commands quiesces the
// disk (UBLK_S_DEV_QUIESCED): requests the server held are requeued
// (REISSUE; without it they fail with EIO), new ones wait, /dev/ublkbN and
// whatever is mounted on it stay. Config.Reattach takes such a device
// over: GET_DEV_INFO (our tag, the recovery flag, quiesced, or live with a
// dead server pid: wait), GET_PARAMS (read-only, size, logical block
// size; queues and depth when given), START_USER_RECOVERY (EBUSY until
// the dead server's /dev/ublkcN is released), new queues with FETCH_REQ
// on every tag, END_USER_RECOVERY with our pid, which unquiesces the disk.
// Without Reattach, ADD_DEV of an existing id returns an ExistsError
// naming the recorded server pid. Until a server reattaches or the device
// is deleted, I/O to a quiesced device waits indefinitely.
//
// io_uring: the package has its own small layer over golang.org/x/sys/unix
// (uring_linux.go: io_uring_setup, the mmap'd SQ/CQ rings and SQE array,
// io_uring_enter, three opcodes). The maintained Go io_uring libraries are
// built around file and socket I/O, are larger than everything ublk needs,
// and not all of them support IORING_SETUP_SQE128 or URING_CMD, which are
// the two things ublk cannot do without. Two hundred lines against the uapi
// header are easier to audit than a dependency, and the queue loop needs
// exact control of which thread enters the ring.
package ublk
