#!/usr/bin/env bash
# bench.sh (make bench): erofs-blockd against nbdkit split, nbdkit file and
# qemu-nbd, all over unix sockets, measured with fio's nbd ioengine and
# nbdcopy. Issue #6.
#
# Sample device (built once, cached in $BENCH_DIR): a generated tree of
# ~SIZE bytes of random files -> mkfs.erofs --blobdev --chunksize=$CHUNK ->
# internal/multiblob split into 4 blobs ($LAYOUT device table; "aligned" =
# 512 KiB-aligned uniaddrs, so the composed device has holes) ->
#   erofs-blockd serve --blob primary --blob blob1..4
#   nbdkit split  over the same bytes: the primary with the rewritten device
#                 table (from the composed device), the four blob files
#                 themselves, and each hole as a sparse zero file
#                 (benchdev pieces); nbdkit split serialises requests and
#                 runs with --filter=noextents (its block status crashes
#                 nbdkit 1.32.5 here, so nbdcopy reads its ~1 MiB of holes)
#   nbdkit file   over `erofs-blockd compose -o flat.img`
#   qemu-nbd      -r -f raw over flat.img, default cache (writeback, i.e.
#                 the page cache, like every other server here), aio=threads
# The concatenation of the split pieces is checked equal to flat.img.
#
# Workloads (fio --ioengine=nbd; each fio job is one NBD connection):
#   rand4k-1c   4 KiB random read, 1 connection, iodepth 32
#   rand4k-4c   4 KiB random read, 4 connections x iodepth $QD4C (default 8:
#               the same 32 requests in flight as rand4k-1c, so only the
#               connection count changes)
#   seq128k     128 KiB sequential read, 1 connection, iodepth 8
#   seq1m       1 MiB sequential read, 1 connection, iodepth 8
#   nbdcopy     nbdcopy URI null: of the whole device (its defaults: up to
#               4 connections when the server offers multi-conn, 64 requests
#               in flight, 256 KiB requests; holes skipped via block status)
# Each round runs every workload against every server, the server order
# rotating per round; data is page-cached (one warm-up copy per server).
# Per run: fio IOPS and bytes; server CPU = utime+stime delta from
# /proc/PID/stat; peak RSS = VmHWM after resetting it (clear_refs 5);
# client CPU = fio's usr+sys (% of one core, all jobs). The table shows
# medians over rounds (RSS: the maximum), the IOPS spread (max-min)/median,
# and for erofs-blockd the ratios to nbdkit split / file. A client near
# 100% per job is what bounds that run: rand4k-1c's single fio job is (on
# a 2-core machine, against any server here), so its ratios measure how
# cheap each server's replies are for fio, not the server's own speed.
#
# Extras (EXTRAS=1, default): RSS of each server with 64 idle connected
# clients; `erofs-blockd serve` start-up time (until its socket exists)
# for the 4-blob device and for a 1000-blob device (benchdev many).
# Profiling (PROFILE=1, default 0): CPU profiles of rand4k-1c and seq1m in
# $BENCH_DIR/prof: runtime/pprof from tools/benchdev serving the device
# in-process (flatdev + nbd.Server, no content cache), and `perf record -g`
# of the real `erofs-blockd serve` (as shipped, kernel included) if perf is
# installed. `erofs-blockd` in the table is serve with its defaults.
#
# env: ROUNDS=5 RUNTIME=8 (seconds per fio run) SIZE=1073741824 CHUNK=65536
#      LAYOUT=aligned QD4C=8 SERVERS="erofs-blockd nbdkit-split nbdkit-file
#      qemu-nbd" (also: erofs-blockd-nocache = serve --cache-size 0,
#      erofs-blockd-cache = serve --cache-size $CACHE_SIZE, default 256M,
#      erofs-blockd-base = serve from the binary $EB_BASE, e.g. a build of
#      the commit before a change, interleaved with this tree's;
#      erofs-blockd-base-cache = the same with --cache-size $CACHE_SIZE)
#      WORKLOADS="rand4k-1c rand4k-4c seq128k seq1m nbdcopy"
#      EXTRAS=1 PROFILE=0 BENCH_DIR=out/bench (kept; delete it to rebuild)
#      PIN=0 (1: servers pinned to the last CPU, fio to the others)
# Default duration: ~1 min set-up (first time) + 5 x (4 servers x (4 x 8 s
# + nbdcopy)) ~ 13 min.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-5}
RUNTIME=${RUNTIME:-8}
SIZE=${SIZE:-1073741824}
CHUNK=${CHUNK:-65536}
LAYOUT=${LAYOUT:-aligned}
QD4C=${QD4C:-8}
SERVERS=${SERVERS:-"erofs-blockd nbdkit-split nbdkit-file qemu-nbd"}
WORKLOADS=${WORKLOADS:-"rand4k-1c rand4k-4c seq128k seq1m nbdcopy"}
EXTRAS=${EXTRAS:-1}
PROFILE=${PROFILE:-0}
CACHE_SIZE=${CACHE_SIZE:-256M}
W=${BENCH_DIR:-$ROOT/out/bench}
export PATH=$PATH:/usr/local/go/bin

