#!/usr/bin/env bash
# `make images`: one image per service plus a shared base, built offline with podman
# (buildah underneath) from a Debian rootfs made by debootstrap and wheels downloaded on
# the host (installed with --no-index inside). The rootfs is cached outside the clone
# (TENSORWASM_IMAGE_CACHE, default ~/.cache/tensorwasm-images) so later builds skip it.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE=${TENSORWASM_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tensorwasm-images}
SUITE=${DEBIAN_SUITE:-bookworm}  # its python3 (3.11) is the images' interpreter
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
UV=${UV:-uv}
PODMAN=(podman --runtime=runc --cgroup-manager=cgroupfs)
SERVICES=(gateway executor dispatcher snapshot jit)
TAG=${TENSORWASM_IMAGE_TAG:-0.1.0}
# Where the images' wheels may come from: CPython 3.11 on glibc x86_64, or pure Python.
PLATFORMS=(--platform manylinux_2_36_x86_64 --platform manylinux_2_34_x86_64
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform linux_x86_64)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$SECONDS

# 1. The Debian base, once per cache.
rootfs=$CACHE/debian-$SUITE-rootfs.tar
if [ ! -f "$rootfs" ]; then
  echo "images: debootstrap $SUITE (cached in $CACHE)"
  mkdir -p "$CACHE"
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log"
  for mounted in proc sys dev/pts; do  # debootstrap unmounts these; make sure before tar
    if mountpoint -q "$root/$mounted"; then umount "$root/$mounted"; fi
  done
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -cf "$rootfs.tmp" . && mv "$rootfs.tmp" "$rootfs"
  rm -rf "$root"
fi
if ! "${PODMAN[@]}" image exists "localhost/tensorwasm/debian:$SUITE"; then
  "${PODMAN[@]}" import --quiet "$rootfs" "localhost/tensorwasm/debian:$SUITE" >/dev/null
fi

# 2. Wheels, on the host: the workspace's own, and each package's locked dependencies.
"$UV" build --quiet --all-packages --wheel --out-dir "$work/workspace" >/dev/null
download() {  # download PACKAGE DEST: PACKAGE's locked dependencies as wheels in DEST
  "$UV" export --quiet --frozen --no-dev --no-hashes --no-emit-workspace --package "$1" \
    --output-file "$work/$1.txt" >/dev/null
  python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    "${PLATFORMS[@]}" --platform any --dest "$2" -r "$work/$1.txt"
  cp "$work"/workspace/*.whl "$2/"
}
mkdir -p "$work/base/wheels"
download tensorwasm-common "$work/base/wheels/common"
cp deploy/images/Containerfile.base "$work/base/Containerfile"
"${PODMAN[@]}" build --quiet --tag localhost/tensorwasm/base:latest "$work/base" >/dev/null

for service in "${SERVICES[@]}"; do
  context=$work/$service
  mkdir -p "$context/wheels"
  download "tensorwasm-$service" "$context/wheels/service"
  cp deploy/images/Containerfile.service "$context/Containerfile"
  "${PODMAN[@]}" build --quiet --build-arg "SERVICE=$service" \
    --tag "localhost/tensorwasm/$service:$TAG" "$context" >/dev/null
done

echo "images: built in $((SECONDS - started)) s"
"${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep tensorwasm/ | sort
