#!/usr/bin/env bash
# Checks `inflight bench` against known answers (issue 4) and prints the figures:
#  1. warm-up honesty: on the simulator's warm-up profile (first 20 requests 5x slower), bench at 4 in flight
#     reports the first-20 rate and the steady rate; the true steady rate is what a long fixed run at 4 in
#     flight sustains after warm-up, on a fresh simulator;
#  2. ETA: on the lanes4 profile (no drift), bench predicts the time for 20,000 jobs; `inflight run` at the
#     recommended level then runs them; prints both times and their ratio.
#   SCALE=10 scripts/bench-bench.sh
set -euo pipefail
# Measurements send the same jobs again: the response cache would answer them instead.
export INFLIGHT_CACHE=off
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inflight-target}"
cargo build --release -q --bin inflight --bin inflight-sim
bin="$CARGO_TARGET_DIR/release"
SCALE="${SCALE:-10}"
work=$(mktemp -d); SIM=""
trap '[ -n "$SIM" ] && kill $SIM 2>/dev/null; rm -rf "$work"' EXIT
sim() { exec 3< <("$bin/inflight-sim" --profile "$1" --time-scale "$SCALE" --seed 1); read -r URL <&3; SIM=$!; }
python3 -c "
import json
with open('$work/jobs.jsonl', 'w') as f:
    for i in range(20000):
        f.write(json.dumps({'id': f'j{i}', 'prompt': f'Write a short note about item {i}.'}) + '\n')"
steady_after_warmup() { # state db -> output tokens/s from the 20th answer to the last send
  python3 - "$1" <<'PY'
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute(
    "SELECT sent_at, finished_at, completion_tokens FROM jobs WHERE status = 2 ORDER BY finished_at").fetchall()
t0, t1 = rows[19][1], max(r[0] for r in rows)
print(sum(r[2] for r in rows if t0 < r[1] <= t1) / ((t1 - t0) / 1000))
PY
}

echo "== warm-up honesty (profile warmup, time scale $SCALE)"
sim warmup
"$bin/inflight" bench --server "$URL" --jobs "$work/jobs.jsonl" --levels 4 --report-dir "$work/warm" --json \
  > "$work/warm.json"
kill $SIM; wait $SIM 2>/dev/null || true
sim warmup
"$bin/inflight" run "$work/jobs.jsonl" -o "$work/fixed.jsonl" --server "$URL" -c 4 -q --limit 8000 >/dev/null
kill $SIM; wait $SIM 2>/dev/null || true
true_rate=$(steady_after_warmup "$work/fixed.inflight.db")
python3 - "$work/warm.json" "$true_rate" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); true = float(sys.argv[2])
first, steady = r["first_20"]["output_tokens_per_s"], r["levels"][0]["output_tokens_per_s"]
print(f"first 20 answers: {first:.0f} tokens/s   bench steady rate: {steady:.0f} tokens/s "
      f"(±{r['levels'][0]['ci_rel'] * 100:.1f}%, steady: {r['levels'][0]['steady']})")
print(f"true steady rate (8,000 jobs at 4 in flight, after warm-up): {true:.0f} tokens/s")
print(f"bench steady / true = {steady / true:.3f}   (target: within 0.95-1.05)")
PY

echo "== ETA (profile lanes4, time scale $SCALE)"
sim lanes4
"$bin/inflight" bench --server "$URL" --jobs "$work/jobs.jsonl" --for-jobs 20000 --report-dir "$work/eta" --json \
  > "$work/eta.json"
level=$(python3 -c "import json; print(json.load(open('$work/eta.json'))['recommendation']['concurrency'])")
start=$(date +%s.%N)
"$bin/inflight" run "$work/jobs.jsonl" -o "$work/eta-run.jsonl" --server "$URL" -c "$level" -q >/dev/null
end=$(date +%s.%N)
python3 - "$work/eta.json" "$start" "$end" "$level" <<'PY'
import json, sys
eta = json.load(open(sys.argv[1]))["recommendation"]["eta"]
actual = float(sys.argv[3]) - float(sys.argv[2])
print(f"bench recommended --concurrency {sys.argv[4]}; predicted {eta['seconds']:.1f} s for 20,000 jobs "
      f"(interval {eta['low_seconds']:.1f}-{eta['high_seconds']:.1f} s); inflight run took {actual:.1f} s")
print(f"actual / predicted = {actual / eta['seconds']:.3f}   (target: within 0.90-1.10)")
PY
