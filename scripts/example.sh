#!/usr/bin/env bash
# End to end on a real example, on the embedded engine (no server): build inflight (llama.cpp included), take
# the test-bed model (SmolLM2-135M, CPU), and run 200 transcript segments through a claim-extraction template.
# Prints inflight's summary, with what the engine chose (threads, sequences) and measured.
# `ENGINE=0 scripts/example.sh` runs the same job on the test-bed llama-server instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inflight-target}"
MODEL=$(scripts/testbed.sh model)
cargo build --release --bin inflight
out="${OUT_DIR:-example-out}"
mkdir -p "$out"
if [ "${ENGINE:-1}" = 0 ]; then
  scripts/testbed.sh setup >/dev/null
  read -r URL PID < <(scripts/testbed.sh start -np 4 -t 2 -c 4096)
  trap 'kill "$PID" 2>/dev/null' EXIT
  backend=(--server "$URL")
else
  backend=(--engine "$MODEL")
fi
"$CARGO_TARGET_DIR/release/inflight" run examples/segments.jsonl \
  --template examples/claims.j2 --system "You extract factual claims. Be brief." \
  "${backend[@]}" --max-tokens 64 -o "$out/claims.jsonl" "$@"
echo "first result:"
head -c 600 "$out/claims.jsonl"; echo
