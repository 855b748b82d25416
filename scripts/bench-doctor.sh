#!/usr/bin/env bash
# Does doctor's advice pay? On the test-bed llama-server started with `-np 4 -t 4` (more threads than this
# machine's physical cores): run `inflight doctor`, restart the server with the thread count it recommends, and
# print `inflight bench`'s best throughput before and after, with the ratio. About 10 minutes on 2 cores.
#
# Settings: SmolLM2-135M-Instruct Q4_1, 64 output tokens, bench levels 1,2,4,8, up to 30 s per level (at least
# 30 answers), doctor probe 30 s. Other work on a shared machine drifts, so the two settings are benched in
# alternating rounds (before, after, before, after) and each side's best throughputs are averaged; the load
# average is printed before each bench.
set -euo pipefail
# Measurements send the same jobs again: the response cache would answer them instead.
export INFLIGHT_CACHE=off
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inflight-target}"
cargo build --release -q --bin inflight
scripts/testbed.sh setup >/dev/null
INFLIGHT="$CARGO_TARGET_DIR/release/inflight"
dir="${REPORT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/bench-doctor.XXXXXX")}"
mkdir -p "$dir"
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null' EXIT

start() { read -r URL PID < <(scripts/testbed.sh start "$@"); echo "server: llama-server $* at $URL" >&2; }
stop() { kill "$PID"; while kill -0 "$PID" 2>/dev/null; do sleep 0.2; done; PID=; }

bench() { # $1: report name; prints the best level's "output-tokens/s jobs/s concurrency"
  echo "bench $1: load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  "$INFLIGHT" bench --server "$URL" --levels 1,2,4,8 --output-tokens 64 --min-answers 30 \
    --max-time-per-level 30s --report-dir "$dir/$1" --json >/dev/null
  python3 - "$dir/$1/bench.json" <<'PY'
import json, sys
levels = json.load(open(sys.argv[1]))["levels"]
best = max(levels, key=lambda l: l["output_tokens_per_s"])
print(f'{best["output_tokens_per_s"]:.1f} {best["jobs_per_s"]:.2f} {best["concurrency"]}')
PY
}

before_args=(-np 4 -t 4)
start "${before_args[@]}"
rc=0
"$INFLIGHT" doctor --server "$URL" --probe-time 30s --json >"$dir/doctor-before.json" || rc=$?
threads=$(python3 - "$dir/doctor-before.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for v in r["verdicts"]:
    print(f'doctor: {v["finding"]}\n  fix: {v["fix"]}', file=sys.stderr)
t = [v["change"]["value"] for v in r["verdicts"] if v["kind"] == "thread_oversubscription"]
print(t[0] if t else "")
PY
)
if [ -z "$threads" ]; then
  echo "doctor (exit $rc) found no thread oversubscription; see $dir/doctor-before.json" >&2
  exit 1
fi
after_args=(-np 4 -t "$threads")

results=()
for round in 1 2; do
  [ -n "$PID" ] || start "${before_args[@]}"
  results+=("before $(bench "before-$round")")
  stop
  start "${after_args[@]}"
  if [ "$round" = 1 ]; then
    rc=0
    "$INFLIGHT" doctor --server "$URL" --probe-time 30s >"$dir/doctor-after.txt" || rc=$?
    echo "doctor on the restarted server: exit $rc (0 = nothing to change); report in $dir/doctor-after.txt" >&2
  fi
  results+=("after $(bench "after-$round")")
  stop
done

echo "settings: SmolLM2-135M-Instruct Q4_1, 64 output tokens, bench levels 1,2,4,8 (<= 30 s each), $(nproc) CPUs, 2 alternating rounds"
printf '%s\n' "${results[@]}" | python3 -c '
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
args = {"before": sys.argv[1], "after": sys.argv[2]}
mean = {}
for side in ("before", "after"):
    mine = [r for r in rows if r[0] == side]
    for i, (_, tok, jobs, c) in enumerate(mine, 1):
        print(f"{side:6} round {i}: llama-server {args[side]}: best {tok} output tokens/s ({jobs} jobs/s) at {c} in flight")
    mean[side] = sum(float(r[1]) for r in mine) / len(mine)
b, a = mean["before"], mean["after"]
print(f"mean best: before {b:.1f}, after {a:.1f} output tokens/s; ratio after/before {a / b:.2f}x"
      + ("" if a > b else "  (the advice did not pay here)"))
' "${before_args[*]}" "${after_args[*]}"
echo "reports: $dir"
