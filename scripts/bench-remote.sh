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
#      EB_ENV="" (environment for erofs-blockd, e.g. GOGC=400)
#      PROFILE=0 (1: a CPU profile, perf, of erofs-blockd during nbdcopy and
#      mount10 at the last RTT) BENCH_DIR=out/bench-remote (image kept there;
#      delete it to rebuild)
# Default duration on 2 cores: ~1 min set-up (first time) + ~2.5 min per round.
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
W=${BENCH_DIR:-$ROOT/out/bench-remote}
export PATH=$PATH:/usr/local/go/bin

for t in go mkfs.erofs docker-registry curl nbdkit nbdcopy nbdfuse fio python3 sha256sum mount umount; do
	command -v "$t" >/dev/null || { echo "bench-remote: missing $t (run scripts/deps.sh)" >&2; exit 2; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "bench-remote: this fio has no nbd ioengine" >&2; exit 2; }
[ "$(id -u)" = 0 ] || case " $WORKLOADS " in *" mount10 "*) echo "bench-remote: mount10 needs root" >&2; exit 2 ;; esac

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
push() { # file -> prints sha256:HEX
	local d loc u
	d=sha256:$(sha256sum "$1" | cut -d' ' -f1)
	loc=$(curl -fsS -i -X POST "http://$REG/v2/$REPO/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location" {print $2}')
	case $loc in *\?*) u="$loc&digest=$d" ;; *) u="$loc?digest=$d" ;; esac
	case $u in http*) ;; *) u="http://$REG$u" ;; esac
	curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$1" "$u" -o /dev/null
	echo "$d"
}
log "pushing ${#BLOBS[@]} blobs and the composed image to the registry at $REG"
DIGESTS=()
for b in "${BLOBS[@]}"; do DIGESTS+=("$(push "$b")"); done
FLATDG=$(push "$DEV/flat.img")

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
		for d in "${DIGESTS[@]}"; do a+=(--blob "oci://$p/$REPO@$d"); done
		# shellcheck disable=SC2046
		env $EB_ENV "$EB" serve "${a[@]}" --insecure-registry "$p" $(ebflags "$1") --listen "unix:$SSOCK" >"$RUN/srv.log" 2>&1 &
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
measure() {
	local s=$1 wl=$2 rtt=$3 r=$4 l0 l1 t0 t1 ts secs=0 bytes=0 iops=0 ttfb=0 up=0 rc0 pc0
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
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$rtt" "$s" "$wl" "$secs" "$bytes" "$iops" "$ttfb" \
		"$(fetched "$l0" "$l1")" "$up" "$(echo "$SCPU $HZ" | awk '{print $1/$2}')" \
		"$(echo "$rc0 $(cpu "$REGPID") $HZ" | awk '{print ($2-$1)/$3}')" \
		"$(echo "$pc0 $(cpu "${PROXYPID[$rtt]}") $HZ" | awk '{print ($2-$1)/$3}')" >>"$RES"
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

python3 - "$RES" "$ROUNDS" "$SELBYTES" "$NSEL" "$NFILES" "$DEVSIZE" "$BLOBBYTES" "$RUNTIME" "$READERS" "$BUILT" <<'EOF'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
rounds, selbytes, nsel, nfiles, devsize, blobbytes, runtime, readers = sys.argv[2:10]
selbytes = int(selbytes)
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
            amp = a["fetched"] / (selbytes if w == "mount10" else a["read"]) if a["read"] else 0
            cpus = "%s/%.1f/%.1f" % ("%.1f" % a["scpu"] if s != "curl" or w == "mount10" else "-", a["rcpu"], a["pcpu"])
            print("%-6s %-8s %-22s %8.2f %7.1f %5.0f%% %6s %7.2f %7s %8.1f %8.2f %6.0f %16s %9s %9s" % (
                rtt + "ms", w, s, a["secs"], a["mbs"], a["spread"], "%.0f" % a["iops"] if w == "rand4k" else "-",
                a["up"], "%.2f" % a["ttfb"] if w == "mount10" else "-", a["fetched"] / 1e6, amp, a["reqs"], cpus, vs[0], vs[1]))
        print()
print("time: nbdcopy = copy after the socket exists (curl: the download); rand4k = fio runtime; mount10 = t0 -> last byte read.")
print("start: server exec -> socket (curl mount10: download + local serve start). ttfb: t0 -> first byte of a working-set file.")
print("CPU s: the server process (curl mount10: the local erofs-blockd) / docker-registry / latproxy during the measurement.")
print("fetch/rd: registry bytes sent / bytes read (mount10: / working-set bytes); reqs: registry requests (GET/HEAD).")
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
