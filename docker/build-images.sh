#!/usr/bin/env bash
# Builds the vecrig-server and vecrig-loadgen images from binaries built on this machine,
# without pulling anything: each image is FROM scratch and holds its binary (debug info
# stripped), the shared libraries `ldd` lists for it (the dynamic loader included), the CA
# roots (for https targets) and an empty /data or /reports. glibc >= 2.34 resolves host names
# with no NSS modules to load, so service names (http://server:50051) resolve in them.
#
# For machines that can pull base images, docker/Dockerfile is the conventional multi-stage
# build of the same images (`docker compose build`); both give the same names and entrypoints.
#
# Usage: docker/build-images.sh [--no-cargo] [--bin-dir DIR] [--tag TAG]
#   --no-cargo     use the binaries already in --bin-dir (default: cargo build --release first)
#   --bin-dir DIR  where the binaries are (default: target/release)
#   --tag TAG      image tag (default: $VECRIG_TAG or latest)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_build=1
bin_dir=target/release
tag=${VECRIG_TAG:-latest}
while [ $# -gt 0 ]; do
  case "$1" in
    --no-cargo) cargo_build=0 ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift ;;
    --tag) tag=${2:?--tag needs a value}; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

command -v docker >/dev/null || { echo "docker not found" >&2; exit 1; }
command -v ldd >/dev/null || { echo "ldd not found: it lists the libraries to copy" >&2; exit 1; }

if [ "$cargo_build" = 1 ]; then
  cargo build --release -p vecrig-server -p vecrig-loadgen
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# stage NAME: the root filesystem of image NAME under $stage/NAME.
stage_rootfs() {
  local name=$1 bin="$bin_dir/vecrig-$1" root="$stage/$1"
  [ -x "$bin" ] || { echo "$bin is missing: build it (cargo build --release --workspace) or drop --no-cargo" >&2; exit 1; }
  mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc/ssl/certs"
  chmod 1777 "$root/tmp"
  if command -v objcopy >/dev/null; then
    # Line tables are for backtraces on a developer's machine; the image does without.
    objcopy --strip-debug "$bin" "$root/usr/local/bin/vecrig-$name"
  else
    cp "$bin" "$root/usr/local/bin/vecrig-$name"
  fi
  # Every library ldd resolves (`name => /path`), and the loader (a bare absolute path).
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r lib; do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  fi
  printf 'root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
}

stage_rootfs server
stage_rootfs loadgen
mkdir -p "$stage/data" "$stage/reports"

for name in server loadgen; do
  docker build --quiet -f docker/Dockerfile.local --target "$name" -t "vecrig-$name:$tag" "$stage" >/dev/null
  echo "built vecrig-$name:$tag ($(docker image inspect -f '{{.Size}}' "vecrig-$name:$tag" | awk '{printf "%.1f MB", $1/1e6}'))"
done
