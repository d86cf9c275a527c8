#!/usr/bin/env bash
# Builds bulkhead's sandbox images locally (no registry): the runner natively and statically,
# then `bulkhead/sandbox:base` FROM scratch with it and a static BusyBox.
# Usage: images/build.sh        (idempotent; Docker's layer cache makes a rebuild cheap)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${BULKHEAD_SANDBOX_IMAGE:-bulkhead/sandbox:base}"
TRIPLE=x86_64-unknown-linux-gnu
# Its own target dir: the static RUSTFLAGS must not invalidate the workspace's normal build.
target="${CARGO_TARGET_DIR:-target}/runner-static"

# Static = an ELF without a program interpreter (readelf comes with gcc's binutils).
is_static() { [[ -f "$1" ]] && ! readelf -l "$1" 2>/dev/null | grep -q 'program interpreter'; }

BUSYBOX="${BUSYBOX:-/bin/busybox}"
if ! is_static "$BUSYBOX"; then
  echo "images/build.sh: $BUSYBOX is not a static BusyBox (install Debian's busybox-static)" >&2
  exit 1
fi

echo "images: building the sandbox runner ($TRIPLE, static)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet -p sandbox-runner \
  --bin sandbox-runner --target "$TRIPLE" --target-dir "$target"
runner="$target/$TRIPLE/release/sandbox-runner"
if ! is_static "$runner"; then
  echo "images/build.sh: $runner is not statically linked" >&2
  exit 1
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp images/base/Dockerfile images/base/passwd images/base/group "$ctx/"
cp "$BUSYBOX" "$ctx/busybox"
cp "$runner" "$ctx/sandbox-runner"
strip "$ctx/sandbox-runner" 2>/dev/null || true
chmod 0755 "$ctx/busybox" "$ctx/sandbox-runner"
chmod 0644 "$ctx/passwd" "$ctx/group"

echo "images: building $IMAGE"
# The classic builder needs no registry for FROM scratch; --network none keeps RUN steps offline.
DOCKER_BUILDKIT=0 docker build --quiet --network none -t "$IMAGE" "$ctx" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "images: $IMAGE is $((size / 1024)) KiB"
