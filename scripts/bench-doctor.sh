#!/usr/bin/env bash
# Does doctor's advice pay? On the test-bed llama-server started with `-np 4 -t 4` (more threads than this
# machine's physical cores): run `inflight doctor`, restart the server with the thread count it recommends, and
# print `inflight bench`'s best throughput before and after, with the ratio. About 8 minutes on 2 cores.
#
# Settings: SmolLM2-135M-Instruct Q4_1, 64 output tokens, bench levels 1,2,4,8, up to 40 s per level (at least
# 30 answers), doctor probe 30 s. The load average is printed before each measurement: other work on the
# machine slows both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inflight-target}"
cargo build --release -q --bin inflight
scripts/testbed.sh setup >/dev/null
INFLIGHT="$CARGO_TARGET_DIR/release/inflight"
dir="${REPORT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/bench-doctor.XXXXXX")}"
mkdir -p "$dir"
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null' EXIT

bench() { # $1: name; prints "<tokens/s> <jobs/s> <concurrency>" of the best level
  echo "bench $1: load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  "$INFLIGHT" bench --server "$URL" --levels 1,2,4,8 --output-tokens 64 --min-answers 30 \
    --max-time-per-level 40s --report-dir "$dir/$1" --json >/dev/null
  python3 - "$dir/$1/bench.json" <<'PY'
import json, sys
levels = json.load(open(sys.argv[1]))["levels"]
best = max(levels, key=lambda l: l["output_tokens_per_s"])
print(f'{best["output_tokens_per_s"]:.1f} {best["jobs_per_s"]:.2f} {best["concurrency"]}')
PY
}

before_args=(-np 4 -t 4)
read -r URL PID < <(scripts/testbed.sh start "${before_args[@]}")
echo "server: llama-server ${before_args[*]} at $URL" >&2
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
read -r before_tok before_jobs before_c < <(bench before)
kill "$PID"
while kill -0 "$PID" 2>/dev/null; do sleep 0.2; done

after_args=(-np 4 -t "$threads")
read -r URL PID < <(scripts/testbed.sh start "${after_args[@]}")
echo "server restarted as advised: llama-server ${after_args[*]} at $URL" >&2
rc=0
"$INFLIGHT" doctor --server "$URL" --probe-time 30s >"$dir/doctor-after.txt" || rc=$?
echo "doctor after the restart: exit $rc (0 = nothing to change); report in $dir/doctor-after.txt" >&2
read -r after_tok after_jobs after_c < <(bench after)

echo "settings: SmolLM2-135M-Instruct Q4_1, 64 output tokens, bench levels 1,2,4,8 (<= 40 s each), $(nproc) CPUs"
echo "before: llama-server ${before_args[*]}: best ${before_tok} output tokens/s (${before_jobs} jobs/s) at ${before_c} in flight"
echo "after:  llama-server ${after_args[*]}: best ${after_tok} output tokens/s (${after_jobs} jobs/s) at ${after_c} in flight"
python3 -c "import sys; b, a = map(float, sys.argv[1:]); print(f'ratio after/before: {a / b:.2f}x' + ('' if a > b else '  (the advice did not pay here)'))" \
  "$before_tok" "$after_tok"
