#!/usr/bin/env bash
# bench-remote.sh (make bench-remote): erofs-blockd reading its blobs from an
# OCI registry (oci://, ranged GETs) against nbdkit's curl plugin and plain
# curl on the same blobs, in the same run, at several round-trip times.
#
# Registry: Debian's docker-registry 2.8 (filesystem storage in a temp dir,
# removed at exit), plain HTTP on 127.0.0.1, so every oci:// source is given
# with --insecure-registry. Blobs are pushed with the registry API (POST
# /v2/REPO/blobs/uploads/, PUT ?digest=). Between every client and the
# registry sits internal/latproxy, one proxy per RTT (also for RTT 0, so the
# proxy's cost is the same everywhere): it delays each direction by RTT/2.
#
# Image (built once, kept in $BENCH_DIR): ~SIZE bytes of real files copied
# from /usr/share and /usr/lib (sorted walk, files < 32 MiB) -> mkfs.erofs
# --blobdev --chunksize=$CHUNK -> tools/mkmultiblob split into $NBLOBS blobs
# ($LAYOUT device table) -> the primary + blobs pushed as blobs; and
# `erofs-blockd compose -o` of them pushed as ONE blob for nbdkit.
#
# Servers:
#   erofs-blockd   serve --blob oci://PROXY/bench/img@sha256:.. (primary and
#                  every blob) --insecure-registry PROXY, defaults otherwise
#                  (no content cache, --fetch-chunk 1M, --fetch-parallel 8);
#                  erofs-blockd-chunkN adds --fetch-chunk N, erofs-blockd-parN
#                  --fetch-parallel N (e.g. SERVERS="erofs-blockd-chunk128K ...")
#   erofs-blockd-warm  warm restart: erofs-blockd with --cache-dir; before each
#                  measurement (untimed) the dir is emptied and filled by one
#                  such server reading the whole device (nbdcopy), which is then
#                  stopped; the measured server is a fresh process on that dir
#                  (digest-pinned blobs: expect 0 bytes fetched, any RTT)
#   erofs-blockd-local  the same primary + blobs served from the local files
#                  in $BENCH_DIR (page-cached), the baseline of the warm rows
#                  (e.g. SERVERS="erofs-blockd-warm erofs-blockd-local"
#                  WORKLOADS=nbdcopy: the issue's warm-restart rows only)
#   nbdkit-curl    nbdkit -r --filter=readahead --filter=cache curl
#                  http://PROXY/v2/bench/img/blobs/sha256:<composed image>
#                  (filter order as nbdkit-readahead-filter(1) documents:
#                  readahead above cache; nbdkit 1.32's curl plugin is
#                  serialize_requests, so readahead cannot prefetch in parallel)
#   curl           curl --parallel downloading every blob (primary + blobs):
#                  to /dev/null for nbdcopy (the link's limit); for mount10 to
#                  files, then erofs-blockd serve on those files ("download
#                  everything first")
# Every measurement starts a fresh server process (cold: no cache, new
# connections, new nbdfuse mount); the registry's own files stay in the host
# page cache.
#
# Workloads:
#   nbdcopy   nbdcopy URI null: of the whole device (timed after the server's
#             socket exists); curl: time to download all blobs
#   rand4k    fio --ioengine=nbd, 4 KiB random reads, iodepth 32, one
#             connection, $RUNTIME s (erofs-blockd and nbdkit-curl only)
#   mount10   t0 = server start; nbdfuse exposes the device as a file, the
#             kernel mounts it (mount -t erofs -o ro FILE), $READERS threads
#             read $FRACTION% of the regular files (a fixed random sample,
#             seed $SEED) completely: ttfb = t0 -> first byte of any file,
#             finish = t0 -> last byte. curl: t0 = start of the downloads.
#   share8    (opt-in; erofs-blockd, -chunkN, -parN only) 8 images sharing 2
#             base layers: image i = merge index p_i (erofs-blockd merge, a
#             metadata primary) + base1 + base2 + own_i, each layer an EROFS
#             of real files from /usr/lib (mkfs.erofs -Enoinline_data; bases
#             ~$S8BASE bytes, own layers ~$S8OWN; built once in $BENCH_DIR),
#             pushed to 8 repositories bench/shareI (the bases under the same
#             digest in every one). ONE serve with 8 --export shareI=oci://..
#             and a new empty --cache-dir per measurement; 8 parallel
#             `nbdcopy nbd+unix:///shareI?socket=.. - | md5sum`, each checked
#             against the md5 of `compose -o` of the local files (a mismatch
#             stops the bench). time = socket -> last copy done; fetch/rd =
#             registry bytes / unique bytes (8 primaries + 2 bases + 8 own
#             layers; goal <= 1.05)
#   trace10   (opt-in; erofs-blockd, -chunkN, -parN only) trace prefetch:
#             once per run (untimed) a server with --record-trace FILE and
#             the mount10 working-set read, stopped with SIGTERM (the trace
#             is flushed at exit); then per round two measurements, each
#             with a new empty --cache-dir, t0 = server start -> last byte of
#             the same working-set read: SERVER (no trace) and SERVER+trace
#             (--prefetch-trace FILE), order alternating per round. Goal at
#             RTT 10 ms: time without / time with >= 2
# Bytes fetched = the sum of http.response.written over the registry's
# "response completed" lines logged during the measurement (GETs and HEADs;
# the probes included); requests = the number of those lines. CPU: utime +
# stime of the server, docker-registry and latproxy during the measurement.
# Rounds: for each round, RTT, workload, every server (order rotated per
# round). The table shows medians and ratios of medians; goals of the issue
# are checked at the end.
#
# env: ROUNDS=3 SIZE=209715200 NBLOBS=4 CHUNK=65536 LAYOUT=contiguous
#      RTTS="0 10" (ms) SERVERS="erofs-blockd nbdkit-curl curl"
#      WORKLOADS="nbdcopy rand4k mount10" RUNTIME=8 FRACTION=10 SEED=1
#      READERS=4 EB_ARGS="" (extra serve flags for every erofs-blockd)
#      S8BASE=33554432 S8OWN=4194304 (share8 layer sizes)
#      EB_ENV="" (environment for erofs-blockd, e.g. GOGC=400)
#      PROFILE=0 (1: a CPU profile, perf, of erofs-blockd during nbdcopy and
#      mount10 at the last RTT) BENCH_DIR=out/bench-remote (image kept there;
#      delete it to rebuild)
# Default duration on 2 cores: ~1 min set-up (first time) + ~2.5 min per round.
# share8 + trace10 at RTT 10 (WORKLOADS="share8 trace10" RTTS=10
# SERVERS=erofs-blockd): ~1 min more set-up, then ~1 min per round.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-209715200}
NBLOBS=${NBLOBS:-4}
CHUNK=${CHUNK:-65536}
LAYOUT=${LAYOUT:-contiguous}
RTTS=${RTTS:-"0 10"}
SERVERS=${SERVERS:-"erofs-blockd nbdkit-curl curl"}
WORKLOADS=${WORKLOADS:-"nbdcopy rand4k mount10"}
RUNTIME=${RUNTIME:-8}
FRACTION=${FRACTION:-10}
SEED=${SEED:-1}
READERS=${READERS:-4}
EB_ARGS=${EB_ARGS:-}
EB_ENV=${EB_ENV:-}
PROFILE=${PROFILE:-0}
S8BASE=${S8BASE:-33554432}
S8OWN=${S8OWN:-4194304}
S8N=8
W=${BENCH_DIR:-$ROOT/out/bench-remote}
export PATH=$PATH:/usr/local/go/bin