for t in go mkfs.erofs fio nbdkit qemu-nbd nbdcopy python3 getconf; do
	command -v "$t" >/dev/null || { echo "bench: missing $t (run scripts/deps.sh)" >&2; exit 2; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "bench: this fio has no nbd ioengine" >&2; exit 2; }

mkdir -p "$W/bin" "$W/run"
W=$(cd "$W" && pwd)
RUN=$W/run
HZ=$(getconf CLK_TCK)
# PIN=1: every server on the last CPU, fio on the others (taskset), so
# client and server never take each other's core
PINSRV= PINFIO=
if [ "${PIN:-0}" = 1 ]; then
	last=$(($(nproc) - 1))
	[ "$last" -ge 1 ] || { echo "bench: PIN=1 needs 2 CPUs" >&2; exit 2; }
	PINSRV=$last PINFIO="taskset -c 0-$((last - 1))"
fi
log() { echo "== $(date +%T) $*" >&2; }

log "building erofs-blockd and benchdev"
(cd "$ROOT" && go build -trimpath -o "$W/bin/erofs-blockd" ./cmd/erofs-blockd &&
	go build -trimpath -o "$W/bin/benchdev" ./tools/benchdev &&
	go build -trimpath -o "$W/bin/mkmultiblob" ./tools/mkmultiblob)
EB=$W/bin/erofs-blockd
BD=$W/bin/benchdev

# ---- the sample device ----------------------------------------------------
DEV=$W/dev-$SIZE-$CHUNK-$LAYOUT
if [ ! -f "$DEV/ready" ]; then
	rm -rf "$DEV" "$W/tree"
	mkdir -p "$DEV"
	log "generating a $SIZE-byte tree"
	"$BD" gentree "$W/tree" "$SIZE"
	log "mkfs.erofs --blobdev --chunksize=$CHUNK"
	mkfs.erofs --quiet -T0 --blobdev="$DEV/raw.blob" --chunksize="$CHUNK" "$DEV/raw.erofs" "$W/tree" >/dev/null
	rm -rf "$W/tree"
	log "splitting into 4 blobs ($LAYOUT layout)"
	"$W/bin/mkmultiblob" -primary "$DEV/raw.erofs" -blob "$DEV/raw.blob" -n 4 -layout "$LAYOUT" -o "$DEV/mb" >"$DEV/blobs"
	rm -f "$DEV/raw.blob"
	log "compose -o flat.img; split pieces"
	mapfile -t blobs <"$DEV/blobs"
	bargs=()
	for b in "${blobs[@]}"; do bargs+=(--blob "$b"); done
	"$EB" compose "${bargs[@]}" -o "$DEV/flat.img"
	"$BD" pieces "${bargs[@]}" -o "$DEV/split" >"$DEV/split.list"
	mapfile -t pcs <"$DEV/split.list"
	cat "${pcs[@]}" | cmp - "$DEV/flat.img" || { echo "bench: split pieces differ from flat.img" >&2; exit 1; }
	touch "$DEV/ready"
