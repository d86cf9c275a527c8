#!/usr/bin/env bash
# Runs the gateway on config/bulkhead.json5 (or $BULKHEAD_CONFIG / --config PATH).
# The default config serves a demo tenant on the offline scripted provider; its API token is
# $BULKHEAD_DEMO_TOKEN, else a random one made once and kept in .bulkhead-demo.token (the gateway
# refuses tokens with less than 128 bits of entropy).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [[ -z "${BULKHEAD_DEMO_TOKEN:-}" ]]; then
  if [[ ! -s .bulkhead-demo.token ]]; then
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > .bulkhead-demo.token)
  fi
  BULKHEAD_DEMO_TOKEN="$(cat .bulkhead-demo.token)"
  token_hint="the contents of .bulkhead-demo.token"
else
  token_hint="\$BULKHEAD_DEMO_TOKEN"
fi
export BULKHEAD_DEMO_TOKEN
# The default config encrypts transcripts to a master key kept outside the state directory.
if [[ ! -f .bulkhead-master.key ]]; then
  cargo run --release --quiet -p bulkhead -- keys init --out .bulkhead-master.key
fi
echo "web chat: http://127.0.0.1:7878/  (token: $token_hint)"
exec cargo run --release --quiet -p bulkhead -- serve "$@"
