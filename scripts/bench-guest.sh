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
# Usage: scripts/bench-guest.sh
#   env: RUNTIME=10 (seconds per run), ENGINE=libaio|io_uring
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
go test -count=1 -timeout 20m -v -run '^TestGuestBenchFio$' ./e2e >"$log" 2>&1 || rc=$?
if [ "$rc" != 0 ]; then
	tail -n 80 "$log"
	exit "$rc"
fi
# The test's own log lines (the console copy repeats them).
grep -E 'guest_bench_test.go:[0-9]+: (FIO-|read: IOPS=)' "$log" | sed 's/^ *guest_bench_test.go:[0-9]*: //'
