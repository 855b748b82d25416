#!/usr/bin/env bash
# The chaos suite: every fault a weekend run meets, with a verdict per scenario (scripts/chaos.py --help).
# Builds the release binaries first; run it on a quiet machine (it measures rates and peak memory).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/chaos.py "$@"
