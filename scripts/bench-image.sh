#!/usr/bin/env bash
# bench-image.sh (make bench-image): an OCI image served lazily from a
# registry, against pulling it first.
#
# The image: SIZE bytes (default 600 MiB) of this machine's /usr in three
# gzip layers (60/30/10 %, made with umoci), pushed with skopeo to Debian's
# docker-registry (plain HTTP on loopback) behind internal/latproxy at RTT
# ms (default 10). The working set (WS): "contig" (default) a run of paths
# from the middle of the sorted tree holding 10 % of the bytes (one
# application's files), "scatter" every file whose path hashes to 0 mod 10. Per round, interleaved, each from nothing local:
#   eb-pushed   erofs-blockd serve --image (fresh --cache-dir; the index was
#               pushed once with `erofs-blockd index --push`), nbdfuse,
#               mount -t erofs
#   eb-build    the same without a pushed index (built at start: every
#               layer streamed once)
#   pull        skopeo copy to an OCI layout + umoci unpack (a full pull)
#   pull-mkfs   the pull, then mkfs.erofs 1.9.4 of the unpacked rootfs,
#               mounted (convert-then-mount)
# Reported (medians): ready = until `ls -R` of the mount (or the unpacked
# tree) has run; ws = ready + reading the working set; fetched = registry
# bytes sent; ratios against pull and pull-mkfs, fetched / working-set bytes.
# The clock starts after the page cache is dropped and the reader (a
# python script) has started and waits: its interpreter's start is in no
# row.
#
# Usage: scripts/bench-image.sh [WORKDIR]
#   env: SIZE=629145600 ROUNDS=3 RTT=10 WS=contig|scatter KEEP=1
set -euo pipefail
SIZE=${SIZE:-629145600}
ROUNDS=${ROUNDS:-3}
RTT=${RTT:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-$(mktemp -d /tmp/bench-image.XXXXXX)}
mkdir -p "$W"
PIDS=()
MOUNTS=()
cleanup() {
	for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	if [ -z "${KEEP:-}" ] && [ -z "${1:-}" ]; then rm -rf "$W"; fi
}
trap cleanup EXIT
export PATH=$PATH:/usr/local/go/bin
MKFS=$(bash "$ROOT/scripts/erofs-utils.sh" --print)/mkfs.erofs
for t in go docker-registry skopeo umoci nbdfuse python3 curl "$MKFS"; do
	command -v "$t" >/dev/null || { echo "bench-image: missing $t (make deps reference-deps)" >&2; exit 2; }
done
log() { echo "== $*" >&2; }
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

log "building erofs-blockd and latproxy"
mkdir -p "$W/bin"
(cd "$ROOT" && go build -o "$W/bin/erofs-blockd" ./cmd/erofs-blockd && go build -o "$W/bin/latproxy" ./internal/latproxy/cmd)
EB=$W/bin/erofs-blockd

if [ ! -f "$W/layout/index.json" ]; then
	log "an image of ~$SIZE bytes from /usr in 3 layers"
	python3 - "$W" "$SIZE" <<'EOF'
import os, sys
w, want = sys.argv[1], int(sys.argv[2])
files, tot = [], 0
for d, ds, fs in os.walk("/usr"):
    ds.sort()
    for f in sorted(fs):
        p = os.path.join(d, f)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        files.append(p[1:])
        tot += os.path.getsize(p)
    if tot >= want:
        break
cut = [0, int(len(files) * .6), int(len(files) * .9), len(files)]
for i in range(3):
    open(os.path.join(w, "list%d" % (i + 1)), "w").write("\n".join(files[cut[i]:cut[i + 1]]) + "\n")
EOF
	rm -rf "$W/layout"
	umoci init --layout "$W/layout" >/dev/null
	umoci new --image "$W/layout:v1" >/dev/null
	for i in 1 2 3; do
		tar -C / -cf "$W/l$i.tar" -T "$W/list$i"
		umoci raw add-layer --image "$W/layout:v1" "$W/l$i.tar"
		rm -f "$W/l$i.tar"
	done
fi

