#!/usr/bin/env bash
# Fuzzes one target (or `all`, one after another) for SECONDS each on its committed corpus plus
# the seeds, at the lowest CPU priority. New inputs that reach new code are added to
# fuzz/corpus/TARGET; a crash is saved under fuzz/artifacts/TARGET/ and ends the run (exit 1).
#
#   scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]   e.g. scripts/fuzz.sh config_load 1800
#   scripts/fuzz.sh all SECONDS                            every target, SECONDS each
#   scripts/fuzz.sh --list
#   FUZZ_CMIN=1 scripts/fuzz.sh TARGET SECONDS             afterwards, minimise the corpus in place
#
# Installs cargo-fuzz from crates.io if it is missing. The toolchain is stable: cargo fuzz's
# nightly flags are allowed with RUSTC_BOOTSTRAP=1, and no sanitizer is used (`-s none`: the
# code under test forbids `unsafe`; coverage instrumentation is what finds the bugs).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
# The instrumented build is a different build of the whole tree: never share the workspace's
# target dir with it (`.ci/run` sets FUZZ_TARGET_DIR to a cache outside the clone).
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"
targets() { sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -v '^bulkhead-fuzz$'; }
if [[ "${1:-}" == "--list" ]]; then targets; exit 0; fi
if [[ $# -lt 2 ]]; then
  echo "usage: scripts/fuzz.sh TARGET|all SECONDS [libFuzzer flags...]  (targets: $(targets | tr '\n' ' '))" >&2
  exit 2
fi
target="$1" seconds="$2"
shift 2
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (cargo install --locked cargo-fuzz)" >&2
  cargo install --locked cargo-fuzz
fi
# The host crate embeds the wasm runner (host/build.rs builds it for wasm32-wasip1).
../scripts/setup.sh --toolchain
# store_segment and audit_verify write a real store and log per input: on tmpfs their fsyncs
# cost nothing, so they run far more inputs (83/s on this disk, see docs/fuzzing.md).
if [[ -z "${TMPDIR:-}" && -d /dev/shm && -w /dev/shm ]]; then export TMPDIR=/dev/shm; fi
python3 seeds.py
fuzz_one() {
  local t="$1"
  shift
  mkdir -p "corpus/$t" "seeds/$t"
  # -timeout: one input taking longer is a hang; -rss_limit_mb: a memory blow-up is a finding too.
  nice -n 19 cargo fuzz run -s none "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@"
  if [[ "${FUZZ_CMIN:-0}" == "1" ]]; then
    nice -n 19 cargo fuzz cmin -s none "$t" "corpus/$t"
  fi
}
if [[ "$target" == "all" ]]; then
  for t in $(targets); do fuzz_one "$t" "$@"; done
  exit 0
fi
targets | grep -qx "$target" || { echo "unknown fuzz target $target (scripts/fuzz.sh --list)" >&2; exit 2; }
fuzz_one "$target" "$@"
