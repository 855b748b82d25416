#!/usr/bin/env bash
# The server's busy count as auto's evidence (issue 14), on the real test-bed llama-server (SmolLM2-135M, 64 max
# tokens, 2 threads):
#   1. `-np 1 -t 2`: RUNS auto runs of JOBS jobs in a row, each printing the level auto held, the mean in flight
#      (from the state's send and finish times, after warm-up), tokens/s, the most the server reported busy at
#      once (`server_busy_max` of `run --json`), and whether the serialized-server fix was printed.
#   2. `-np 8 -t 2`: short screens of fixed levels SCREEN_LEVELS (SCREEN_JOBS jobs each), the best of them run
#      again as long as the auto run (JOBS jobs), then one auto run; prints auto / best fixed.
# The load average is printed first: other work on the machine moves every rate here.
#   RUNS=5 JOBS=300 SCREEN_LEVELS=4,8,16 SCREEN_JOBS=80 scripts/bench-serial-real.sh
set -euo pipefail
# Measurements send the same jobs again: the response cache would answer them instead.
export INFLIGHT_CACHE=off
cd "$(dirname "$0")/.."
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inflight-target}"
cargo build --release -p inflight --bin inflight >&2
scripts/testbed.sh setup >/dev/null
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
for np in 1 8; do
  read -r URL PID < <(scripts/testbed.sh start -np "$np" -t 2 -c $((2048 * np)))
  PIDS+=("$PID")
  python3 - "$URL" "$np" <<'PY'
import importlib.util, json, os, sys, tempfile

spec = importlib.util.spec_from_file_location("bench_auto", os.path.join("scripts", "bench-auto.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
url, np = sys.argv[1], int(sys.argv[2])
runs, jobs = int(os.environ.get("RUNS", "5")), int(os.environ.get("JOBS", "300"))
screen_levels = [int(x) for x in os.environ.get("SCREEN_LEVELS", "4,8,16").split(",")]
screen_jobs = int(os.environ.get("SCREEN_JOBS", "80"))
work = tempfile.mkdtemp(prefix=f"bench-serial-np{np}-")


def go(level, n, tag):
    """One run: (tokens/s after warm-up, mean in flight, the run --json summary or None for a fixed level)."""
    db, log = bench.run(url, bench.jobs_file(work, n, 64, tag), level, work, tag, ["--json"])
    rate, in_flight, _, wall = bench.metrics(db)
    summary = next((json.loads(l) for l in log.splitlines() if l.startswith("{") and '"summary"' in l), None)
    return rate, in_flight, wall, summary


if np == 1:
    print(f"-np 1 -t 2: {runs} auto runs of {jobs} jobs, 64 max tokens")
    print(f"{'run':>4}{'held':>6}{'mean in flight':>16}{'tokens/s':>10}{'busy max':>10}{'lanes':>7}"
          f"{'wall':>7}  serialized fix printed")
    for i in range(runs):
        rate, in_flight, wall, s = go("auto", jobs, f"np1-auto-{i}")
        c = s["concurrency"]
        fixed = any("one request at a time" in n and "--parallel" in n for n in c["notes"])
        held = f"{c['held']}{'*' if c['searching'] else ''}"
        print(f"{i + 1:>4}{held:>6}{in_flight:>16.2f}{rate:>10.1f}{str(c['server_busy_max']):>10}"
              f"{str(c['effective_lanes']):>7}{wall:>6.0f}s  {'yes' if fixed else 'no'}", flush=True)
    print("  (* auto was still searching when the jobs ran out: held is its limit at the end)")
else:
    print(f"-np 8 -t 2: screens of {screen_jobs} jobs at {screen_levels}, then the best fixed and auto, {jobs} jobs")
    screens = {}
    for level in screen_levels:
        screens[level] = go(level, screen_jobs, f"np8-screen-{level}")[0]
        print(f"  screen fixed {level:>3}: {screens[level]:8.1f} tokens/s", flush=True)
    best = max(screens, key=screens.get)
    fixed_rate, fixed_in_flight, _, _ = go(best, jobs, f"np8-fixed-{best}")
    print(f"  fixed {best} over {jobs} jobs: {fixed_rate:.1f} tokens/s", flush=True)
    rate, in_flight, wall, s = go("auto", jobs, "np8-auto")
    c = s["concurrency"]
    searching = " (still searching: its limit at the end)" if c["searching"] else ""
    print(f"  auto over {jobs} jobs: {rate:.1f} tokens/s, held {c['held']}{searching}, mean in flight {in_flight:.2f}, "
          f"server busy max {c['server_busy_max']}, effective lanes {c['effective_lanes']}, {wall:.0f}s")
    print(f"  auto / best fixed ({best}): {rate / fixed_rate:.3f}")
    for n in c["notes"]:
        print(f"    note: {n}")
PY
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