for t in go mkfs.erofs docker-registry curl nbdkit nbdcopy nbdfuse fio python3 sha256sum mount umount; do
	command -v "$t" >/dev/null || { echo "bench-remote: missing $t (run scripts/deps.sh)" >&2; exit 2; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "bench-remote: this fio has no nbd ioengine" >&2; exit 2; }
has_wl() { case " $WORKLOADS " in *" $1 "*) return 0 ;; esac; return 1; }
for wl in mount10 trace10; do
	[ "$(id -u)" = 0 ] || ! has_wl $wl || { echo "bench-remote: $wl needs root" >&2; exit 2; }
done

mkdir -p "$W/bin"
W=$(cd "$W" && pwd)
log() { echo "== $(date +%T) $*" >&2; }
now() { date +%s.%N; }
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

log "building erofs-blockd, mkmultiblob, latproxy"
(cd "$ROOT" && go build -trimpath -o "$W/bin/erofs-blockd" ./cmd/erofs-blockd &&
	go build -trimpath -o "$W/bin/mkmultiblob" ./tools/mkmultiblob &&
	go build -trimpath -o "$W/bin/latproxy" ./internal/latproxy/cmd)
EB=$W/bin/erofs-blockd
BUILT=$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)

# ---- the image ------------------------------------------------------------
DEV=$W/img-$SIZE-$CHUNK-$NBLOBS-$LAYOUT
if [ ! -f "$DEV/ready" ]; then
	rm -rf "$DEV" && mkdir -p "$DEV/tree"
	log "copying ~$SIZE bytes of files from /usr/share and /usr/lib"
	find /usr/share /usr/lib -xdev -type f -readable -size -32M -print0 2>/dev/null | sort -z |
		python3 -c '
import os, sys
limit, total, out = int(sys.argv[1]), 0, []
for p in sys.stdin.buffer.read().split(b"\0"):
    if not p or b"\n" in p:
        continue
    try:
        total += os.lstat(p).st_size
    except OSError:
        continue
    out.append(p)
    if total >= limit:
        break
sys.stdout.buffer.write(b"\0".join(out))' "$SIZE" >"$DEV/files0"
	tar --null -T "$DEV/files0" -cf - 2>/dev/null | tar -xf - -C "$DEV/tree"
	log "mkfs.erofs --blobdev --chunksize=$CHUNK"
	mkfs.erofs --quiet -T0 --blobdev="$DEV/raw.blob" --chunksize="$CHUNK" "$DEV/raw.erofs" "$DEV/tree" >/dev/null
	log "splitting into $NBLOBS blobs ($LAYOUT layout); compose -o flat.img"
	"$W/bin/mkmultiblob" -primary "$DEV/raw.erofs" -blob "$DEV/raw.blob" -n "$NBLOBS" -layout "$LAYOUT" -o "$DEV/mb" >"$DEV/blobs"
	rm -f "$DEV/raw.blob" "$DEV/raw.erofs"
	mapfile -t blobs <"$DEV/blobs"
	bargs=()
	for b in "${blobs[@]}"; do bargs+=(--blob "$b"); done
	"$EB" compose "${bargs[@]}" -o "$DEV/flat.img"
	# the working set: a fixed random sample of the regular files
	(cd "$DEV/tree" && find . -type f -printf '%P\t%s\n') | sort | python3 -c '
