#!/usr/bin/env bash
# The whole test suite on a fresh machine: the test bed (real llama-server + model, cached), formatting,
# lints, unit tests, and integration tests against the simulator and the real server.
set -euo pipefail
cd "$(dirname "$0")/.."
# Builds are cached in the user's cache directory, so a fresh clone does not rebuild every dependency.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inflight-target}"
scripts/testbed.sh setup >/dev/null
# PostgreSQL for the store's contract tests (Debian's package, installed when missing); each test process starts
# its own throwaway cluster from it, unless INFLIGHT_TEST_PG names a database.
scripts/pg.sh setup >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The codebase's shape: no import loops, short cli functions, no repeated blocks (installs jscpd from npm once).
python3 scripts/check-structure.py
# Tests that compare rates between concurrency levels (auto's, bench's and doctor's choice of level) read
# noise as a result when other tests load the same two cores: they run first, one at a time, on a quiet machine
# (after the rest, the servers and database clusters other tests started could still be winding down).
RATES=(sweep_recommends_the_lanes a_serialized_server_has_one_effective_lane four_lanes_are_found
       serial_server_is_held_at_one_or_two ollama_serial_server_gets_the_ollama_fix)
SKIP=()
for t in "${RATES[@]}"; do SKIP+=(--skip "$t"); done
cargo test -p inflight --test tests -- --include-ignored --test-threads 1 "${RATES[@]}"
cargo test --workspace -- --include-ignored "${SKIP[@]}"