fi
mapfile -t blobs <"$DEV/blobs"
mapfile -t pcs <"$DEV/split.list"
BARGS=()
for b in "${blobs[@]}"; do BARGS+=(--blob "$b"); done
DEVSIZE=$(stat -c %s "$DEV/flat.img")
log "device: $DEVSIZE bytes; primary $(stat -c %s "${blobs[0]}") bytes + $((${#blobs[@]} - 1)) blobs; ${#pcs[@]} split pieces"

# ---- servers --------------------------------------------------------------
declare -A PID SOCK
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

waitsock() { # socket pid
	for _ in $(seq 3000); do
		[ -S "$1" ] && return 0
		kill -0 "$2" 2>/dev/null || { echo "bench: server for $1 exited" >&2; return 1; }
		sleep 0.01
	done
	echo "bench: $1 did not appear" >&2
	return 1
}

start() { # name
	local s=$RUN/$1.sock p
	rm -f "$s"
	start1 "$@"
	p=${PID[$1]}
	[ -z "$PINSRV" ] || taskset -a -p -c "$PINSRV" "$p" >/dev/null
	waitsock "$s" "$p"
}

start1() { # name: starts the server, sets PID and SOCK
	local s=$RUN/$1.sock p
	case $1 in
	erofs-blockd) "$EB" serve "${BARGS[@]}" --listen "unix:$s" >"$RUN/$1.log" 2>&1 & p=$! ;;
	erofs-blockd-nocache) "$EB" serve "${BARGS[@]}" --cache-size 0 --listen "unix:$s" >"$RUN/$1.log" 2>&1 & p=$! ;;
	erofs-blockd-cache) "$EB" serve "${BARGS[@]}" --cache-size "$CACHE_SIZE" --listen "unix:$s" >"$RUN/$1.log" 2>&1 & p=$! ;;
	# another build (EB_BASE=path/to/erofs-blockd), e.g. before a change,
	# measured in the same rounds as this tree's
	erofs-blockd-base) "${EB_BASE:?erofs-blockd-base needs EB_BASE}" serve "${BARGS[@]}" --listen "unix:$s" >"$RUN/$1.log" 2>&1 & p=$! ;;
	erofs-blockd-base-cache) "${EB_BASE:?erofs-blockd-base-cache needs EB_BASE}" serve "${BARGS[@]}" --cache-size "$CACHE_SIZE" --listen "unix:$s" >"$RUN/$1.log" 2>&1 & p=$! ;;
	# noextents: nbdkit 1.32.5's split plugin segfaults answering nbdcopy's
	# block-status on this device; without it every byte is "data".
	nbdkit-split) nbdkit -r -f -U "$s" --filter=noextents split "${pcs[@]}" >"$RUN/$1.log" 2>&1 & p=$! ;;
	nbdkit-file) nbdkit -r -f -U "$s" file file="$DEV/flat.img" >"$RUN/$1.log" 2>&1 & p=$! ;;
	qemu-nbd) qemu-nbd -r -f raw -t -e 128 -k "$s" "$DEV/flat.img" >"$RUN/$1.log" 2>&1 & p=$! ;;
	benchdev) "$BD" serve "${BARGS[@]}" --listen "unix:$s" --cpuprofile-dir "$W/prof" >"$RUN/$1.log" 2>&1 & p=$! ;;
	*) echo "bench: unknown server $1" >&2; exit 2 ;;
	esac
	PIDS+=("$p")
	PID[$1]=$p
	SOCK[$1]=$s
}

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
uri() { echo "nbd+unix:///?socket=${SOCK[$1]}"; }
now() { date +%s.%N; }

fiojob() { # workload uri -> fio json on stdout
	local args=(--name=w --ioengine=nbd --uri="$2" --time_based --runtime="$RUNTIME"
		--group_reporting --output-format=json --randrepeat=0 --norandommap)
	case $1 in
	rand4k-1c) args+=(--rw=randread --bs=4k --iodepth=32 --numjobs=1) ;;
	rand4k-4c) args+=(--rw=randread --bs=4k --iodepth="$QD4C" --numjobs=4) ;;
	seq128k) args+=(--rw=read --bs=128k --iodepth=8 --numjobs=1) ;;
	seq1m) args+=(--rw=read --bs=1m --iodepth=8 --numjobs=1) ;;
	*) echo "bench: unknown workload $1" >&2; exit 2 ;;
	esac
	$PINFIO fio "${args[@]}"
}