import random, sys
rows = [l.rstrip("\n").split("\t") for l in sys.stdin]
k = max(1, len(rows) * int(sys.argv[1]) // 100)
sel = sorted(random.Random(int(sys.argv[2])).sample(rows, k))
open(sys.argv[3], "w").write("".join(p + "\n" for p, _ in sel))
print(len(rows), k, sum(int(s) for _, s in rows), sum(int(s) for _, s in sel))' \
		"$FRACTION" "$SEED" "$DEV/sel-$FRACTION-$SEED" >"$DEV/sel-$FRACTION-$SEED.stats"
	rm -rf "$DEV/tree" "$DEV/files0"
	touch "$DEV/ready"
fi
SEL=$DEV/sel-$FRACTION-$SEED
if [ ! -f "$SEL" ]; then
	echo "bench-remote: no working set for FRACTION=$FRACTION SEED=$SEED in $DEV (delete it to rebuild)" >&2
	exit 2
fi
read -r NFILES NSEL TREEBYTES SELBYTES <"$SEL.stats"
mapfile -t BLOBS <"$DEV/blobs"
DEVSIZE=$(stat -c %s "$DEV/flat.img")
BLOBBYTES=0
for b in "${BLOBS[@]}"; do BLOBBYTES=$((BLOBBYTES + $(stat -c %s "$b"))); done
log "device $DEVSIZE bytes = primary $(stat -c %s "${BLOBS[0]}") + $((${#BLOBS[@]} - 1)) blobs; $NFILES files ($TREEBYTES bytes); working set $NSEL files, $SELBYTES bytes"

# ---- share8: 8 images over 2 shared base layers -----------------------------
S8=$W/share8-$S8BASE-$S8OWN
S8LAYERS=(base1 base2 $(seq -f own%g "$S8N"))
if has_wl share8 && [ ! -f "$S8/ready" ]; then
	rm -rf "$S8" && mkdir -p "$S8"
	log "share8: copying 2 x ~$S8BASE + $S8N x ~$S8OWN bytes of files from /usr/lib (disjoint sets)"
	find /usr/lib -xdev -type f -readable -size -8M -print0 2>/dev/null | sort -z | python3 -c '
import os, sys
base, own, n, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
names = ["base1", "base2"] + ["own%d" % i for i in range(1, n + 1)]
limits = [base, base] + [own] * n
k, total, lists = 0, 0, [[] for _ in names]
for p in sys.stdin.buffer.read().split(b"\0"):
    if not p or b"\n" in p:
        continue
    try:
        total += os.lstat(p).st_size
    except OSError:
        continue
    lists[k].append(p)
    if total >= limits[k]:
        k, total = k + 1, 0
        if k == len(names):
            break
if k < len(names):
    sys.exit("share8: not enough files in /usr/lib")
for nm, l in zip(names, lists):
    open(os.path.join(out, nm + ".files"), "wb").write(b"\0".join(l))' "$S8BASE" "$S8OWN" "$S8N" "$S8"
	for l in "${S8LAYERS[@]}"; do
		rm -rf "$S8/tree" && mkdir "$S8/tree"
		tar --null -T "$S8/$l.files" -cf - 2>/dev/null | tar -xf - -C "$S8/tree"
		mkfs.erofs --quiet -T0 -Enoinline_data "$S8/$l.erofs" "$S8/tree" >/dev/null
		rm -rf "$S8/tree" "$S8/$l.files"
	done
	log "share8: merge -o p1..p$S8N.erofs; md5 of compose -o of each image"
	for i in $(seq "$S8N"); do
		"$EB" merge -q -o "$S8/p$i.erofs" "$S8/base1.erofs" "$S8/base2.erofs" "$S8/own$i.erofs"
		"$EB" compose --blob "$S8/p$i.erofs" --blob "$S8/base1.erofs" --blob "$S8/base2.erofs" --blob "$S8/own$i.erofs" -o "$S8/flat.img"
		echo "$(md5sum <"$S8/flat.img" | cut -d' ' -f1) $(stat -c %s "$S8/flat.img")" >"$S8/p$i.md5"
		rm -f "$S8/flat.img"
	done
	touch "$S8/ready"
fi
S8UNIQ=0 S8DEVBYTES=0
if has_wl share8; then
	for l in "${S8LAYERS[@]}" $(seq -f p%g "$S8N"); do S8UNIQ=$((S8UNIQ + $(stat -c %s "$S8/$l.erofs"))); done
	for i in $(seq "$S8N"); do S8DEVBYTES=$((S8DEVBYTES + $(cut -d' ' -f2 "$S8/p$i.md5"))); done
	log "share8: $S8N images, unique bytes $S8UNIQ (bases $(stat -c %s "$S8/base1.erofs") + $(stat -c %s "$S8/base2.erofs"), own ~$(stat -c %s "$S8/own1.erofs"), primaries ~$(stat -c %s "$S8/p1.erofs")); devices $S8DEVBYTES bytes in all"
fi

# ---- registry, proxies ----------------------------------------------------
TMP=$(mktemp -d /tmp/bench-remote.XXXXXX)
RUN=$TMP/run
mkdir -p "$RUN"
PIDS=()
MOUNTS=()
cleanup() {
	for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT

REGPORT=$(freeport)
REG=127.0.0.1:$REGPORT
cat >"$TMP/registry.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $TMP/registry
  cache:
    blobdescriptor: inmemory
http:
  addr: $REG
EOF
REGLOG=$TMP/registry.log
docker-registry serve "$TMP/registry.yml" >"$REGLOG" 2>&1 &
REGPID=$!
PIDS+=("$REGPID")
for _ in $(seq 500); do curl -fs "http://$REG/v2/" >/dev/null && break; sleep 0.02; done
curl -fs "http://$REG/v2/" >/dev/null || { echo "bench-remote: registry did not start:" >&2; cat "$REGLOG" >&2; exit 1; }

REPO=bench/img
push() { # file [repo, default $REPO] -> prints sha256:HEX
	local d loc u repo=${2:-$REPO}
	d=sha256:$(sha256sum "$1" | cut -d' ' -f1)
	loc=$(curl -fsS -i -X POST "http://$REG/v2/$repo/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location" {print $2}')
	case $loc in *\?*) u="$loc&digest=$d" ;; *) u="$loc?digest=$d" ;; esac
	case $u in http*) ;; *) u="http://$REG$u" ;; esac
	curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$1" "$u" -o /dev/null
	echo "$d"
}
log "pushing ${#BLOBS[@]} blobs and the composed image to the registry at $REG"
DIGESTS=()
for b in "${BLOBS[@]}"; do DIGESTS+=("$(push "$b")"); done
FLATDG=$(push "$DEV/flat.img")
declare -A S8DG # layer name -> digest (the same in every repository)
if has_wl share8; then
	log "share8: pushing p_i + base1 + base2 + own_i to bench/share1..$S8N"
	for i in $(seq "$S8N"); do
		for l in "p$i" base1 base2 "own$i"; do S8DG[$l]=$(push "$S8/$l.erofs" "bench/share$i"); done
	done
fi

declare -A PROXY PROXYPID
for rtt in $RTTS; do
	"$W/bin/latproxy" -listen 127.0.0.1:0 -to "$REG" -rtt "${rtt}ms" >"$RUN/proxy-$rtt.out" 2>&1 &
	PROXYPID[$rtt]=$!
	PIDS+=($!)
	for _ in $(seq 500); do grep -q listening "$RUN/proxy-$rtt.out" && break; sleep 0.01; done
	PROXY[$rtt]=$(awk '/listening/ {print $2}' "$RUN/proxy-$rtt.out")
