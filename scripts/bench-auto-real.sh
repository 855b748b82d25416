#!/usr/bin/env bash
# Automatic concurrency on the real test-bed llama-server (issue 3): SmolLM2-135M, 64 max tokens, started with
# `-np 8 -t 2` and again with `-np 1 -t 2`. For each: the best fixed level among 1, 2, 4, 8, 16, 32 and the
# auto run, in the same benchmark run; prints auto / best fixed (whole run after warm-up, and its second half)
# and what auto said (with -np 1: the --parallel fix). About 70 minutes on 2 cores with the defaults (-np 1 is flat, so all its levels run long).
#   FIXED_JOBS=100 ROUNDS=1 CONFIRM=0.10 AUTO_JOBS=1000 AUTO_JOBS_NP1=500 NPS="8 1" scripts/bench-auto-real.sh
# Every level first runs FIXED_JOBS jobs (a screen); the levels within CONFIRM of the best then run again as
# long as the auto run, and the best of those long runs is the oracle. Short fixed runs flatter the fixed levels
# against a long auto run on this test bed: with -np 8, fixed 16 gave 170.0 tokens/s over 100-job runs but
# 156.8 over 1,000 jobs on a fresh server, where auto (1,000 jobs) gave 170.8. AUTO_EARLY=1 runs auto before
# the long fixed runs rather than after them, to see that the order favours neither.
set -euo pipefail
# Measurements send the same jobs again: the response cache would answer them instead.
export INFLIGHT_CACHE=off
cd "$(dirname "$0")/.."
scripts/testbed.sh setup >/dev/null
for np in ${NPS:-8 1}; do
  read -r URL PID < <(scripts/testbed.sh start -np "$np" -t 2 -c $((2048 * np)))
  trap 'kill "$PID" 2>/dev/null' EXIT
  auto_jobs=$([ "$np" = 1 ] && echo "${AUTO_JOBS_NP1:-500}" || echo "${AUTO_JOBS:-1000}")
  fixed_jobs=$([ "$np" = 1 ] && echo "${FIXED_JOBS_NP1:-60}" || echo "${FIXED_JOBS:-100}")
  python3 scripts/bench-auto.py --server "$URL" --name "np$np" --levels 1,2,4,8,16,32 --max-tokens 64 \
    --fixed-jobs "$fixed_jobs" --rounds "${ROUNDS:-1}" --confirm "${CONFIRM:-0.10}" --server-auto-jobs "$auto_jobs" \
    ${AUTO_EARLY:+--auto-early}
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
