#!/usr/bin/env bash
# Fetches and unpacks the Debian 6.12 (bookworm-backports) kernel that the
# QEMU guest tests boot. Idempotent; needs root on Debian 12 (it may add the
# backports suite to apt and install the few host packages the guest needs).
#
#   scripts/vm/kernel.sh            # fetch into $EROFS_BLOCKD_VM_CACHE
#   scripts/vm/kernel.sh --print    # print the kernel dir (no network)
#
# The tests that boot the guest live in internal/vmtest (see its package doc)
# and nbd/kernel (TestGuestAttach); they fail, rather than skip, when this has
# not run, unless EROFS_BLOCKD_SKIP_VM=1.
#
# Result: $EROFS_BLOCKD_VM_CACHE/linux-image-<ver>/{boot/vmlinuz-*,lib/modules/*}
# and a symlink $EROFS_BLOCKD_VM_CACHE/current pointing at it, which is what
# internal/vmtest looks for.
set -euo pipefail

cache=${EROFS_BLOCKD_VM_CACHE:-/var/cache/erofs-blockd-vm}
# The kernel series the guest uses; the exact package is resolved with apt-cache
# unless EROFS_BLOCKD_VM_KERNEL_PKG pins it (e.g. linux-image-6.12.95+deb12-amd64).
series=${EROFS_BLOCKD_VM_SERIES:-6.12}
pkg=${EROFS_BLOCKD_VM_KERNEL_PKG:-}

if [ "${1:-}" = "--print" ]; then
  echo "$cache/current"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive

# Host tools the harness uses (checked even when the kernel is cached: CI may
# restore the cache onto a fresh machine).
need=()
for p in qemu-system-x86 busybox-static cpio xz-utils kmod erofs-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "vm-kernel: installing ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -z "$pkg" ] && [ -e "$cache/current/.complete" ]; then
  echo "vm-kernel: already in $(readlink -f "$cache/current")"
  exit 0
fi
if [ -n "$pkg" ] && [ -e "$cache/$pkg/.complete" ]; then
  ln -sfn "$pkg" "$cache/current"
  echo "vm-kernel: already in $cache/$pkg"
  exit 0
fi

# bookworm-backports, from the same archive apt already uses (never a
# built-in host name: scripts/apt-archive.sh reads the apt configuration).
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  . "$(cd "$(dirname "$0")/.." && pwd)/apt-archive.sh"
  if ! uri=$(apt_archive_uri bookworm); then
    echo "vm-kernel: cannot add bookworm-backports: apt has no 'deb' source for bookworm to take the archive from" >&2
    exit 1
  fi
  key=$(apt_archive_keyring bookworm)
  echo "vm-kernel: adding bookworm-backports from $uri"
  echo "deb ${key:+[signed-by=$key] }$uri bookworm-backports main" > /etc/apt/sources.list.d/backports.list
fi
apt-get update -qq

if [ -z "$pkg" ]; then
  # Newest linux-image-<series>.N+debNN-amd64 (not -unsigned, not -dbg, not -rt/-cloud).
  pkg=$(apt-cache search --names-only "^linux-image-${series//./\\.}\\.[0-9]+\\+deb[0-9]+-amd64\$" \
        | awk '{print $1}' | sort -V | tail -n1)
  if [ -z "$pkg" ]; then
    echo "vm-kernel: no linux-image-${series}.*-amd64 in apt; is bookworm-backports reachable?" >&2
    exit 1
  fi
fi

dest="$cache/$pkg"
if [ ! -e "$dest/.complete" ]; then
  echo "vm-kernel: downloading $pkg"
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.dl.XXXXXX")
  # apt-get download writes as the _apt user when it can.
  if id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq "$pkg")
  deb=$(ls "$tmp"/*.deb)
  mkdir -p "$tmp/x"
  dpkg -x "$deb" "$tmp/x"
  ls "$tmp"/x/boot/vmlinuz-* >/dev/null
  # The package leaves modules.dep to its postinst; generate it here so the
  # harness can resolve module dependencies.
  for kdir in "$tmp"/x/lib/modules/*; do
    depmod -b "$tmp/x" "$(basename "$kdir")"
  done
  echo "$pkg" > "$tmp/x/.package"
  touch "$tmp/x/.complete"
  rm -rf "$dest"
  mv "$tmp/x" "$dest"
fi
ln -sfn "$pkg" "$cache/current"
echo "vm-kernel: $pkg in $dest"