REG=127.0.0.1:$(freeport)
mkdir -p "$W/reg"
cat >"$W/reg/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $W/reg/storage
http:
  addr: $REG
EOF
REGLOG=$W/reg/registry.log
docker-registry serve "$W/reg/config.yml" >"$REGLOG" 2>&1 &
PIDS+=($!)
for _ in $(seq 500); do curl -fs "http://$REG/v2/" >/dev/null && break; sleep 0.02; done
log "pushing the image with skopeo"
skopeo copy -q --dest-tls-verify=false "oci:$W/layout:v1" "docker://$REG/bench/img:v1"
# The same image in a second repository, without a pushed index (eb-build).
skopeo copy -q --dest-tls-verify=false "oci:$W/layout:v1" "docker://$REG/bench/img2:v1"
"$W/bin/latproxy" -listen 127.0.0.1:0 -to "$REG" -rtt "${RTT}ms" >"$W/proxy.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 500); do grep -q listening "$W/proxy.out" && break; sleep 0.01; done
PROXY=$(awk '/listening/ {print $2}' "$W/proxy.out")
IMG=oci://$PROXY/bench/img:v1
INS=(--insecure-registry "$PROXY")
log "pushing the index (erofs-blockd index --push)"
"$EB" index -q --push "${INS[@]}" "$IMG"

logpos() { stat -c %s "$REGLOG"; }
fetched() { # from-offset -> bytes sent since
	tail -c +$(($1 + 1)) "$REGLOG" | awk '/response completed/ { for (i = 1; i <= NF; i++) if ($i ~ /^http\.response\.written=/) { split($i, a, "="); s += a[2] } } END { printf "%d\n", s }'
}
READER=$W/reader.py
cat >"$READER" <<'EOF'
# reader.py ROOT GO: started before the clock starts, so the
# interpreter's own start (slow from a dropped page cache) is not timed:
# it says "armed" on stderr, waits for T0 (the start time) on the fifo GO,
# then runs ls -R (a walk of the directories), prints the time; then
# stats every file, reads the working set, prints the time and bytes.
import hashlib, os, sys, time
from concurrent.futures import ThreadPoolExecutor
root = sys.argv[1]
print("armed", file=sys.stderr, flush=True)
with open(sys.argv[2]) as go:
    t0 = float(go.read().strip())
# ls -R: directory entries only (d_type from getdents, no stat per file)
paths = []
stack = [root]
while stack:
    d = stack.pop()
    with os.scandir(d) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            elif e.is_file(follow_symlinks=False):
                paths.append(e.path)
t1 = time.time()
files = [(p[len(root):], p, os.lstat(p).st_size) for p in paths]
files.sort()
total = sum(f[2] for f in files)
if os.environ.get("WS", "contig") == "scatter":
    # every file whose path hashes to 0 mod 10
    ws = [f[1] for f in files if hashlib.md5(f[0].encode()).digest()[0] % 10 == 0]
