#!/usr/bin/env bash
# `inflight bench` on the real test-bed llama-server (issue 4): SmolLM2-135M, 64 output tokens, `-np 8 -t 2`.
# Prints the table, whether the recommended level is within 5% of the best measured, how many requests the
# server itself ran at most (`--metrics`: the busy-slot evidence that caps the recommendation unless a level
# above is clearly faster), and where the reports (JSON, CSV, SVG chart) are. About 10 minutes on 2 cores.
set -euo pipefail
# Measurements send the same jobs again: the response cache would answer them instead.
export INFLIGHT_CACHE=off
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inflight-target}"
cargo build --release -q --bin inflight
scripts/testbed.sh setup >/dev/null
read -r URL PID < <(scripts/testbed.sh start -np 8 -t 2 -c 16384 --metrics)
trap 'kill "$PID" 2>/dev/null' EXIT
dir="${REPORT_DIR:-bench-report-real}"
"$CARGO_TARGET_DIR/release/inflight" bench --server "$URL" --levels 1,2,4,8,16,32 --output-tokens 64 \
  --for-jobs 10000 --max-time-per-level 120s --report-dir "$dir"
python3 - "$dir/bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rate = lambda l: l["output_tokens_per_s"] or l["jobs_per_s"]
best = max(r["levels"], key=rate)
chosen = next(l for l in r["levels"] if l["concurrency"] == r["recommendation"]["concurrency"])
print(f"recommended {chosen['concurrency']}: {rate(chosen):.1f}; best measured {best['concurrency']}: {rate(best):.1f}; "
      f"ratio {rate(chosen) / rate(best):.3f} (target >= 0.95)")
busy = [(l["concurrency"], ((l.get("server") or {}).get("load") or {}).get("running_max")) for l in r["levels"]]
print("server running at most, per level: " + ", ".join(f"{c}: {b:.0f}" if b is not None else f"{c}: -" for c, b in busy))
most = max((b for _, b in busy if b), default=None)
if most:
    above = [l for l in r["levels"] if l["concurrency"] > most]
    below = max((rate(l) for l in r["levels"] if l["concurrency"] <= most), default=0)
    clearly = [l["concurrency"] for l in above if rate(l) * 0.95 > below * 1.05]
    print(f"busy slots seen: {most:.0f}; recommended {chosen['concurrency']} "
          f"{'<=' if chosen['concurrency'] <= most else '>'} busy slots; levels above clearly faster: {clearly or 'none'}")
print("why: " + r["recommendation"].get("why", ""))
svg = open(sys.argv[1].replace("bench.json", "bench.svg")).read()
print(f"chart: {svg.count('<polyline')} curves, recommended level marked: "
      f"{'recommended: %d' % chosen['concurrency'] in svg}")
try:
    import jsonschema
    schema = json.load(open("docs/schema/bench-report.schema.json"))
    jsonschema.validate(r, schema)
    print("bench.json validates against docs/schema/bench-report.schema.json")
except ImportError:
    print("(pip install jsonschema to validate bench.json here; tests/real_server.rs validates it too)")
PY