done

# ---- servers --------------------------------------------------------------
SPID=""
SSOCK=$RUN/srv.sock
XARGS=() # extra serve flags of the next erofs-blockd start (trace10, share8)
SRCARGS=() # if set: the export flags of the next erofs-blockd start instead of --blob (share8)
WARMDIR=$RUN/warm-cache # erofs-blockd-warm's --cache-dir
waitsock() { # socket pid
	for _ in $(seq 30000); do # 1 ms polls: start times of ~10 ms are compared
		[ -S "$1" ] && return 0
		kill -0 "$2" 2>/dev/null || { echo "bench-remote: server for $1 exited:" >&2; cat "$RUN/srv.log" >&2; return 1; }
		sleep 0.001
	done
	echo "bench-remote: $1 did not appear" >&2
	return 1
}
ebflags() { # server name -> extra serve flags
	local f=() n=$1
	case $n in
	erofs-blockd-chunk*) f+=(--fetch-chunk "${n#erofs-blockd-chunk}") ;;
	erofs-blockd-par*) f+=(--fetch-parallel "${n#erofs-blockd-par}") ;;
	erofs-blockd-warm) f+=(--cache-dir "$WARMDIR") ;;
	esac
	# shellcheck disable=SC2206
	f+=($EB_ARGS)
	echo "${f[@]}"
}
start() { # server rtt: a fresh server on $SSOCK
	local p=${PROXY[$2]} a=() d
	rm -f "$SSOCK"
	case $1 in
	erofs-blockd-local) # the primary + blobs from local files
		# shellcheck disable=SC2046
		env $EB_ENV "$EB" serve "${BLOBS[@]/#/--blob=}" $(ebflags "$1") --listen "unix:$SSOCK" >"$RUN/srv.log" 2>&1 &
		;;
	erofs-blockd*)
		if [ ${#SRCARGS[@]} -gt 0 ]; then
			a=("${SRCARGS[@]}")
		else
			for d in "${DIGESTS[@]}"; do a+=(--blob "oci://$p/$REPO@$d"); done
		fi
		# shellcheck disable=SC2046
		env $EB_ENV "$EB" serve "${a[@]}" --insecure-registry "$p" $(ebflags "$1") "${XARGS[@]}" --listen "unix:$SSOCK" >"$RUN/srv.log" 2>&1 &
		;;
	nbdkit-curl)
		nbdkit -r -f -U "$SSOCK" --filter=readahead --filter=cache curl "http://$p/v2/$REPO/blobs/$FLATDG" >"$RUN/srv.log" 2>&1 &
		;;
	local) # the downloaded files
		for d in "${BLOBS[@]}"; do a+=(--blob "$RUN/dl/$(basename "$d")"); done
		"$EB" serve "${a[@]}" --listen "unix:$SSOCK" >"$RUN/srv.log" 2>&1 &
		;;
	*) echo "bench-remote: unknown server $1" >&2; exit 2 ;;
	esac
	SPID=$!
	PIDS+=("$SPID")
	waitsock "$SSOCK" "$SPID"
}
HZ=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; } # clock ticks
SCPU=0 # CPU ticks of the last server, set by stop
stop() {
	[ -n "$SPID" ] || return 0
	SCPU=$(cpu "$SPID")
	kill "$SPID" 2>/dev/null || true
	wait "$SPID" 2>/dev/null || true
	SPID=""
}
download() { # rtt dir|null
	local p=${PROXY[$1]} a=() i
	for i in "${!DIGESTS[@]}"; do
		if [ "$2" = null ]; then a+=(-o /dev/null); else a+=(-o "$2/$(basename "${BLOBS[$i]}")"); fi
		a+=("http://$p/v2/$REPO/blobs/${DIGESTS[$i]}")
	done
	curl -fsS --no-progress-meter -Z --parallel-max 16 "${a[@]}"
}

# "bytes requests": what the registry sent between two offsets of its log
fetched() { # from to
	tail -c +$(($1 + 1)) "$REGLOG" | head -c $(($2 - $1)) |
		awk '/response completed/ { n++; for (i = 1; i <= NF; i++) if ($i ~ /^http\.response\.written=/) { split($i, a, "="); s += a[2] } } END { printf "%d\t%d\n", s, n }'
}
logpos() { stat -c %s "$REGLOG"; }

