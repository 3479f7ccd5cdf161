#!/usr/bin/env bash
# bench-tar.sh (make bench-tar): tar layers used as they are.
#
# Builds one layer from this machine's /usr (SIZE bytes of files, default
# 200 MiB) as tar and tar.gz (gzip -6), then, ROUNDS times, interleaved:
#   index   erofs-blockd merge -o idx layer.tar.gz (one streaming pass:
#           tar index + gzip checkpoint index + diffID) vs
#           mkfs.erofs 1.9.4 --tar=i --ungzip --gzinfo (the reference);
#           wall and CPU time, MB/s of compressed input; index sizes.
#   rand4k  fio 4 KiB random reads (iodepth 32, RUNTIME s) inside the layer's
#           range of the device:
#             eb-gzip-cold  erofs-blockd, gzip:layer.tar.gz, fresh server
#             eb-gzip-warm  the same server again over a WARM-byte window
#                           (fits the 64 MiB decoded-span cache) after one
#                           untimed pass over that window
#             nbdkit-gzip   nbdkit --filter=gzip file layer.tar.gz (the filter
#                           decompresses the whole file first: its start-up is
#                           reported as "ready")
#             eb-tar        erofs-blockd on the plain tar (page cache warm)
# Prints medians and ratios from the same run.
#
# Usage: scripts/bench-tar.sh [WORKDIR]
#   env: SIZE=209715200 ROUNDS=3 RUNTIME=5 WARM=33554432 KEEP=1
set -euo pipefail

SIZE=${SIZE:-209715200}
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-5}
WARM=${WARM:-33554432}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-$(mktemp -d /tmp/bench-tar.XXXXXX)}
mkdir -p "$W"
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	if [ -z "${KEEP:-}" ] && [ -z "${1:-}" ]; then rm -rf "$W"; fi
}
trap cleanup EXIT
export PATH=$PATH:/usr/local/go/bin
MKFS=$(bash "$ROOT/scripts/erofs-utils.sh" --print)/mkfs.erofs
for t in go fio nbdkit python3 gzip tar /usr/bin/time "$MKFS"; do
	command -v "$t" >/dev/null || { echo "bench-tar: missing $t (make deps reference-deps)" >&2; exit 2; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "bench-tar: this fio has no nbd ioengine" >&2; exit 2; }

echo "== building erofs-blockd"
(cd "$ROOT" && go build -o "$W/erofs-blockd" ./cmd/erofs-blockd)
EB=$W/erofs-blockd

if [ ! -s "$W/layer.tar.gz" ]; then
	echo "== a layer of ~$SIZE bytes from /usr"
	python3 - "$W/list" "$SIZE" <<'EOF'
import os, sys
out, want = sys.argv[1], int(sys.argv[2])
tot, names = 0, []
for d, ds, fs in os.walk("/usr"):
    ds.sort()
    for f in sorted(fs):
        p = os.path.join(d, f)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        names.append(p[1:])
        tot += st.st_size if os.path.isfile(p) and not os.path.islink(p) else 0
        if tot >= want:
            break
    if tot >= want:
        break
open(out, "w").write("\n".join(names) + "\n")
EOF
	tar -C / --no-recursion -cf "$W/layer.tar" -T "$W/list"
	gzip -6 -k "$W/layer.tar"
fi
TARSZ=$(stat -c %s "$W/layer.tar")
GZSZ=$(stat -c %s "$W/layer.tar.gz")
echo "   tar $TARSZ bytes, gzip $GZSZ bytes"

RES=$W/results.tsv
: >"$RES"
tm() { # label cmd... -> appends "index label wall cpu"
	local l=$1
	shift
	/usr/bin/time -f "%e %U %S" -o "$W/time.out" "$@" >/dev/null 2>"$W/err.out" || { cat "$W/err.out" >&2; exit 1; }
	read -r e u s <"$W/time.out"
	echo "index $l $e $(echo "$u + $s" | bc)" >>"$RES"
}

fiojob() { # uri offset size runtime -> prints iops
	fio --name=w --ioengine=nbd --uri="$1" --offset="$2" --size="$3" --time_based --runtime="$4" \
		--group_reporting --output-format=json --randrepeat=0 --norandommap --rw=randread \
		--bs=4k --iodepth=32 --numjobs=1 | python3 -c '
import json, sys
t = sys.stdin.read()
j = json.loads(t[t.find("{"):])
if j["jobs"][0]["error"]:
    sys.exit("fio error %d" % j["jobs"][0]["error"])
print(j["jobs"][0]["read"]["iops"])'
}

waitsock() { for _ in $(seq 4000); do [ -S "$1" ] && return 0; sleep 0.005; done; echo "no socket $1" >&2; exit 1; }

layer_range() { # index -> "offset size" of device 1
	"$EB" inspect --json "$1" | python3 -c '
import json, sys
j = json.load(sys.stdin)
bs = j["block_size"]
d = j["devices"][0]
print((d.get("composed_uniaddr") or d["uniaddr"]) * bs, d["blocks"] * bs)'
}

