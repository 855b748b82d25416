#!/usr/bin/env python3
"""Automatic concurrency against a known answer (issue 3).

For each simulator profile: sweep fixed concurrency levels to find the oracle (the best sustained throughput)
and the smallest level reaching 95% of it; then run `--concurrency auto` on the same workload and print
auto's sustained throughput / the oracle's, its mean number in flight / that smallest level, and the time it
took to reach 90% of the oracle. Throughput is output tokens/s over the run after warm-up: from the 20th
completion to the last send (the drain at the end, when fewer jobs than the limit remain, is left out).

    scripts/bench-auto.py [--profiles serial,lanes4] [--scale 10] [--auto-jobs 20000]

With --server URL it measures a real server instead (levels 1,2,4,8,16,32), e.g. the test-bed llama-server.
A real server's rate moves by several percent from one run to the next (other work on its cores), so there
each fixed level is run --rounds times, in alternating order, and their mean is the level's rate; auto's rate
is also given over the second half of its run (after its climb), beside the whole run after warm-up. With
--confirm F the levels within F of the best run once more, as long as the auto run, and those long runs are
the oracle: a CPU server's short runs flatter a level against a long one.
"""
import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

# Measurements send the same jobs again: the response cache would answer them instead.
os.environ["INFLIGHT_CACHE"] = "off"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "inflight-target")
BIN = os.path.join(TARGET, "release")

# profile: (levels to sweep, most jobs per fixed level, jobs for auto (about 100 s), time scale)
PROFILES = {
    "serial": ([1, 2, 4, 8], 400, 8000, 10),
    "lanes4": ([1, 2, 4, 8, 16], 1500, 30000, 10),
    "batching32": ([1, 2, 4, 8, 16, 32, 64, 128], 4000, 40000, 10),
    "knee256": ([1, 4, 16, 64, 128, 256, 512], 12000, 400000, 20),
    "warmup": ([1, 2, 4, 8, 16], 1500, 30000, 10),
    # Drift (30% slower after 180 simulated seconds) needs fixed runs as long as the auto run, or the oracle
    # would never see the slow part; level 1 is left out of its sweep (clearly the slowest, and 160 s long).
    "drift": ([2, 4, 8, 16], 12000, 12000, 10),
    "bounded-queue": ([1, 2, 4, 8, 16], 1500, 30000, 10),
    "bimodal": ([1, 2, 4, 8, 16, 32, 64, 128], 4000, 120000, 10),
}
# A fixed level runs 40 jobs per request in flight (at least 200, at most the profile's cap): enough for a
# steady rate, without spending minutes on the slow low levels.
JOBS_PER_LEVEL = 40


def jobs_file(directory, n, max_tokens, tag):
    # Every run gets its own prompts: a real server caches prompts it has seen (llama-server reuses a slot's
    # prompt prefix), and a run replaying an earlier run's prompts would skip their prefill and look faster.
    path = os.path.join(directory, f"jobs-{tag}.jsonl")
    if not os.path.exists(path):
        with open(path, "w") as f:
            for i in range(n):
                line = {"id": f"j{i}", "prompt": f"Write a short note about item {i} of batch {tag}."}
                if max_tokens:
                    line["max_tokens"] = max_tokens
                f.write(json.dumps(line) + "\n")
    return path


