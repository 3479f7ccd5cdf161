#!/usr/bin/env bash
# bench-merge.sh: time `erofs-blockd merge` over layer images holding
# FILES files in total (default 100000).
#
# Generates three overlapping layer trees (base 60%, update 30% with
# overrides of base files and OCI whiteouts, a small top layer 10%), builds
# each with mkfs.erofs -Enoinline_data (every file referenced in place) and
# once more with mkfs defaults (inline tails: copied into the index), then
# runs merge ROUNDS times per variant (after one warm-up, page cache warm)
# and prints the median wall time, the median CPU time (user+sys; steadier
# on a shared machine) and the index size.
#
# Usage: scripts/bench-merge.sh [WORKDIR]
#   env: FILES=100000 ROUNDS=5 VARIANTS="noinline inline" KEEP=1 (keep WORKDIR)
set -euo pipefail

FILES=${FILES:-100000}
ROUNDS=${ROUNDS:-5}
VARIANTS=${VARIANTS:-"noinline inline"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/bench-merge.XXXXXX)}
mkdir -p "$WORK"
if [ -z "${KEEP:-}" ] && [ -z "${1:-}" ]; then
	trap 'rm -rf "$WORK"' EXIT
fi
export PATH=$PATH:/usr/local/go/bin

for t in mkfs.erofs go python3 bc /usr/bin/time; do
	command -v "$t" >/dev/null || { echo "missing $t (scripts/deps.sh)" >&2; exit 2; }
done

echo "== building erofs-blockd"
(cd "$ROOT" && go build -o "$WORK/erofs-blockd" ./cmd/erofs-blockd)

if [ ! -d "$WORK/l1" ]; then
	echo "== generating $FILES files in 3 layers"
	python3 - "$WORK" "$FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
def write(layer, i, size, tag):
    d = os.path.join(root, layer, "d%03d" % (i % 300), "s%02d" % (i % 11))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write((tag * (size // len(tag) + 1))[:size])
counts = {"l1": 0, "l2": 0, "l3": 0}
base = int(n * 0.6)
for i in range(base):
    write("l1", i, rng.choice([0, 100, 3000, 4096, 5000, 9000]), b"base %d " % i); counts["l1"] += 1
upd = int(n * 0.3)
for k in range(upd):
    if k % 3 == 0:   # override a base file
        i = rng.randrange(base)
    else:            # a new file
        i = base + k
    write("l2", i, rng.choice([100, 4096, 7000]), b"update %d " % i); counts["l2"] += 1
    if k % 10 == 0:  # delete a base file with an OCI whiteout
        j = rng.randrange(base)
        d = os.path.join(root, "l2", "d%03d" % (j % 300), "s%02d" % (j % 11))
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, ".wh.f%06d" % j), "wb").close()
top = n - base - upd
for k in range(top):
    write("l3", 10 * n + k, rng.choice([10, 5000]), b"top %d " % k); counts["l3"] += 1
print("layers:", counts)
EOF
fi

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

for v in $VARIANTS; do
	case $v in
	noinline) args=(-Enoinline_data) ;;
	inline) args=() ;;
	*) echo "unknown variant $v" >&2; exit 2 ;;
	esac
	layers=()
	for l in l1 l2 l3; do
		img=$WORK/$v-$l.erofs
		[ -f "$img" ] || mkfs.erofs -T0 --quiet "${args[@]}" "$img" "$WORK/$l" >/dev/null
		layers+=("$img")
	done
	echo "== $v: layers $(du -cm "${layers[@]}" | tail -1 | cut -f1) MB"
	"$WORK/erofs-blockd" merge -o "$WORK/$v-index.erofs" "${layers[@]}"
	: >"$WORK/$v.times"
	: >"$WORK/$v.cpu"
	for r in $(seq "$ROUNDS"); do
		/usr/bin/time -o "$WORK/time.out" -f '%e %U %S' \
			"$WORK/erofs-blockd" merge -q -o "$WORK/$v-index.erofs" "${layers[@]}"
		read -r e u s <"$WORK/time.out"
		echo "$e" >>"$WORK/$v.times"
		echo "$u + $s" | bc -l >>"$WORK/$v.cpu"
	done
	m=$(median <"$WORK/$v.times")
	c=$(median <"$WORK/$v.cpu")
	printf '%-9s merge of %d files: median %.2fs wall, %.2fs CPU (user+sys) over %s rounds (wall: %s); index %s KiB; load %s\n' \
		"$v" "$FILES" "$m" "$c" "$ROUNDS" "$(tr '\n' ' ' <"$WORK/$v.times")" \
		"$(($(stat -c %s "$WORK/$v-index.erofs") / 1024))" "$(cut -d' ' -f1-3 /proc/loadavg)"
done