for r in $(seq "$ROUNDS"); do
	echo "== round $r"
	rm -f "$W"/idx.erofs "$W"/layer.tar.gz.zinfo* "$W"/ref.erofs "$W"/ref.zinfo
	tm eb-merge "$EB" merge -q -o "$W/idx.erofs" "$W/layer.tar.gz"
	tm mkfs-tar-i "$MKFS" --tar=i --ungzip --gzinfo="$W/ref.zinfo" "$W/ref.erofs" "$W/layer.tar.gz"
	read -r OFF LEN < <(layer_range "$W/idx.erofs")
	for s in eb-gzip nbdkit-gzip eb-tar; do
		sock=$W/s.sock
		rm -f "$sock"
		t0=$(date +%s.%N)
		case $s in
		eb-gzip) "$EB" serve --listen "unix:$sock" --blob "$W/idx.erofs" --blob "gzip:$W/layer.tar.gz" &>"$W/serve.err" & ;;
		eb-tar) "$EB" serve --listen "unix:$sock" --blob "$W/idx.erofs" --blob "$W/layer.tar" &>"$W/serve.err" & ;;
		nbdkit-gzip) nbdkit -f -r -U "$sock" --filter=gzip file "$W/layer.tar.gz" 2>"$W/serve.err" & ;;
		esac
		pid=$!
		PIDS+=("$pid")
		waitsock "$sock"
		uri="nbd+unix:///?socket=$sock"
		case $s in
		nbdkit-gzip)
			# The filter exports the uncompressed tar alone; time to the first byte includes its decompression.
			nbdinfo --size "$uri" >/dev/null
			cat "$W/layer.tar" >/dev/null
			echo "ready $s $(echo "$(date +%s.%N) - $t0" | bc)" >>"$RES"
			echo "rand4k $s $(fiojob "$uri" 0 "$LEN" "$RUNTIME")" >>"$RES"
			;;
		eb-gzip)
			echo "rand4k $s-cold $(fiojob "$uri" "$OFF" "$LEN" "$RUNTIME")" >>"$RES"
			fiojob "$uri" "$OFF" "$WARM" 2 >/dev/null
			echo "rand4k $s-warm $(fiojob "$uri" "$OFF" "$WARM" "$RUNTIME")" >>"$RES"
			;;
		eb-tar)
			cat "$W/layer.tar" >/dev/null
			echo "rand4k $s $(fiojob "$uri" "$OFF" "$LEN" "$RUNTIME")" >>"$RES"
			;;
		esac
		kill "$pid"
		wait "$pid" 2>/dev/null || true
	done
done

IDXSZ=$(stat -c %s "$W/idx.erofs")
ZSZ=$(($(stat -c %s "$W/layer.tar.gz.zinfo") + $(stat -c %s "$W/layer.tar.gz.zinfo.meta")))
REFSZ=$(stat -c %s "$W/ref.erofs")
REFZ=$(stat -c %s "$W/ref.zinfo")
python3 - "$RES" "$GZSZ" "$TARSZ" "$IDXSZ" "$ZSZ" "$REFSZ" "$REFZ" <<'EOF'
import statistics as st, sys
res, gz, tar, idx, z, ref, refz = sys.argv[1], *map(int, sys.argv[2:])
rows = {}
for line in open(res):
    k, l, *v = line.split()
    rows.setdefault((k, l), []).append([float(x) for x in v])
med = lambda k, l, i=0: st.median(r[i] for r in rows[(k, l)])
n = len(rows[("index", "eb-merge")])
print(f"layer: tar {tar} bytes, gzip {gz} bytes; {n} rounds, medians")
for l in ("eb-merge", "mkfs-tar-i"):
    w, c = med("index", l), med("index", l, 1)
    print(f"index build {l:11s} wall {w:6.2f} s  cpu {c:6.2f} s  {gz / w / 1e6:6.1f} MB/s of gzip input")
print(f"  erofs-blockd / mkfs.erofs: wall {med('index', 'mkfs-tar-i') / med('index', 'eb-merge'):.2f}x faster, "
      f"cpu {med('index', 'mkfs-tar-i', 1) / med('index', 'eb-merge', 1):.2f}x less")
print(f"index size: erofs-blockd {idx} B metadata + {z} B gzip index = {100 * (idx + z) / gz:.2f}% of the layer; "
      f"mkfs.erofs {ref} B + zinfo {refz} B = {100 * (ref + refz) / gz:.2f}%")
print(f"nbdkit gzip filter ready (decompresses first): {med('ready', 'nbdkit-gzip'):.2f} s")
for l in ("eb-gzip-cold", "eb-gzip-warm", "nbdkit-gzip", "eb-tar"):
    print(f"rand4k {l:13s} {med('rand4k', l):9.0f} IOPS")
c, w, nk, t = (med("rand4k", l) for l in ("eb-gzip-cold", "eb-gzip-warm", "nbdkit-gzip", "eb-tar"))
print(f"ratios: gzip cold / nbdkit-gzip {c / nk:.2f}x, gzip warm / nbdkit-gzip {w / nk:.2f}x, "
      f"gzip warm / plain tar {w / t:.2f}x, gzip cold / plain tar {c / t:.3f}x")
EOF