READER=$RUN/reader.py
cat >"$READER" <<'EOF'
# reader.py MNT LIST T0 THREADS: read every listed file completely; print
# seconds from T0 to the first byte of any file and to the last, and bytes.
import os, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
mnt, lst, t0, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
paths = [l.rstrip("\n") for l in open(lst)]
first = [None]
lock = threading.Lock()
def read(p):
    total = 0
    with open(os.path.join(mnt, p), "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return total
            if first[0] is None:
                with lock:
                    if first[0] is None:
                        first[0] = time.time()
            total += len(b)
with ThreadPoolExecutor(n) as ex:
    total = sum(ex.map(read, paths))
end = time.time()
print("%.6f %.6f %d" % ((first[0] or end) - t0, end - t0, total))
EOF

mountread() { # t0 -> "ttfb finish bytes" in $RUN/read.out; server on $SSOCK
	local fdir=$RUN/fuse mnt=$RUN/mnt fp
	mkdir -p "$fdir" "$mnt"
	nbdfuse -r "$fdir" --unix "$SSOCK" >"$RUN/nbdfuse.log" 2>&1 &
	fp=$!
	PIDS+=("$fp")
	for _ in $(seq 2000); do [ -e "$fdir/nbd" ] && break; sleep 0.005; done
	MOUNTS=("$mnt" "$fdir")
	mount -t erofs -o ro "$fdir/nbd" "$mnt"
	python3 "$READER" "$mnt" "$SEL" "$1" "$READERS" >"$RUN/read.out"
	umount "$mnt"
	umount "$fdir" 2>/dev/null || fusermount3 -u "$fdir" 2>/dev/null || true
	wait "$fp" 2>/dev/null || true
	MOUNTS=()
}

fiojob() { # uri -> "iops bytes secs" in $RUN/fio.out
	fio --name=w --ioengine=nbd --uri="$1" --time_based --runtime="$RUNTIME" --group_reporting \
		--output-format=json --randrepeat=0 --norandommap --rw=randread --bs=4k --iodepth=32 --numjobs=1 |
		python3 -c '
import json, sys
t = sys.stdin.read()
j = json.loads(t[t.find("{"):])
if j["jobs"][0]["error"]:
    sys.exit("fio error %d" % j["jobs"][0]["error"])
r = j["jobs"][0]["read"]
print(r["iops"], r["io_bytes"], r["runtime"] / 1000.0)' >"$RUN/fio.out"
}

RES=$W/results.tsv
# measure server workload rtt round: appends round rtt server workload
# secs bytes iops ttfb fetched startup
row() { # round rtt server workload secs bytes iops ttfb l0 l1 startup rc0 pc0 (SCPU set by stop) -> $RES
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$8" \
		"$(fetched "$9" "${10}")" "${11}" "$(echo "$SCPU $HZ" | awk '{print $1/$2}')" \
		"$(echo "${12} $(cpu "$REGPID") $HZ" | awk '{print ($2-$1)/$3}')" \
		"$(echo "${13} $(cpu "${PROXYPID[$2]}") $HZ" | awk '{print ($2-$1)/$3}')" >>"$RES"
}
TRACE=$RUN/trace # trace10's recorded trace (once per run)
measure() {
	local s=$1 wl=$2 rtt=$3 r=$4 l0 l1 t0 t1 ts secs=0 bytes=0 iops=0 ttfb=0 up=0 rc0 pc0 i d fail v sn
	case $s/$wl in
	erofs-blockd-warm/share8 | erofs-blockd-local/share8 | erofs-blockd-warm/trace10 | erofs-blockd-local/trace10) return 0 ;;
	erofs-blockd*/trace10)
		if [ ! -s "$TRACE" ]; then # untimed: record the working set's reads
			XARGS=(--record-trace "$TRACE")
			t0=$(now); start "$s" "$rtt"; mountread "$t0"
			stop # SIGTERM: the trace is flushed and closed at exit
			XARGS=()
			log "round $r RTT ${rtt}ms $wl: recorded $TRACE: $(grep -vc '^#' "$TRACE") ranges, $(awk '!/^#/ {s += $3} END {print s + 0}' "$TRACE") bytes"
			[ -s "$TRACE" ] || { echo "bench-remote: --record-trace wrote nothing" >&2; exit 1; }
		fi
		for v in $(if [ $((r % 2)) = 1 ]; then echo off on; else echo on off; fi); do
			rm -rf "$RUN/tcache" && mkdir -p "$RUN/tcache"
			XARGS=(--cache-dir "$RUN/tcache") sn=$s
			[ "$v" = off ] || XARGS+=(--prefetch-trace "$TRACE") sn=$s+trace
			l0=$(logpos) rc0=$(cpu "$REGPID") pc0=$(cpu "${PROXYPID[$rtt]}") SCPU=0
			t0=$(now); start "$s" "$rtt"; ts=$(now)
			mountread "$t0"
			read -r ttfb secs bytes <"$RUN/read.out"
			stop
			XARGS=()
			[ "$bytes" = "$SELBYTES" ] || echo "bench-remote: $sn read $bytes bytes of the working set, want $SELBYTES" >&2
			[ "$v" = off ] || grep -h 'prefetch trace' "$RUN/srv.log" | tail -2 | sed "s/^/  $sn: /" >&2 || true
			sleep 0.2
			l1=$(logpos)
			row "$r" "$rtt" "$sn" "$wl" "$secs" "$bytes" 0 "$ttfb" "$l0" "$l1" "$(echo "$t0 $ts" | awk '{print $2-$1}')" "$rc0" "$pc0"
		done
		rm -rf "$RUN/tcache"
		return 0
		;;
	esac
	case $s/$wl in
	erofs-blockd-warm/*) # untimed: fill the cache dir by one whole-device read, stop
		rm -rf "$WARMDIR"
		sleep 0.2 && l0=$(logpos)
		start "$s" "$rtt"
		nbdcopy "nbd+unix:///?socket=$SSOCK" null:
		stop
		sleep 0.2 && l1=$(logpos)
		log "round $r RTT ${rtt}ms $wl: $s cache filled, fetched (bytes requests) $(fetched "$l0" "$l1" | tr '\t' ' '), $(du -sb "$WARMDIR" | cut -f1) bytes in --cache-dir"
		;;
	esac
	l0=$(logpos) rc0=$(cpu "$REGPID") pc0=$(cpu "${PROXYPID[$rtt]}") SCPU=0
	case $s/$wl in
	curl/nbdcopy)
		t0=$(now); download "$rtt" null; t1=$(now)
		secs=$(echo "$t0 $t1" | awk '{print $2-$1}') bytes=$BLOBBYTES
		;;
	curl/mount10)
		rm -rf "$RUN/dl" && mkdir -p "$RUN/dl"
		t0=$(now)
		download "$rtt" "$RUN/dl"
		start local "$rtt"
		ts=$(now)
		mountread "$t0"
		read -r ttfb secs bytes <"$RUN/read.out"
		stop
		[ "$bytes" = "$SELBYTES" ] || echo "bench-remote: $s read $bytes bytes of the working set, want $SELBYTES" >&2
		up=$(echo "$t0 $ts" | awk '{print $2-$1}')
		rm -rf "$RUN/dl"
		;;
	curl/*) return 0 ;;
	*/nbdcopy)
		t0=$(now); start "$s" "$rtt"; ts=$(now)
		nbdcopy "nbd+unix:///?socket=$SSOCK" null:
		t1=$(now)
		stop
		secs=$(echo "$ts $t1" | awk '{print $2-$1}') bytes=$DEVSIZE up=$(echo "$t0 $ts" | awk '{print $2-$1}')
		;;
	*/rand4k)
		t0=$(now); start "$s" "$rtt"; ts=$(now)
		fiojob "nbd+unix:///?socket=$SSOCK"
		read -r iops bytes secs <"$RUN/fio.out"
		stop
		up=$(echo "$t0 $ts" | awk '{print $2-$1}')
		;;
	erofs-blockd*/share8)
		rm -rf "$RUN/s8cache" && mkdir -p "$RUN/s8cache"
		SRCARGS=() XARGS=(--cache-dir "$RUN/s8cache")
		for i in $(seq "$S8N"); do
			d=oci://${PROXY[$rtt]}/bench/share$i
			SRCARGS+=(--export "share$i=$d@${S8DG[p$i]},$d@${S8DG[base1]},$d@${S8DG[base2]},$d@${S8DG[own$i]}")
		done
		t0=$(now); start "$s" "$rtt"; ts=$(now)
		SRCARGS=() XARGS=()
		local cps=()
		for i in $(seq "$S8N"); do
			(nbdcopy "nbd+unix:///share$i?socket=$SSOCK" - | md5sum | cut -d' ' -f1 >"$RUN/s8-$i.md5") &
			cps+=($!)
		done
		fail=0
		for i in "${cps[@]}"; do wait "$i" || fail=1; done
		t1=$(now)
		stop
		for i in $(seq "$S8N"); do
			if [ "$(cat "$RUN/s8-$i.md5")" != "$(cut -d' ' -f1 "$S8/p$i.md5")" ]; then
				echo "bench-remote: share8: export share$i: md5 $(cat "$RUN/s8-$i.md5"), compose -o of the local files: $(cut -d' ' -f1 "$S8/p$i.md5")" >&2
				fail=1
			fi
		done
		[ "$fail" = 0 ] || { echo "bench-remote: share8 failed (server log $RUN/srv.log):" >&2; tail -20 "$RUN/srv.log" >&2; exit 1; }
		log "round $r RTT ${rtt}ms $wl: $s: $S8N md5s ok, $(du -sb "$RUN/s8cache" | cut -f1) bytes in --cache-dir"
		rm -rf "$RUN/s8cache"
		secs=$(echo "$ts $t1" | awk '{print $2-$1}') bytes=$S8DEVBYTES up=$(echo "$t0 $ts" | awk '{print $2-$1}')
		;;
	*/share8 | */trace10) return 0 ;;
	*/mount10)
		t0=$(now); start "$s" "$rtt"; ts=$(now)
		mountread "$t0"
		read -r ttfb secs bytes <"$RUN/read.out"
		stop
		[ "$bytes" = "$SELBYTES" ] || echo "bench-remote: $s read $bytes bytes of the working set, want $SELBYTES" >&2
		up=$(echo "$t0 $ts" | awk '{print $2-$1}')
		;;
	*) echo "bench-remote: unknown workload $wl" >&2; exit 2 ;;
	esac
	sleep 0.2 # the registry logs a response after sending it
	l1=$(logpos)
	if [ "$wl" = share8 ]; then # kept for a look at what was fetched twice
		tail -c +$((l0 + 1)) "$REGLOG" | head -c $((l1 - l0)) >"$W/share8-rtt$rtt-round$r.reglog"
	fi
	row "$r" "$rtt" "$s" "$wl" "$secs" "$bytes" "$iops" "$ttfb" "$l0" "$l1" "$up" "$rc0" "$pc0"
}

