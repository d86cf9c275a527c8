#!/usr/bin/env bash
# Installs what bulkhead needs to build and run on a fresh machine of this kind (Debian + rustup).
# Idempotent: every step checks before it installs. Usage: scripts/setup.sh [--with-browser]
# (`--toolchain`: only the Rust targets the build needs, for scripts/fuzz.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

# The toolchain is pinned in rust-toolchain.toml; the wasm runner needs its wasm32-wasip1 target.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  echo "setup: adding the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi
if [[ "${1:-}" == "--toolchain" ]]; then exit 0; fi

# The browser test drives Debian's Chromium (no other browser download works here).
if [[ "${1:-}" == "--with-browser" ]] && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium (Debian package)"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  # One start before the tests, so the first test's launch does not also build the font cache.
  if ! timeout 120 chromium --headless=new --no-sandbox --disable-gpu --dump-dom about:blank >/dev/null 2>&1; then
    echo "setup: warning: a first headless chromium start failed; the browser tests will say why"
  fi
fi

# The PostgreSQL store tests start their own throwaway servers from Debian's postgresql package
# (initdb and pg_ctl under /usr/lib/postgresql/*/bin; psql and pg_dump to inspect them).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v pg_dump >/dev/null 2>&1; then
  echo "setup: installing postgresql (Debian package)"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-client >/dev/null
fi

# The Docker sandbox image needs a static BusyBox (Debian's busybox-static) and a running daemon.
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  echo "setup: installing busybox-static (Debian package)"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq busybox-static >/dev/null
fi
# tests/docker_engines.rs makes the certificates of its TLS engine with the openssl CLI.
if ! command -v openssl >/dev/null 2>&1; then
  echo "setup: installing openssl (Debian package)"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl >/dev/null
fi
if command -v docker >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
  echo "setup: starting the Docker daemon"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO service docker start >/dev/null 2>&1 || ($SUDO dockerd >/tmp/dockerd.log 2>&1 &)
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
# The sandbox images (no registry: built locally; cheap when nothing changed).
if docker info >/dev/null 2>&1; then
  images/build.sh
else
  echo "setup: no Docker daemon; the docker sandbox images were not built" >&2
fi

# The API contract checks (tests/contract/check.py: schemathesis and the official openai client)
# run from a venv outside the repo, pinned by tests/contract/requirements.txt; reinstalled only
# when that file changes. BULKHEAD_VENV moves it (the black-box test reads the same variable).
VENV="${BULKHEAD_VENV:-/var/cache/bulkhead/venv}"
REQS=tests/contract/requirements.txt
if ! cmp -s "$REQS" "$VENV/installed-requirements.txt" 2>/dev/null; then
  echo "setup: installing the contract checks' Python packages into $VENV"
  if ! python3 -m venv --help >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  fi
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQS"
  cp "$REQS" "$VENV/installed-requirements.txt"
fi