def run(url, jobs, concurrency, directory, tag, extra=()):
    out = os.path.join(directory, f"out-{tag}.jsonl")
    cmd = [os.path.join(BIN, "inflight"), "run", jobs, "-o", out, "--server", url, "-q",
           "--concurrency", str(concurrency), "--restart", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode not in (0, 1):
        sys.exit(f"inflight failed ({p.returncode}): {p.stderr[-2000:]}")
    return os.path.join(directory, f"out-{tag}.inflight.db"), p.stdout + p.stderr


def metrics(db, oracle=None, warm=20):
    """Sustained tokens/s after warm-up, mean in flight, and time to reach 90% of `oracle`."""
    c = sqlite3.connect(db)
    rows = c.execute("SELECT sent_at, finished_at, COALESCE(completion_tokens, 0) FROM jobs "
                     "WHERE status = 2 ORDER BY finished_at").fetchall()
    c.close()
    start = rows[0][0]
    t0 = rows[min(warm, len(rows) - 1)][1]
    t1 = max(r[0] for r in rows)  # last send
    span = (t1 - t0) / 1000.0
    tokens = sum(r[2] for r in rows if t0 < r[1] <= t1)
    busy = sum(max(0, min(r[1], t1) - max(r[0], t0)) for r in rows) / 1000.0
    rate = tokens / span if span > 0 else 0.0
    t90 = None
    if oracle:
        # First moment a trailing window of ~5% of the run holds >= 90% of the oracle's rate.
        width = max(1000, (t1 - start) // 20)
        j = 0
        acc = 0
        for i, r in enumerate(rows):
            acc += r[2]
            while rows[j][1] < r[1] - width:
                acc -= rows[j][2]
                j += 1
            if r[1] - start >= width and acc / (width / 1000.0) >= 0.9 * oracle:
                t90 = (r[1] - start) / 1000.0
                break
    return rate, busy / span if span > 0 else 0.0, t90, (t1 - start) / 1000.0


def start_sim(profile, scale):
    p = subprocess.Popen([os.path.join(BIN, "inflight-sim"), "--profile", profile, "--time-scale", str(scale),
                          "--seed", "1"], stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


def measure(name, url_factory, levels, fixed_jobs, auto_jobs, directory, max_tokens, extra=(), rounds=1,
            confirm=None, auto_early=False):
    def run_at(level, n, tag):
        url, stop = url_factory()
        db, log = run(url, jobs_file(directory, n, max_tokens, tag), level, directory, tag, extra)
        stop()
        return db, log

    def run_auto():
        return run_at("auto", auto_jobs, f"{name}-auto")

    auto = None
    runs = {level: [] for level in levels}
    for rnd in range(rounds):
        for level in (levels if rnd % 2 == 0 else list(reversed(levels))):
            n = fixed_jobs if fixed_jobs == auto_jobs else min(fixed_jobs, max(200, JOBS_PER_LEVEL * level))
            runs[level].append(metrics(run_at(level, n, f"{name}-{level}-r{rnd}")[0])[0])
            print(f"  {name}: fixed {level:>4}: {runs[level][-1]:10.1f} tokens/s", flush=True)
    results = {level: sum(r) / len(r) for level, r in runs.items()}
    if rounds > 1:
        print("  mean of rounds: " + ", ".join(f"{l}: {r:.1f}" for l, r in results.items()), flush=True)
    if confirm is not None:
        # Short runs screen the levels; those near the best run again as long as the auto run, since on a
        # CPU server a short run's rate is not a long run's (see bench-auto-real.sh), and the oracle must be
        # measured like the run it is compared with.
        if auto_early:
            auto = run_auto()
            print(f"  {name}: auto ran before the long fixed runs", flush=True)
        best = max(results.values())
        screened = [l for l, r in results.items() if r >= (1 - confirm) * best]
        results = {}
        for level in screened:
            results[level] = metrics(run_at(level, auto_jobs, f"{name}-{level}-long")[0])[0]
            print(f"  {name}: fixed {level:>4} over {auto_jobs} jobs: {results[level]:10.1f} tokens/s", flush=True)
    oracle_level = max(results, key=results.get)
    oracle = results[oracle_level]
    l95 = min(level for level, r in results.items() if r >= 0.95 * oracle)
    db, log = auto or run_auto()
    rate, inflight, t90, wall = metrics(db, oracle)
    notes = [l.strip() for l in log.splitlines() if "one request at a time" in l or "held" in l]
    row = dict(profile=name, oracle_level=oracle_level, oracle=oracle, l95=l95, auto=rate, ratio=rate / oracle,
               inflight=inflight, inflight_ratio=inflight / l95, t90=t90, wall=wall, notes=notes)
    if rounds > 1 or confirm is not None:
        late = second_half(db)
        row["notes"].append(f"auto over the second half of its run: {late:.1f} tokens/s = {late / oracle:.3f} x oracle")
    print_rows([row])
    return row


def second_half(db):
    c = sqlite3.connect(db)
    rows = c.execute("SELECT sent_at, finished_at, COALESCE(completion_tokens, 0) FROM jobs "
                     "WHERE status = 2 ORDER BY finished_at").fetchall()
    c.close()
    t1 = max(r[0] for r in rows)
    t0 = (rows[0][0] + t1) / 2
    return sum(r[2] for r in rows if t0 < r[1] <= t1) / ((t1 - t0) / 1000.0)


def print_rows(rows):
    print(f"{'profile':<14}{'oracle@lvl':>18}{'95%@':>6}{'auto tok/s':>12}{'auto/oracle':>13}"
          f"{'mean in flight':>16}{'/95% lvl':>10}{'t to 90%':>10}{'run':>8}")
    for r in rows:
        t90 = f"{r['t90']:.1f}s" if r["t90"] is not None else "never"
        print(f"{r['profile']:<14}{r['oracle']:>12.1f} @{r['oracle_level']:<4}{r['l95']:>6}{r['auto']:>12.1f}"
              f"{r['ratio']:>13.3f}{r['inflight']:>16.1f}{r['inflight_ratio']:>10.2f}{t90:>10}{r['wall']:>7.0f}s")
        for n in r["notes"]:
            print(f"    {n}")
    print(flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--auto-jobs", type=int, help="jobs for the auto run (default: about 100 s per profile)")
    ap.add_argument("--scale", type=float, help="override every profile's time scale")
    ap.add_argument("--server", help="a real server instead of the simulator")
    ap.add_argument("--levels", default="1,2,4,8,16,32")
    ap.add_argument("--fixed-jobs", type=int, default=300)
    ap.add_argument("--server-auto-jobs", type=int, default=3000)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--name", default="server")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each fixed level on a real server")
    ap.add_argument("--confirm", type=float, help="on a real server, run the fixed levels within this fraction "
                    "of the best again with as many jobs as the auto run; their long runs are the oracle")
    ap.add_argument("--auto-early", action="store_true", help="with --confirm, run auto before the long fixed "
                    "runs instead of after them (a check that the order does not favour either)")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "inflight", "--bin", "inflight-sim"],
                   cwd=ROOT, check=True, env={**os.environ, "CARGO_TARGET_DIR": TARGET})
    rows = []
    with tempfile.TemporaryDirectory() as d:
        if args.server:
            levels = [int(x) for x in args.levels.split(",")]
            print(f"real server {args.server}: levels {levels}, {args.rounds} x {args.fixed_jobs} jobs per level, "
                  f"{args.server_auto_jobs} for auto, max_tokens {args.max_tokens}", flush=True)
            rows.append(measure(args.name, lambda: (args.server, lambda: None), levels, args.fixed_jobs,
                                args.server_auto_jobs, d, args.max_tokens, rounds=args.rounds,
                                confirm=args.confirm, auto_early=args.auto_early))
        else:
            for name in args.profiles.split(","):
                levels, fixed_jobs, auto_jobs, scale = PROFILES[name]
                scale = args.scale or scale
                auto_jobs = args.auto_jobs or auto_jobs
                print(f"{name}: time scale {scale}, {fixed_jobs} jobs per fixed level, {auto_jobs} for auto",
                      flush=True)

                def factory(name=name, scale=scale):
                    p, url = start_sim(name, scale)
                    return url, lambda: (p.kill(), p.wait())

                rows.append(measure(name, factory, levels, fixed_jobs, auto_jobs, d, None))
    print("summary (auto/oracle >= 0.95 and mean in flight <= 1.5 x the smallest level reaching 95% are the targets):")
    print_rows(rows)


if __name__ == "__main__":
    main()
