#!/usr/bin/env bash
# Runs the gateway on config/bulkhead.json5 (or $BULKHEAD_CONFIG / --config PATH).
# The default config serves a demo tenant on the offline scripted provider; its API token is
# $BULKHEAD_DEMO_TOKEN, set here to "demo-token" unless you set it yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export BULKHEAD_DEMO_TOKEN="${BULKHEAD_DEMO_TOKEN:-demo-token}"
# The default config encrypts transcripts to a master key kept outside the state directory.
if [[ ! -f .bulkhead-master.key ]]; then
  cargo run --release --quiet -p bulkhead -- keys init --out .bulkhead-master.key
fi
echo "web chat: http://127.0.0.1:7878/  (token: \$BULKHEAD_DEMO_TOKEN)"
exec cargo run --release --quiet -p bulkhead -- serve "$@"