else:
    # one application's files: a run of paths from the middle, 10 % of the bytes
    ws, got = [], 0
    for f in files[len(files) // 2:] + files[:len(files) // 2]:
        if got >= total // 10:
            break
        ws.append(f[1])
        got += f[2]
def rd(p):
    n = 0
    with open(p, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return n
            n += len(b)
with ThreadPoolExecutor(8) as ex:
    total = sum(ex.map(rd, ws))
print(t1 - t0, time.time() - t0, total)
EOF

arm() { # root -> a reader waiting on $W/run/go, its output in $W/run/reader.out
	mkfifo "$W/run/go"
	python3 "$READER" "$1" "$W/run/go" >"$W/run/reader.out" 2>"$W/run/reader.err" &
	RPID=$!
	for _ in $(seq 6000); do grep -q armed "$W/run/reader.err" 2>/dev/null && return; sleep 0.005; done
	echo "reader did not start" >&2
	exit 1
}
fire() { # -> ready ws bytes, the reader started at $t0
	echo "$t0" >"$W/run/go"
	wait "$RPID" || { cat "$W/run/reader.err" >&2; exit 1; }
	read -r ready ws bytes <"$W/run/reader.out"
}
mountfuse() { # sock -> mount point in $M
	local f=$W/run/fuse
	M=$W/run/mnt
	mkdir -p "$f" "$M"
	nbdfuse -r "$f" --unix "$1" >/dev/null 2>&1 &
	PIDS+=($!)
	for _ in $(seq 4000); do [ -e "$f/nbd" ] && break; sleep 0.005; done
	mount -t erofs -o ro "$f/nbd" "$M"
	MOUNTS=("$M" "$f")
}
unmountall() {
	for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || true; done
	MOUNTS=()
}

RES=$W/results.tsv
: >"$RES"
for r in $(seq "$ROUNDS"); do
	for s in eb-pushed eb-build pull pull-mkfs; do
		log "round $r: $s"
		rm -rf "$W/run"
		mkdir -p "$W/run"
		sync
		echo 3 >/proc/sys/vm/drop_caches
		root=$W/run/mnt
		[ "$s" = pull ] && root=$W/run/bundle/rootfs
		arm "$root"
		p0=$(logpos)
		t0=$(date +%s.%N)
		case $s in
		eb-*)
			img=$IMG
			[ "$s" = eb-build ] && img=oci://$PROXY/bench/img2:v1
			"$EB" serve --listen "unix:$W/run/s.sock" --image "$img" "${INS[@]}" --cache-dir "$W/run/cache" >"$W/run/serve.out" 2>"$W/run/serve.err" &
			spid=$!
			PIDS+=("$spid")
			for _ in $(seq 60000); do [ -S "$W/run/s.sock" ] && break; kill -0 $spid 2>/dev/null || { cat "$W/run/serve.err" >&2; exit 1; }; sleep 0.001; done
			mountfuse "$W/run/s.sock"
			fire
			unmountall
			kill $spid
			wait $spid 2>/dev/null || true
			;;
		pull)
			skopeo copy -q --src-tls-verify=false "docker://$PROXY/bench/img:v1" "oci:$W/run/pulled:v1"
			umoci unpack --image "$W/run/pulled:v1" "$W/run/bundle" >/dev/null
			fire
			;;
		pull-mkfs)
			skopeo copy -q --src-tls-verify=false "docker://$PROXY/bench/img:v1" "oci:$W/run/pulled:v1"
			umoci unpack --image "$W/run/pulled:v1" "$W/run/bundle" >/dev/null
			"$MKFS" "$W/run/img.erofs" "$W/run/bundle/rootfs" >/dev/null 2>&1
			mkdir -p "$W/run/mnt"
			mount -t erofs -o ro,loop "$W/run/img.erofs" "$W/run/mnt"
			MOUNTS=("$W/run/mnt")
			fire
			unmountall
			;;
		esac
		echo "$s $ready $ws $bytes $(fetched "$p0")" >>"$RES"
	done
done

python3 - "$RES" "$RTT" <<'EOF'
import statistics as st, sys
rows = {}
for l in open(sys.argv[1]):
    s, *v = l.split()
    rows.setdefault(s, []).append([float(x) for x in v])
med = lambda s, i: st.median(r[i] for r in rows[s])
n = len(rows["pull"])
print(f"{n} rounds, registry at {sys.argv[2]} ms RTT (latproxy), medians; ready = until ls -R ran, ws = ready + reading the working set")
print(f"{'':10s} {'ready s':>8s} {'ws s':>8s} {'ws MB':>7s} {'fetched MB':>10s} {'fetched/ws':>10s}")
for s in ("eb-pushed", "eb-build", "pull", "pull-mkfs"):
    print(f"{s:10s} {med(s, 0):8.2f} {med(s, 1):8.2f} {med(s, 2) / 1e6:7.1f} {med(s, 3) / 1e6:10.1f} {med(s, 3) / med(s, 2):10.2f}")
for s in ("eb-pushed", "eb-build"):
    print(f"{s}: working set {med('pull', 1) / med(s, 1):.2f}x faster than pull, {med('pull-mkfs', 1) / med(s, 1):.2f}x than pull-mkfs; ready {med(s, 0):.2f} s")
EOF
