#!/usr/bin/env bash
# Runs every test: unit tests, the black-box suite against the real binary (fake model servers,
# WebSocket, real headless Chromium), sandbox tests. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --with-browser
cargo test --workspace "$@"
