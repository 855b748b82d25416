#!/usr/bin/env bash
# The whole test suite on a fresh machine: the test bed (real llama-server + model, cached), formatting,
# lints, unit tests, and integration tests against the simulator and the real server.
set -euo pipefail
cd "$(dirname "$0")/.."
# Builds are cached in the user's cache directory, so a fresh clone does not rebuild every dependency.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inflight-target}"
scripts/testbed.sh setup >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The codebase's shape: no import loops, short cli functions, no repeated blocks (installs jscpd from npm once).
python3 scripts/check-structure.py
cargo test --workspace -- --include-ignored
