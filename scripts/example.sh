#!/usr/bin/env bash
# End to end on a real example: build inflight, start the test-bed llama-server (SmolLM2-135M on CPU), and run
# 200 transcript segments through a claim-extraction template. Prints inflight's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inflight-target}"
cargo build --release --bin inflight
scripts/testbed.sh setup >/dev/null
read -r URL PID < <(scripts/testbed.sh start -np 4 -t 2 -c 4096)
trap 'kill "$PID" 2>/dev/null' EXIT
out="${OUT_DIR:-example-out}"
mkdir -p "$out"
"$CARGO_TARGET_DIR/release/inflight" run examples/segments.jsonl \
  --template examples/claims.j2 --system "You extract factual claims. Be brief." \
  --server "$URL" --max-tokens 64 -o "$out/claims.jsonl" "$@"
echo "first result:"
head -c 600 "$out/claims.jsonl"; echo
