#!/usr/bin/env bash
# make bench-dedup: how many bytes erofs-blockd reads from its backends to
# serve every file of 8 layered images, with the shared content cache on
# and off, over a deliberately slow backend.
#
# Images (tools/benchdedup): 8 images sharing two base layers (base1: the
# same blob file in every export; base2: a byte-identical copy per image with
# the same sha256 tag) plus an own layer per image in which half the files
# are byte-identical to files of its pair image but stored in its own blob.
# Files carry ishare fingerprint xattrs; all exports are in one --domain.
#
# Slow backend: serve's hidden --debug-backend-delay adds DELAY to every
# read of an input file (a remote blob store's per-request latency). It is
# in-process, deterministic and counts exactly the reads the cache makes;
# nbdkit's delay filter would need the blobs exposed as files again
# (nbdfuse), adding a FUSE hop with its own caching to what is measured.
#
# Reading: each image is exposed with nbdfuse, mounted with the kernel's
# EROFS driver (loop), and every file is read with cat, all 8 images at once.
# Backend bytes are the erofs_blockd_backend_read_bytes_total delta over the
# reads (startup reads metadata for fingerprints and checks before that).
# The unique bytes are the distinct file contents rounded up to 4 KiB plus
# the 8 primary images (metadata).
#
# Env: DELAY (default 2ms), CACHE (cache size for the cached run, default
# 1G), KEEP=1 keeps the work directory. Needs root (mount), nbdfuse, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
DELAY=${DELAY:-2ms}
CACHE=${CACHE:-1G}
for t in nbdfuse curl mkfs.erofs mount; do
	command -v "$t" >/dev/null || { echo "bench-dedup: $t not installed (scripts/deps.sh)"; exit 1; }
done

work=$(mktemp -d /tmp/bench-dedup.XXXXXX)
srv_pid=
mounts=()
cleanup() {
	set +e
	for m in "${mounts[@]}"; do umount "$m" 2>/dev/null; done
	for d in "$work"/fuse*/; do umount "$d" 2>/dev/null; done
	[ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null && wait "$srv_pid" 2>/dev/null
	[ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

bin=$work/erofs-blockd
go build -o "$bin" ./cmd/erofs-blockd
echo "building 8 images (erofs-utils $(dpkg-query -W -f='${Version}' erofs-utils 2>/dev/null) mkfs.erofs + internal/layered)..."
go run ./tools/benchdedup -dir "$work/img" >"$work/unique.txt"
unique=$(awk -F= '$1=="unique_bytes"{print $2}' "$work/unique.txt")
udata=$(awk -F= '$1=="unique_data_bytes"{print $2}' "$work/unique.txt")
inputs=$(du -b --apparent-size -c "$work"/img/img*/*.{erofs,blob} | tail -1 | awk '{print $1}')
n=$(grep -c '"name"' "$work/img/exports.json")

sum_metric() { # URL NAME -> sum of all series of NAME
	curl -sf "$1" | awk -v n="$2" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%.0f", s}'
}
metric() { # URL SERIES
	curl -sf "$1" | awk -v n="$2" '$1 == n {printf "%.0f", $2}'
}

run_case() { # NAME CACHE_SIZE
	local name=$1 size=$2 sock=$work/$1.sock
	"$bin" serve --config "$work/img/exports.json" --listen "unix:$sock" --metrics-listen 127.0.0.1:0 \
		--cache-size "$size" --debug-backend-delay "$DELAY" >"$work/$name.out" 2>"$work/$name.err" &
	srv_pid=$!
	local url=
	for _ in $(seq 200); do
		url=$(awk '$1=="metrics"{print $2}' "$work/$name.out")
		[ -n "$url" ] && break
		sleep 0.1
	done
	[ -n "$url" ] || { cat "$work/$name.err"; exit 1; }
	mounts=()
	for i in $(seq 0 $((n - 1))); do
		local f=$work/fuse-$name-$i m=$work/mnt-$name-$i
		mkdir -p "$f" "$m"
		nbdfuse -r "$f" "nbd+unix:///img$i?socket=$sock" &
		for _ in $(seq 200); do [ -s "$f/nbd" ] && break; sleep 0.05; done
		mount -t erofs -o ro "$f/nbd" "$m"
		mounts+=("$m")
	done
	local before t0 t1 after
	before=$(sum_metric "$url" erofs_blockd_backend_read_bytes_total)
	local reads0
	reads0=$(sum_metric "$url" erofs_blockd_backend_reads_total)
	t0=$(date +%s.%N)
	local readers=()
	for i in $(seq 0 $((n - 1))); do
		(cd "$work/mnt-$name-$i" && find . -type f -print0 | sort -z | xargs -0 sha256sum >"$work/$name-sums-$i.txt") &
		readers+=($!)
	done
	wait "${readers[@]}"
	t1=$(date +%s.%N)
	after=$(sum_metric "$url" erofs_blockd_backend_read_bytes_total)
	local backend=$((after - before))
	printf "%-9s backend bytes %12d (%6d reads)  backend/unique %6.3f  backend/unique-data %6.3f  time %6.2fs\n" \
		"$name" "$backend" "$(($(sum_metric "$url" erofs_blockd_backend_reads_total) - reads0))" \
		"$(echo "$backend / $unique" | bc -l)" "$(echo "$backend / $udata" | bc -l)" "$(echo "$t1 - $t0" | bc -l)"
	if [ "$size" != 0 ]; then
		printf "          dedup hits: file %s copy %s content %s; hits %s misses %s evictions %s; resident %s bytes\n" \
			"$(metric "$url" 'erofs_blockd_cache_dedup_hits_total{kind="file"}')" \
			"$(metric "$url" 'erofs_blockd_cache_dedup_hits_total{kind="copy"}')" \
			"$(metric "$url" 'erofs_blockd_cache_dedup_hits_total{kind="content"}')" \
			"$(metric "$url" erofs_blockd_cache_hits_total)" "$(metric "$url" erofs_blockd_cache_misses_total)" \
			"$(metric "$url" erofs_blockd_cache_evictions_total)" "$(metric "$url" erofs_blockd_cache_resident_bytes)"
	fi
	for m in "${mounts[@]}"; do umount "$m"; done
	mounts=()
	for i in $(seq 0 $((n - 1))); do umount "$work/fuse-$name-$i" 2>/dev/null || true; done
	kill "$srv_pid"
	wait "$srv_pid" || true
	srv_pid=
}

echo "$n images; input files $inputs bytes; unique $unique bytes (file data $udata + primaries); backend delay $DELAY per read"
run_case cache-on "$CACHE"
run_case cache-off 0
for i in $(seq 0 $((n - 1))); do
	cmp -s "$work/cache-on-sums-$i.txt" "$work/cache-off-sums-$i.txt" || { echo "img$i: file digests differ between the runs"; exit 1; }
done
echo "file digests equal with the cache on and off ($(cat "$work"/cache-on-sums-*.txt | wc -l) files)"