printf 'round\trtt_ms\tserver\tworkload\tsecs\tbytes\tiops\tttfb\tfetched\trequests\tstartup\tsrv_cpu\treg_cpu\tproxy_cpu\n' >"$RES"
read -ra srv <<<"$SERVERS"
n=${#srv[@]}
log "$ROUNDS rounds x RTT {$RTTS} ms x {$WORKLOADS} x {$SERVERS}; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
	for rtt in $RTTS; do
		for wl in $WORKLOADS; do
			for i in $(seq 0 $((n - 1))); do
				measure "${srv[$(((i + r) % n))]}" "$wl" "$rtt" "$r"
			done
		done
	done
	log "round $r done; load: $(cut -d' ' -f1-3 /proc/loadavg)"
done

python3 - "$RES" "$ROUNDS" "$SELBYTES" "$NSEL" "$NFILES" "$DEVSIZE" "$BLOBBYTES" "$RUNTIME" "$READERS" "$BUILT" "$S8UNIQ" "$S8DEVBYTES" "$S8N" <<'EOF'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
rounds, selbytes, nsel, nfiles, devsize, blobbytes, runtime, readers = sys.argv[2:10]
selbytes = int(selbytes)
s8uniq, s8dev, s8n = int(sys.argv[11]), int(sys.argv[12]), int(sys.argv[13])
mountlike = ("mount10", "trace10")
med = lambda xs: st.median(xs) if xs else float("nan")
order = lambda k: list(dict.fromkeys(r[k] for r in rows))
agg = {}
for (rtt, w, s) in {(r["rtt_ms"], r["workload"], r["server"]) for r in rows}:
    rs = [r for r in rows if (r["rtt_ms"], r["workload"], r["server"]) == (rtt, w, s)]
    f = lambda k: [float(r[k]) for r in rs]
    mbs = [float(r["bytes"]) / float(r["secs"]) / 1e6 for r in rs]
    read = [float(r["bytes"]) for r in rs]
    agg[rtt, w, s] = dict(secs=med(f("secs")), mbs=med(mbs), iops=med(f("iops")), ttfb=med(f("ttfb")),
                         fetched=med(f("fetched")), reqs=med(f("requests")), read=med(read), up=med(f("startup")),
                         scpu=med(f("srv_cpu")), rcpu=med(f("reg_cpu")), pcpu=med(f("proxy_cpu")),
                         amp=med([float(r["fetched"]) / float(r["bytes"]) for r in rs if float(r["bytes"]) > 0]),
                         spread=(max(mbs) - min(mbs)) / med(mbs) * 100 if med(mbs) else 0, n=len(rs))
print()
print("erofs-blockd %s; registry docker-registry over latproxy on 127.0.0.1, plain HTTP (--insecure-registry)" % sys.argv[10])
print("rounds=%s; device %s bytes (blobs %s); rand4k: fio %s s, qd32; mount10: %s of %s files, %s bytes, %s reader threads; medians"
      % (rounds, devsize, blobbytes, runtime, nsel, nfiles, selbytes, readers))
hdr = "%-6s %-8s %-22s %8s %7s %6s %6s %7s %7s %8s %8s %6s %16s %9s %9s" % ("RTT", "workload", "server", "time s", "MB/s", "spread",
      "IOPS", "start s", "ttfb s", "fetch MB", "fetch/rd", "reqs", "CPU s srv/reg/px", "vs nbdkit", "vs curl")
print(hdr); print("-" * len(hdr))
for rtt in order("rtt_ms"):
    for w in order("workload"):
        for s in order("server"):
            a = agg.get((rtt, w, s))
            if not a:
                continue
            vs = []
            for o in ("nbdkit-curl", "curl"):
                b = agg.get((rtt, w, o))
                if not s.startswith("erofs-blockd") or not b:
                    vs.append("-")
                elif w == "nbdcopy":
                    vs.append("%.2fx" % (a["mbs"] / b["mbs"]))
                elif w == "rand4k":
                    vs.append("%.2fx" % (a["iops"] / b["iops"]))
                else:
                    vs.append("%.2fx" % (b["secs"] / a["secs"]))
            amp = a["fetched"] / (selbytes if w in mountlike else s8uniq if w == "share8" else a["read"]) if a["read"] else 0
            cpus = "%s/%.1f/%.1f" % ("%.1f" % a["scpu"] if s != "curl" or w == "mount10" else "-", a["rcpu"], a["pcpu"])
            print("%-6s %-8s %-22s %8.2f %7.1f %5.0f%% %6s %7.2f %7s %8.1f %8.2f %6.0f %16s %9s %9s" % (
                rtt + "ms", w, s, a["secs"], a["mbs"], a["spread"], "%.0f" % a["iops"] if w == "rand4k" else "-",
                a["up"], "%.2f" % a["ttfb"] if w in mountlike else "-", a["fetched"] / 1e6, amp, a["reqs"], cpus, vs[0], vs[1]))
        print()
print("time: nbdcopy = copy after the socket exists (curl: the download); rand4k = fio runtime; mount10 = t0 -> last byte read.")
if any(w in ("share8", "trace10") for w in order("workload")):
    print("share8: time = socket -> last of the %d parallel copies, MB/s = all %d devices' bytes (%d) / time; trace10 = t0 -> last byte read" % (s8n, s8n, s8dev))
    print("(SERVER: no trace, SERVER+trace: --prefetch-trace), each with a new empty --cache-dir.")
print("start: server exec -> socket (curl mount10: download + local serve start). ttfb: t0 -> first byte of a working-set file.")
print("CPU s: the server process (curl mount10: the local erofs-blockd) / docker-registry / latproxy during the measurement.")
print("fetch/rd: registry bytes sent / bytes read (mount10, trace10: / working-set bytes; share8: / unique bytes of the")
print("images' distinct blobs); reqs: registry requests (GET/HEAD).")
print("vs x: erofs-blockd's throughput (nbdcopy), IOPS (rand4k), or x's time / erofs-blockd's (mount10), as ratios of")
print("medians: > 1 = erofs-blockd better.")
print()
print("Goals (erofs-blockd with defaults):")
def goal(desc, val, ok):
    print("  %-66s %8s  %s" % (desc, val, "met" if ok else "MISSED"))
for rtt in order("rtt_ms"):
    e, k, c = (agg.get((rtt, "nbdcopy", s)) for s in ("erofs-blockd", "nbdkit-curl", "curl"))
    if e and k:
        goal("RTT %sms: whole-device cold read >= 5x nbdkit curl" % rtt, "%.2fx" % (e["mbs"] / k["mbs"]), e["mbs"] / k["mbs"] >= 5)
    if e and c:
        goal("RTT %sms: whole-device cold read >= 0.8x curl download throughput" % rtt, "%.2fx" % (e["mbs"] / c["mbs"]), e["mbs"] / c["mbs"] >= 0.8)
e, c = agg.get(("10", "mount10", "erofs-blockd")), agg.get(("10", "mount10", "curl"))
if e and c:
    goal("RTT 10ms: 10% working set >= 3x faster than downloading everything", "%.2fx" % (c["secs"] / e["secs"]), c["secs"] / e["secs"] >= 3)
if e:
    goal("RTT 10ms: bytes fetched <= 2x bytes read (working set)", "%.2fx" % (e["fetched"] / selbytes), e["fetched"] / selbytes <= 2)
for rtt in order("rtt_ms"):
    wa, lo = agg.get((rtt, "nbdcopy", "erofs-blockd-warm")), agg.get((rtt, "nbdcopy", "erofs-blockd-local"))
    if wa and lo:
        goal("RTT %sms: warm restart whole-device read >= 0.8x local files" % rtt, "%.2fx" % (wa["mbs"] / lo["mbs"]), wa["mbs"] / lo["mbs"] >= 0.8)
        goal("RTT %sms: warm restart time to ready >= 0.8x local (local/warm)" % rtt, "%.2fx" % (lo["up"] / wa["up"]), lo["up"] / wa["up"] >= 0.8)
        mx = max(int(r["fetched"]) for r in rows if (r["rtt_ms"], r["workload"], r["server"]) == (rtt, "nbdcopy", "erofs-blockd-warm"))
        goal("RTT %sms: warm restart fetches nothing from the registry (max bytes)" % rtt, "%d" % mx, mx == 0)
for rtt in order("rtt_ms"):
    a = agg.get((rtt, "share8", "erofs-blockd"))
    if a and s8uniq:
        goal("RTT %sms: %d images sharing base layers, cold: registry / unique bytes <= 1.05" % (rtt, s8n),
             "%.3fx" % (a["fetched"] / s8uniq), a["fetched"] / s8uniq <= 1.05)
e, t = agg.get(("10", "trace10", "erofs-blockd")), agg.get(("10", "trace10", "erofs-blockd+trace"))
if e and t:
    goal("RTT 10ms: working set cold with --prefetch-trace >= 2x faster (no/with)", "%.2fx" % (e["secs"] / t["secs"]), e["secs"] / t["secs"] >= 2)
s8 = [(rtt, s) for rtt in order("rtt_ms") for s in order("server") if (rtt, "share8", s) in agg]
if s8:
    print()
    print("Shared base layers (share8): %d exports in one serve (fresh --cache-dir), %d parallel whole-device reads, md5s checked;" % (s8n, s8n))
    print("unique bytes %d (%d primaries + 2 bases + %d own layers), devices %d bytes in all; medians, max over rounds in ()" % (s8uniq, s8n, s8n, s8dev))
    hdr = "%-6s %-22s %8s %8s %10s %10s %18s %6s" % ("RTT", "server", "wall s", "copy s", "unique MB", "fetch MB", "fetch/unique (max)", "reqs")
    print(hdr); print("-" * len(hdr))
    for rtt, s in s8:
        a = agg[rtt, "share8", s]
        mx = max(float(r["fetched"]) for r in rows if (r["rtt_ms"], r["workload"], r["server"]) == (rtt, "share8", s))
        wall = med([float(r["startup"]) + float(r["secs"]) for r in rows if (r["rtt_ms"], r["workload"], r["server"]) == (rtt, "share8", s)])
        print("%-6s %-22s %8.2f %8.2f %10.1f %10.1f %18s %6.0f" % (rtt + "ms", s, wall, a["secs"], s8uniq / 1e6, a["fetched"] / 1e6,
              "%.3fx (%.3fx)" % (a["fetched"] / s8uniq, mx / s8uniq), a["reqs"]))
    print("wall: server exec -> last copy done; copy: socket -> last copy done.")
tr = [(rtt, s) for rtt in order("rtt_ms") for s in order("server") if not s.endswith("+trace") and (rtt, "trace10", s) in agg]
tr = list(dict.fromkeys(tr))
if tr:
    print()
    print("Trace prefetch (trace10): the working set (%s files, %d bytes) read cold, t0 = server start -> last byte; medians" % (nsel, selbytes))
    hdr = "%-6s %-22s %11s %11s %8s %15s %15s" % ("RTT", "server", "no trace s", "w/ trace s", "no/with", "fetch MB no/w", "ttfb s no/w")
    print(hdr); print("-" * len(hdr))
    for rtt, s in tr:
        a, b = agg[rtt, "trace10", s], agg.get((rtt, "trace10", s + "+trace"))
        if not b:
            continue
        print("%-6s %-22s %11.2f %11.2f %7.2fx %15s %15s" % (rtt + "ms", s, a["secs"], b["secs"], a["secs"] / b["secs"],
              "%.1f/%.1f" % (a["fetched"] / 1e6, b["fetched"] / 1e6), "%.2f/%.2f" % (a["ttfb"], b["ttfb"])))
    print("no/with: time without the trace / time with it (goal >= 2x at RTT 10ms).")
warm = [(rtt, w) for rtt in order("rtt_ms") for w in order("workload")
        if (rtt, w, "erofs-blockd-warm") in agg and (rtt, w, "erofs-blockd-local") in agg]
if warm:
    print()
    print("Warm restart (--cache-dir filled by a previous whole-device read) vs local files, medians of the same rounds:")
    hdr = "%-6s %-8s %10s %10s %8s %10s %10s %8s %12s %6s" % ("RTT", "workload", "warm MB/s", "local MB/s", "w/l",
          "warm up s", "local up s", "w/l", "warm fetch B", "reqs")
    print(hdr); print("-" * len(hdr))
    for rtt, w in warm:
        wa, lo = agg[rtt, w, "erofs-blockd-warm"], agg[rtt, w, "erofs-blockd-local"]
        if w == "rand4k":
            tw, tl = wa["iops"], lo["iops"]
        elif w == "mount10":
            tw, tl = 1 / wa["secs"], 1 / lo["secs"]  # ratio of speeds
        else:
            tw, tl = wa["mbs"], lo["mbs"]
        mx = max(int(r["fetched"]) for r in rows if (r["rtt_ms"], r["workload"], r["server"]) == (rtt, w, "erofs-blockd-warm"))
        print("%-6s %-8s %10s %10s %7.2fx %10.4f %10.4f %7.2fx %12s %6.0f" % (rtt + "ms", w,
              "%.1f" % wa["mbs"] if w == "nbdcopy" else "-", "%.1f" % lo["mbs"] if w == "nbdcopy" else "-", tw / tl,
              wa["up"], lo["up"], wa["up"] / lo["up"], "%d (max %d)" % (wa["fetched"], mx) if mx else "0", wa["reqs"]))
    print("w/l throughput: warm / local (rand4k: IOPS; mount10: local time / warm time); goal >= 0.8x.")
    print("w/l up: warm / local time from server exec to its socket (ready); goal <= 1.25x (local/warm >= 0.8x).")
EOF
echo "raw results: $RES"

# ---- profile ----------------------------------------------------------------
if [ "$PROFILE" = 1 ] && command -v perf >/dev/null; then
	rtt=${RTTS##* }
	for wl in nbdcopy mount10; do
		l0=$(logpos)
		t0=$(now)
		start erofs-blockd "$rtt"
		perf record -q -F 999 -g -o "$W/$wl-$rtt.perf.data" -p "$SPID" 2>/dev/null &
		pp=$!
		if [ $wl = nbdcopy ]; then nbdcopy "nbd+unix:///?socket=$SSOCK" null:; else mountread "$t0"; fi
		kill -INT "$pp"; wait "$pp" 2>/dev/null || true
		stop
		echo
		echo "perf, erofs-blockd serve, $wl at RTT ${rtt}ms: perf report -i $W/$wl-$rtt.perf.data"
		perf report -i "$W/$wl-$rtt.perf.data" --no-children --stdio --sort sym -g none --percent-limit 1.5 2>/dev/null |
			grep -v '^#' | grep -v '^$' | head -25 | sed 's/^/  /'
	done
fi