RES=$W/results.tsv
# one run: server workload round -> appends a line to $RES
measure() {
	local s=$1 wl=$2 r=$3 p=${PID[$1]} c0 c1 t0 t1 out iops bytes
	echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true
	c0=$(cpu "$p")
	if [ "$wl" = nbdcopy ]; then
		t0=$(now)
		nbdcopy "$(uri "$s")" null:
		t1=$(now)
		c1=$(cpu "$p")
		iops=0 bytes=$DEVSIZE client=
		secs=$(python3 -c "import sys; print(float(sys.argv[2])-float(sys.argv[1]))" "$t0" "$t1")
	else
		out=$(fiojob "$wl" "$(uri "$s")")
		c1=$(cpu "$p")
		# client: fio's own CPU (usr+sys) as % of one core, all jobs
		read -r iops bytes secs client < <(echo "$out" | python3 -c '
import json, sys
t = sys.stdin.read()
j = json.loads(t[t.find("{"):])
if j["jobs"][0]["error"]:
    sys.exit("fio error %d" % j["jobs"][0]["error"])
r = j["jobs"][0]["read"]
jb = j["jobs"][0]  # group_reporting: CPU is the mean per job
print(r["iops"], r["io_bytes"], r["runtime"] / 1000.0,
      (jb["usr_cpu"] + jb["sys_cpu"]) * int(jb["job options"].get("numjobs", "1")))
')
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$s" "$wl" "$iops" "$bytes" "$secs" \
		"$(echo "$c0 $c1 $HZ" | awk '{print ($2-$1)/$3}')" "$(hwm "$p")" "${client:-}" >>"$RES"
}

if [ "$ROUNDS" -gt 0 ]; then
	read -ra srv <<<"$SERVERS"
	for s in "${srv[@]}"; do start "$s"; done
	log "warm-up: nbdcopy from each server"
	for s in "${srv[@]}"; do nbdcopy "$(uri "$s")" null:; done
	printf 'round\tserver\tworkload\tiops\tbytes\tsecs\tcpu_s\thwm_kb\tclient_pct\n' >"$RES"
	log "$ROUNDS rounds x {$WORKLOADS} x {$SERVERS}, fio runs of ${RUNTIME}s; load: $(cut -d' ' -f1-3 /proc/loadavg)"
	for r in $(seq "$ROUNDS"); do
		for wl in $WORKLOADS; do
			n=${#srv[@]}
			for i in $(seq 0 $((n - 1))); do
				s=${srv[$(((i + r) % n))]}
				measure "$s" "$wl" "$r"
			done
		done
		log "round $r done; load: $(cut -d' ' -f1-3 /proc/loadavg)"
	done
	python3 - "$RES" "$ROUNDS" "$RUNTIME" "$QD4C" <<'EOF'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
order_s = []; order_w = []
for r in rows:
    if r["server"] not in order_s: order_s.append(r["server"])
    if r["workload"] not in order_w: order_w.append(r["workload"])
agg = {}
for w in order_w:
    for s in order_s:
        rs = [r for r in rows if r["server"] == s and r["workload"] == w]
        if not rs: continue
        iops = [float(r["iops"]) for r in rs]
        mbs = [float(r["bytes"]) / float(r["secs"]) / 1e6 for r in rs]
        cpu = [float(r["cpu_s"]) / (float(r["bytes"]) / 2**30) for r in rs]
        secs = [float(r["secs"]) for r in rs]
        cl = [float(r["client_pct"]) for r in rs if r.get("client_pct")]
        agg[w, s] = dict(iops=st.median(iops), mbs=st.median(mbs), cpu=st.median(cpu),
                         client=st.median(cl) if cl else None,
                         rss=max(int(r["hwm_kb"]) for r in rs) / 1024, secs=st.median(secs),
                         spread=(max(mbs) - min(mbs)) / st.median(mbs) * 100, n=len(rs))
print()
print("rounds=%s runtime=%ss per fio run; rand4k-4c = 4 connections x iodepth %s; medians (RSS: max)" % tuple(sys.argv[2:5]))
hdr = "%-10s %-20s %10s %9s %8s %11s %8s %7s %9s %9s %9s %9s" % ("workload", "server", "IOPS", "MB/s", "spread", "CPU s/GiB", "RSS MiB", "client", "thr/split", "thr/file", "cpu/split", "cpu/file")
print(hdr); print("-" * len(hdr))
for w in order_w:
    for s in order_s:
        a = agg.get((w, s))
        if not a: continue
        iops = "%.0f" % a["iops"] if w != "nbdcopy" else "%.2fs" % a["secs"]
        extra = ""
        if s.startswith("erofs-blockd"):
            for o in ("nbdkit-split", "nbdkit-file"):
                b = agg.get((w, o))
                extra += " %9s" % ("%.2f" % (a["mbs"] / b["mbs"]) if b else "-")
            for o in ("nbdkit-split", "nbdkit-file"):
                b = agg.get((w, o))
                extra += " %9s" % ("%.2f" % (a["cpu"] / b["cpu"]) if b and b["cpu"] > 0 else "-")
        client = "%6.0f%%" % a["client"] if a["client"] is not None else "%7s" % "-"
        print("%-10s %-20s %10s %9.1f %7.0f%% %11.3f %8.1f %s%s" % (w, s, iops, a["mbs"], a["spread"], a["cpu"], a["rss"], client, extra))
    print()
print("IOPS column for nbdcopy: median wall time of the whole-device copy. spread: (max-min)/median of MB/s.")
print("thr/x: erofs-blockd MB/s / x's MB/s (higher is better); cpu/x: erofs-blockd CPU s/GiB / x's (lower is better).")
print("client: fio's own CPU (usr+sys, % of one core, all jobs), median. At ~100% per job (rand4k-1c has one) fio itself")
print("  bounds IOPS: its nbd engine makes 6 system calls per request (poll, 4 recv, send) whatever the server.")
EOF
	for s in "${srv[@]}"; do kill "${PID[$s]}"; done
	wait 2>/dev/null || true
	PIDS=()
fi

# ---- extras -----------------------------------------------------------------
if [ "$EXTRAS" = 1 ]; then
	echo
	echo "RSS with 64 idle connected clients (NBD_OPT_EXPORT_NAME done, no requests), fresh servers:"
	read -ra srv <<<"$SERVERS"
	for s in "${srv[@]}"; do
		start "$s"
		sleep 0.5
		r0=$(rss "${PID[$s]}")
		"$BD" idle --socket "${SOCK[$s]}" -n 64 --hold 3s >"$RUN/idle.out" &
		ip=$!
		for _ in $(seq 500); do grep -q ready "$RUN/idle.out" 2>/dev/null && break; sleep 0.01; done
		sleep 1
		r1=$(rss "${PID[$s]}")
		th=$(ls "/proc/${PID[$s]}/task" | wc -l)
		wait "$ip"
		printf '  %-20s RSS idle %6.1f MiB -> with 64 conns %6.1f MiB (+%5.1f KiB/conn), threads %s\n' \
			"$s" "$(echo "$r0" | awk '{print $1/1024}')" "$(echo "$r1" | awk '{print $1/1024}')" \
			"$(echo "$r0 $r1" | awk '{print ($2-$1)/64}')" "$th"
		kill "${PID[$s]}"
		wait "${PID[$s]}" 2>/dev/null || true
	done
	PIDS=()

	MANY=$W/many1000
	if [ ! -f "$MANY/ready" ]; then
		rm -rf "$MANY" && mkdir -p "$MANY"
		"$BD" gentree "$MANY/tree" 8388608
		mkfs.erofs --quiet -T0 --blobdev="$MANY/raw.blob" --chunksize=4096 "$MANY/raw.erofs" "$MANY/tree" >/dev/null
		"$BD" many --primary "$MANY/raw.erofs" --blob "$MANY/raw.blob" -n 1000 -o "$MANY/dev" >"$MANY/blobs"
		touch "$MANY/ready"
	fi
	startup() { # label server-binary blobs-file
		local args=() t=() bin=$2
		mapfile -t bl <"$3"
		for b in "${bl[@]}"; do args+=(--blob "$b"); done
		for _ in 1 2 3 4 5 6 7; do
			rm -f "$RUN/st.sock"
			t0=$(now)
			"$bin" serve "${args[@]}" --listen "unix:$RUN/st.sock" >"$RUN/st.log" 2>&1 &
			p=$!
			if ! waitsock "$RUN/st.sock" "$p" 2>/dev/null; then
				wait "$p" 2>/dev/null || true
				printf '  %-34s FAILED: %s\n' "$1" "$(head -c 200 "$RUN/st.log")"
				return 0
			fi
			t1=$(now)
			kill "$p"; wait "$p" 2>/dev/null || true
			t+=("$(python3 -c "import sys; print((float(sys.argv[2])-float(sys.argv[1]))*1000)" "$t0" "$t1")")
		done
		printf '  %-34s median %7.1f ms (7 starts: %s)\n' "$1" \
			"$(printf '%s\n' "${t[@]}" | sort -g | sed -n 4p)" "$(printf '%.0f ' "${t[@]}")"
	}
	echo
	echo "Start-up, exec until the unix socket exists (quick check included, 10 ms polling):"
	startup "erofs-blockd serve, 4 blobs" "$EB" "$DEV/blobs"
	startup "erofs-blockd serve, 1000 blobs" "$EB" "$MANY/blobs"
	startup "benchdev serve, 4 blobs" "$BD" "$DEV/blobs"
	startup "benchdev serve, 1000 blobs" "$BD" "$MANY/blobs"
fi

# ---- profiles ---------------------------------------------------------------
# pprof: benchdev serve = flatdev + nbd.Server without the content cache
# (like serve --cache-size 0). perf (when installed): the real binary as
# shipped, kernel time included.
if [ "$PROFILE" = 1 ]; then
	P=$W/prof
	mkdir -p "$P"
	rm -f "$P"/cpu-*.prof
	start benchdev
	nbdcopy "$(uri benchdev)" null:
	for wl in rand4k-1c seq1m; do
		kill -USR1 "${PID[benchdev]}"
		fiojob "$wl" "$(uri benchdev)" >"$P/$wl.fio.json"
		kill -USR2 "${PID[benchdev]}"
		for _ in $(seq 100); do ls "$P"/cpu-*.prof >/dev/null 2>&1 && break; sleep 0.05; done
		sleep 0.2
		mv "$P"/cpu-*.prof "$P/$wl.prof"
		echo
		echo "pprof, benchdev serve (no cache), $wl: go tool pprof -top $P/$wl.prof"
		go tool pprof -top -nodecount=25 "$W/bin/benchdev" "$P/$wl.prof" 2>/dev/null | sed -n '5,100p' | sed 's/^/  /'
	done
	if command -v perf >/dev/null; then
		start erofs-blockd
		nbdcopy "$(uri erofs-blockd)" null:
		for wl in rand4k-1c seq1m; do
			perf record -q -F 499 -g -o "$P/$wl.perf.data" -p "${PID[erofs-blockd]}" -- sleep "$RUNTIME" 2>/dev/null &
			pp=$!
			fiojob "$wl" "$(uri erofs-blockd)" >"$P/$wl.perf.fio.json"
			wait "$pp" || true
			echo
			echo "perf, erofs-blockd serve (as shipped), $wl: perf report -i $P/$wl.perf.data"
			perf report -i "$P/$wl.perf.data" --no-children --stdio --sort sym -g none --percent-limit 1.5 2>/dev/null |
				grep -v '^#' | grep -v '^$' | head -30 | sed 's/^/  /'
		done
	fi
fi
