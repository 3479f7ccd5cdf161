#!/usr/bin/env bash
# Installs every Debian package the build, demo, tests and benchmarks need.
# Idempotent; safe to run on a fresh Debian 12 machine as root.
set -euo pipefail
want=(erofs-utils libnbd-bin fuse3 nbdkit qemu-utils kmod e2fsprogs
      xxd fio attr bc python3 time
      docker-registry nginx-light apache2-utils openssl curl skopeo
      libarchive-tools zstd pigz umoci)
if [ "${1:-}" = "--vm" ] || [ "${1:-}" = "--all" ]; then
  want+=(qemu-system-x86 busybox-static cpio xz-utils)
fi
if [ "${1:-}" = "--all" ]; then
  want+=(prometheus)
fi
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
