#!/usr/bin/env bash
# bench-guest.sh: fio inside the QEMU guest (Debian's 6.12 kernel, TCG),
# /dev/nbd0 against /dev/ublkb0, both attached by ONE `erofs-blockd serve`
# to the same composed device (a --blobdev image holding a 64 MiB file,
# blobs on virtio disks with a warm page cache).
#
#   fio --name=randread --filename=DEV --rw=randread --bs=4k --iodepth=32 \
#       --ioengine=libaio --direct=1 --numjobs=1 --time_based \
#       --runtime=RUNTIME --ramp_time=2 --group_reporting
#
# Each device runs twice, interleaved (nbd0, ublkb0, nbd0, ublkb0). The host's
# fio and its shared libraries go into the guest as an EROFS image on a third
# virtio disk. TCG figures are only comparable with each other, and only on
# an otherwise idle host.
#
# BENCH=vhost instead runs the same fio against two vhost-user-blk disks:
# erofs-blockd's own back-end (serve --vhost-user-blk) and qemu-storage-daemon
# exporting erofs-blockd's NBD socket (ORDER="own qsd own qsd" by default).
#
# Usage: scripts/bench-guest.sh
#   env: RUNTIME=10 (seconds per run), ENGINE=libaio|io_uring, BENCH=nbd|vhost
# Needs: scripts/vm/kernel.sh (guest kernel) and the fio package.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PATH=$PATH:/usr/local/go/bin
for t in fio go qemu-system-x86_64 mkfs.erofs; do
	command -v "$t" >/dev/null || { echo "missing $t (apt-get install fio; scripts/vm/kernel.sh)" >&2; exit 2; }
done
cd "$ROOT"
export EROFS_BLOCKD_BENCH_GUEST=1
export EROFS_BLOCKD_BENCH_RUNTIME=${RUNTIME:-10}
export EROFS_BLOCKD_BENCH_ENGINE=${ENGINE:-libaio}
log=$(mktemp /tmp/bench-guest.XXXXXX)
trap 'rm -f "$log"' EXIT
rc=0
test=TestGuestBenchFio file=guest_bench_test.go
if [ "${BENCH:-nbd}" = vhost ]; then
	test=TestGuestBenchVhost file=guest_bench_vhost_test.go
	command -v qemu-storage-daemon >/dev/null || { echo "missing qemu-storage-daemon (apt-get install qemu-system-x86)" >&2; exit 2; }
	[ -n "${ORDER:-}" ] && export EROFS_BLOCKD_BENCH_ORDER=$ORDER
fi
go test -count=1 -timeout 20m -v -run "^$test\$" ./e2e >"$log" 2>&1 || rc=$?
if [ "$rc" != 0 ]; then
	tail -n 80 "$log"
	exit "$rc"
fi
# The test's own log lines (the console copy repeats them).
grep -E "$file:[0-9]+: (FIO-|read: IOPS=)" "$log" | sed "s/^ *$file:[0-9]*: //"
