#!/usr/bin/env bash
# The HTTP API contract against the real binary on loopback: schemathesis generates requests from
# docs/openapi.json (no 5xx, no response outside the document's schemas, statuses and content
# types), and the official openai Python client talks to the gateway, streaming and not.
# Installs both from PyPI into a venv under the cargo target dir (or $CONTRACT_VENV) once.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
venv="${CONTRACT_VENV:-$target/contract-venv}"
if [[ ! -x "$venv/bin/st" || ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check schemathesis openai
fi
# The binary the test suite runs (built with the test build's features: no second build).
cargo test --quiet -p bulkhead --test blackbox --no-run
bin="$target/debug/bulkhead"

dir="$(mktemp -d)"
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
export CONTRACT_TENANT_TOKEN="contract-tenant-7d3f9a1c5e8b2d6f4a9c1e7b3d5f8a2c"
export CONTRACT_OPS_TOKEN="contract-ops-2b8e5d1f9c3a7e4b6d2f8a1c5e9b3d7f"
cat > "$dir/bulkhead.json5" <<JSON
{
  gateway: { bind: "127.0.0.1:0", maxBodyBytes: 65536,
             operators: [ { id: "ops", token: { env: "CONTRACT_OPS_TOKEN" }, role: "admin" } ],
             auth: { maxFailures: 1000000 } },
  stateDir: "state", store: { mode: "memory" },
  models: { providers: { scripted: { api: "scripted" } } },
  tenants: [ { id: "acme", apiTokens: [ { env: "CONTRACT_TENANT_TOKEN" } ] } ],
  agents: { list: [ { id: "demo", tenant: "acme", model: "scripted/demo" } ] },
}
JSON
"$bin" serve --config "$dir/bulkhead.json5" >"$dir/stdout" 2>"$dir/stderr" &
pid=$!
for _ in $(seq 100); do
  grep -q '^listening on ' "$dir/stdout" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/stderr" >&2; echo "contract: the gateway did not start" >&2; exit 1; }
  sleep 0.1
done
base="$(sed -n 's/^listening on //p' "$dir/stdout" | head -1)"
[[ -n "$base" ]] || { cat "$dir/stderr" >&2; echo "contract: the gateway did not start" >&2; exit 1; }

checks="not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
run_st() {
  "$venv/bin/st" run docs/openapi.json --url "$base" --checks "$checks" \
    --max-examples "${CONTRACT_EXAMPLES:-50}" --seed 1 "$@"
}
# Tenant routes with a tenant token, operator routes with an operator token.
run_st --include-path-regex '^/v1/' -H "Authorization: Bearer $CONTRACT_TENANT_TOKEN"
# POST /admin/reload answers 501 until issue 14's live reload lands (a 5xx by design): excluded.
run_st --include-path-regex '^/(admin/|metrics$)' --exclude-path /admin/reload \
  -H "Authorization: Bearer $CONTRACT_OPS_TOKEN"
run_st --include-path-regex '^/(healthz)?$'
"$venv/bin/python" scripts/openai_client.py "$base/v1" "$CONTRACT_TENANT_TOKEN"
if grep -q 'panicked' "$dir/stderr"; then
  grep 'panicked' "$dir/stderr" >&2
  echo "contract: the gateway panicked" >&2
  exit 1
fi
echo "contract: schemathesis and the openai client pass"
