#!/usr/bin/env bash
# make demo: build two layer images from the bundled sample tree (a base and
# an update that overrides a file and deletes one with a whiteout), merge them
# into a metadata-only index with `erofs-blockd merge`, serve index + layers,
# mount it through the host kernel (nbdfuse + loop + EROFS), show the tree,
# check every file's md5 against the expected merged tree, tear down.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
BIN=${BIN:-$PWD/bin/erofs-blockd}
W=$(mktemp -d /tmp/erofs-blockd-demo.XXXXXX)
SRC=$PWD/sample
srv=""; fuse=""
cleanup() {
  set +e
  mountpoint -q "$W/mnt" && umount "$W/mnt"
  [ -n "$fuse" ] && { mountpoint -q "$W/fuse" && umount "$W/fuse"; kill "$fuse" 2>/dev/null; wait "$fuse" 2>/dev/null; }
  [ -n "$srv" ] && kill -TERM "$srv" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "1. Build two layer images from $SRC and merge them into one metadata-only index"
# base: the sample tree, data block-aligned (-Enoinline_data) so the index can
# point into it. update: overrides etc/hostname, adds etc/motd, deletes a
# record with an OCI whiteout; built with mkfs defaults (inline tails, which
# merge copies into the index).
mkdir -p "$W/update/etc" "$W/update/var/lib/app/data"
printf 'merged-host\n' > "$W/update/etc/hostname"
printf 'Welcome to the merged image\n' > "$W/update/etc/motd"
: > "$W/update/var/lib/app/data/.wh.record-11.txt"
chmod -R u=rwX,go=rX "$W/update"
# The tree the kernel must show: the sample with the update applied.
cp -a "$SRC" "$W/expected"
cp "$W/update/etc/hostname" "$W/update/etc/motd" "$W/expected/etc/"
rm "$W/expected/var/lib/app/data/record-11.txt"
mkfs.erofs -T0 --quiet -Enoinline_data "$W/base.erofs" "$SRC"
mkfs.erofs -T0 --quiet "$W/update.erofs" "$W/update"
"$BIN" merge -o "$W/index.erofs" "$W/base.erofs" "$W/update.erofs"
BLOBS=(--blob "$W/index.erofs" --blob "$W/base.erofs" --blob "$W/update.erofs")
ls -l "$W"/*.erofs

step "2. Inspect the index: one device-table slot per layer, tagged with the layer's UUID"
"$BIN" inspect "${BLOBS[@]}"
"$BIN" verify --content "${BLOBS[@]}"

step "3. Serve the composed device (index + layers) over NBD"
"$BIN" serve "${BLOBS[@]}" --listen "unix:$W/nbd.sock" > "$W/serve.log" 2>&1 &
srv=$!
for _ in $(seq 100); do [ -S "$W/nbd.sock" ] && break; sleep 0.1; done
cat "$W/serve.log"
nbdinfo "nbd+unix:///?socket=$W/nbd.sock" | sed -n '1,12p'

step "4. Mount it with the kernel's EROFS driver (nbdfuse exposes the NBD export as a file)"
mkdir -p "$W/fuse" "$W/mnt"
nbdfuse -r "$W/fuse" --unix "$W/nbd.sock" &
fuse=$!
for _ in $(seq 100); do [ -e "$W/fuse/nbd" ] && break; sleep 0.1; done
mount -t erofs -o ro "$W/fuse/nbd" "$W/mnt"
findmnt "$W/mnt" || true
(cd "$W/mnt" && ls -lR . | head -60)

step "5. Compare every file's md5 with the expected merged tree"
EXP=$W/expected
(cd "$EXP" && find . -type f -print0 | sort -z | xargs -0 md5sum) > "$W/want.md5"
(cd "$W/mnt" && md5sum -c --quiet "$W/want.md5") && echo "md5: all $(wc -l < "$W/want.md5") files match"
(cd "$EXP" && find . -printf '%y %m %P %l\n' | sort) > "$W/want.tree"
(cd "$W/mnt" && find . -printf '%y %m %P %l\n' | sort) > "$W/got.tree"
diff "$W/want.tree" "$W/got.tree" && echo "tree: types, modes and symlink targets match"
"$W/mnt/usr/bin/hello"
cat "$W/mnt/etc/hostname" "$W/mnt/etc/motd"

step "6. Tear down"
umount "$W/mnt"
umount "$W/fuse"; wait "$fuse" || true; fuse=""
kill -TERM "$srv"; wait "$srv"; echo "server exited with status $?"; srv=""
echo "demo OK"
