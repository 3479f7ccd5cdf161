#!/usr/bin/env bash
# Builds the reference erofs-utils (mkfs.erofs, fsck.erofs, dump.erofs) from
# Debian's source package, once, into a prefix outside the repository:
#
#   scripts/erofs-utils.sh            # build unless $prefix/bin already has it
#   scripts/erofs-utils.sh --print    # print the bin directory (no network)
#
# Debian 12 ships erofs-utils 1.5; the corpus tests (e2e/corpus_test.go) need
# 1.9.x (tar modes, rebuild mode, 48-bit, metabox, every compressor). The
# source package comes from the suite in $EROFS_UTILS_SUITES (default: sid)
# of the archive the machine's apt configuration already uses (see
# scripts/apt-archive.sh); the deb-src entry lives in a private apt state
# directory, so the system's apt configuration and lists are left alone.
# Build dependencies are installed from the machine's own release.
#
# Knobs: EROFS_UTILS_VERSION (default 1.9.4), EROFS_UTILS_PREFIX
# (default /opt/erofs-utils-$version), EROFS_UTILS_SUITES.
set -euo pipefail

version=${EROFS_UTILS_VERSION:-1.9.4}
prefix=${EROFS_UTILS_PREFIX:-/opt/erofs-utils-$version}
suites=${EROFS_UTILS_SUITES:-sid}

if [ "${1:-}" = "--print" ]; then
  echo "$prefix/bin"
  exit 0
fi

# One build at a time (parallel test runs and helpers may all ask for it);
# the check for an existing build below runs after the lock is taken.
exec 9>"/tmp/.erofs-utils-$version.lock"
flock 9

# What the corpus needs to be built in; checked against the "available
# compressors" line of `mkfs.erofs --version`.
compressors=(lz4 lz4hc lzma deflate libdeflate zstd)

have() {
  local b=$prefix/bin/mkfs.erofs out avail c
  [ -x "$b" ] && [ -x "$prefix/bin/fsck.erofs" ] && [ -x "$prefix/bin/dump.erofs" ] || return 1
  out=$("$b" --version 2>&1) || return 1
  grep -q "^mkfs.erofs (erofs-utils) $version\$" <<<"$out" || return 1
  avail=" $(sed -n 's/^available compressors: //p' <<<"$out" | tr -d ',') "
  for c in "${compressors[@]}"; do
    [[ $avail == *" $c "* ]] || { echo "erofs-utils: $b lacks $c" >&2; return 1; }
  done
}

if have; then
  echo "erofs-utils: $version already in $prefix/bin"
  exit 0
fi

here=$(cd "$(dirname "$0")" && pwd)
. "$here/apt-archive.sh"
uri=$(apt_archive_uri) || exit 1
key=$(apt_archive_keyring)
[ -n "$key" ] || key=/usr/share/keyrings/debian-archive-keyring.gpg

export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)

deps=(build-essential dpkg-dev autoconf automake libtool pkgconf
      liblz4-dev liblzma-dev libzstd-dev libdeflate-dev zlib1g-dev uuid-dev
      libselinux1-dev libxxhash-dev libssl-dev)
missing=()
for p in "${deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "erofs-utils: installing build dependencies ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d /var/tmp/erofs-utils-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
# apt's downloads run as _apt, which must reach the directories.
chmod 755 "$work"
mkdir -p "$work/apt/lists/partial" "$work/src"
: > "$work/apt/sources.list"
for s in $suites; do
  echo "deb-src [signed-by=$key] $uri $s main" >> "$work/apt/sources.list"
done
apt_opts=(-o "Dir::State::Lists=$work/apt/lists"
          -o "Dir::Etc::SourceList=$work/apt/sources.list"
          -o "Dir::Etc::SourceParts=$work/apt/none"
          -o "Dir::Cache=$work/apt/cache")
mkdir -p "$work/apt/cache/archives/partial"
if id _apt >/dev/null 2>&1; then chown -R _apt "$work/apt/lists" "$work/src"; fi
echo "erofs-utils: fetching source package lists ($suites) from $uri"
apt-get "${apt_opts[@]}" update -qq
pkgver=$(apt-cache "${apt_opts[@]}" showsrc erofs-utils 2>/dev/null \
         | awk '/^Version:/ {print $2}' | grep -E "^(1:)?${version//./\\.}-" | sort -V | tail -n1 || true)
if [ -z "$pkgver" ]; then
  echo "erofs-utils: no erofs-utils $version source package in suites '$suites' of $uri;" \
       "available: $(apt-cache "${apt_opts[@]}" showsrc erofs-utils 2>/dev/null | awk '/^Version:/ {printf "%s ", $2}')" >&2
  echo "erofs-utils: set EROFS_UTILS_SUITES or EROFS_UTILS_VERSION" >&2
  exit 1
fi
(cd "$work/src" && apt-get "${apt_opts[@]}" source -qq "erofs-utils=$pkgver" >/dev/null)
srcdir=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name "erofs-utils-*" | head -n1)
[ -n "$srcdir" ] || { echo "erofs-utils: apt-get source left no source tree" >&2; exit 1; }

echo "erofs-utils: building $pkgver"
cd "$srcdir"
./autogen.sh >/dev/null 2>&1
./configure -q --prefix="$prefix" --enable-multithreading --enable-lzma \
  --with-libzstd --with-libdeflate --with-selinux \
  --disable-fuse >/dev/null
make -s -j"$(nproc)" >/dev/null 2>&1 || make -j"$(nproc)"
rm -rf "$prefix.tmp"
make -s install prefix="$prefix.tmp" >/dev/null
rm -rf "$prefix"
mv "$prefix.tmp" "$prefix"
have || { echo "erofs-utils: built binaries in $prefix/bin fail the checks" >&2; exit 1; }
echo "erofs-utils: $pkgver in $prefix/bin ($(( $(date +%s) - start ))s)"
