#!/usr/bin/env bash
# bench-verify.sh: time `erofs-blockd verify --content IMAGE` against
# `fsck.erofs --extract IMAGE` (erofs-utils 1.5: --extract without a
# directory decodes and checks every file's data without writing it).
#
# Builds a generated tree (default 20000 files, ~250 MB, mixed sizes, half
# compressible), makes a plain and an -zlz4 image, then runs both tools
# interleaved for ROUNDS rounds (after one warm-up each, page cache warm)
# and prints the medians and the ratio verify/fsck.
#
# Usage: scripts/bench-verify.sh [WORKDIR]
#   env: FILES=20000 ROUNDS=5 VARIANTS="plain lz4" KEEP=1 (keep WORKDIR)
set -euo pipefail

FILES=${FILES:-20000}
ROUNDS=${ROUNDS:-5}
VARIANTS=${VARIANTS:-"plain lz4"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/bench-verify.XXXXXX)}
mkdir -p "$WORK"
if [ -z "${KEEP:-}" ] && [ -z "${1:-}" ]; then
	trap 'rm -rf "$WORK"' EXIT
fi
export PATH=$PATH:/usr/local/go/bin

for t in mkfs.erofs fsck.erofs go python3; do
	command -v "$t" >/dev/null || { echo "missing $t (scripts/deps.sh)" >&2; exit 2; }
done

echo "== building erofs-blockd"
(cd "$ROOT" && go build -o "$WORK/erofs-blockd" ./cmd/erofs-blockd)

TREE=$WORK/tree
if [ ! -d "$TREE" ]; then
	echo "== generating $FILES files in $TREE"
	python3 - "$TREE" "$FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
words = [b"erofs ", b"block ", b"device ", b"nbd ", b"layer ", b"blob ", b"\n", b"chunk "]
def text(k):
    out = bytearray()
    while len(out) < k:
        out += rng.choice(words)
    return bytes(out[:k])
total = 0
for i in range(n):
    d = os.path.join(root, "d%03d" % (i % 200), "s%02d" % (i % 7))
    os.makedirs(d, exist_ok=True)
    if i % 50 == 0:
        size = rng.randint(200 << 10, 500 << 10)
    else:
        size = rng.choice([0, 100, 3000, 4096, 5000, 8000, 12000, 20000])
    data = os.urandom(size) if i % 2 else text(size)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(data)
    total += size
print("tree: %d files, %d bytes" % (n, total))
EOF
fi

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }

for v in $VARIANTS; do
	img=$WORK/$v.erofs
	case $v in
	plain) args=() ;;
	lz4) args=(-zlz4) ;;
	lz4hc) args=(-zlz4hc) ;;
	*) echo "unknown variant $v" >&2; exit 2 ;;
	esac
	if [ ! -f "$img" ]; then
		echo "== mkfs.erofs ${args[*]:-} ($v)"
		SOURCE_DATE_EPOCH=0 mkfs.erofs -T0 --quiet "${args[@]}" "$img" "$TREE" >/dev/null
	fi
	echo "== $v: $(du -m "$img" | cut -f1) MB image"
	# Warm-up (and correctness: both must accept the image).
	"$WORK/erofs-blockd" verify --content "$img" >/dev/null
	fsck.erofs --extract "$img" >/dev/null 2>&1
	: >"$WORK/$v.verify"
	: >"$WORK/$v.fsck"
	for r in $(seq "$ROUNDS"); do
		t0=$(now)
		"$WORK/erofs-blockd" verify --content "$img" >/dev/null
		t1=$(now)
		fsck.erofs --extract "$img" >/dev/null 2>&1
		t2=$(now)
		echo "$t1 - $t0" | bc -l >>"$WORK/$v.verify"
		echo "$t2 - $t1" | bc -l >>"$WORK/$v.fsck"
	done
	mv=$(median <"$WORK/$v.verify")
	mf=$(median <"$WORK/$v.fsck")
	printf '%-6s verify --content: median %.3fs   fsck.erofs --extract: median %.3fs   ratio verify/fsck %.2f   (%s rounds)\n' \
		"$v" "$mv" "$mf" "$(echo "$mv / $mf" | bc -l)" "$ROUNDS"
done
