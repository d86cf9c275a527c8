#!/usr/bin/env bash
# Installs what bulkhead needs to build and run on a fresh machine of this kind (Debian + rustup).
# Idempotent: every step checks before it installs. Usage: scripts/setup.sh [--with-browser]
set -euo pipefail
cd "$(dirname "$0")/.."

# The toolchain is pinned in rust-toolchain.toml; the wasm runner needs its wasm32-wasip1 target.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  echo "setup: adding the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi

# The browser test drives Debian's Chromium (no other browser download works here).
if [[ "${1:-}" == "--with-browser" ]] && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium (Debian package)"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
