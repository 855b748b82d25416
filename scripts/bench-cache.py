#!/usr/bin/env python3
"""The response cache (issue 18): a rerun after a small edit sends only the edited lines.

20,000 chat jobs at temperature 0 against the simulator (about 200 jobs/s), then 200 lines edited and the same
command again with --restart. Prints both runs' wall times and their ratio, the requests the simulator counted
for each (from its /sim/stats), the output's size, and the cache's integrity check.

    scripts/bench-cache.py [--jobs 20000] [--edits 200] [--time-scale 1.2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "inflight-target")


def lines(n, edited):
    for i in range(n):
        q = f"what is {i} squared?" if i in edited else f"what is {i}?"
        yield json.dumps({"custom_id": f"j{i}", "method": "POST", "url": "/v1/chat/completions",
                          "body": {"model": "m", "messages": [{"role": "user", "content": q}],
                                   "temperature": 0, "max_tokens": 16}})


def sim_requests(url):
    with urllib.request.urlopen(f"{url}/sim/stats", timeout=10) as r:
        return json.load(r)["requests"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--time-scale", type=float, default=1.2, help="the simulator's speed (1.2: about 200 jobs/s)")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "inflight", "--bin", "inflight-sim"], cwd=ROOT,
                   check=True, env={**os.environ, "CARGO_TARGET_DIR": TARGET})
    bin_dir = os.path.join(TARGET, "release")
    work = tempfile.mkdtemp(prefix="bench-cache-")
    sim = subprocess.Popen([f"{bin_dir}/inflight-sim", "--profile", "batching32", "--time-scale", str(a.time_scale)],
                           stdout=subprocess.PIPE, text=True)
    try:
        url = sim.stdout.readline().strip()
        jobs, cache = os.path.join(work, "jobs.jsonl"), os.path.join(work, "responses.db")
        with open(jobs, "w") as f:
            f.write("\n".join(lines(a.jobs, set())) + "\n")
        cmd = [f"{bin_dir}/inflight", "run", jobs, "-o", os.path.join(work, "out.jsonl"), "--server", url, "-q",
               "--json", "--cache", "deterministic", "--cache-path", cache]

        def timed(extra):
            before, started = sim_requests(url), time.monotonic()
            out = subprocess.run(cmd + extra, capture_output=True, text=True)
            wall = time.monotonic() - started
            if out.returncode != 0:
                sys.exit(f"inflight failed ({out.returncode}): {out.stderr[-2000:]}")
            return wall, sim_requests(url) - before, json.loads(out.stdout)

        print(f"settings: {a.jobs} jobs at temperature 0, simulator batching32 x{a.time_scale} at {url}, "
              f"{os.cpu_count()} cores, cache {cache}")
        first_wall, first_sent, first = timed([])
        print(f"first run:  {first_wall:7.1f} s, {first_sent} requests reached the server, "
              f"{first['summary']['jobs_per_s']:.0f} jobs/s, {first['cache']['stored']} answers cached")
        step = max(1, a.jobs // a.edits)
        edited = set(range(0, step * a.edits, step))
        with open(jobs, "w") as f:
            f.write("\n".join(lines(a.jobs, edited)) + "\n")
        rerun_wall, rerun_sent, rerun = timed(["--restart"])
        results = sum(1 for _ in open(os.path.join(work, "out.jsonl")))
        print(f"rerun:      {rerun_wall:7.1f} s, {rerun_sent} requests reached the server "
              f"({len(edited)} lines edited), {rerun['cache']['hits']} answered from the cache, "
              f"{results} results in the output")
        print(f"rerun / first run: {rerun_wall / first_wall:.3f} of the time")
        stats = subprocess.run([f"{bin_dir}/inflight", "cache", "stats", "--json", "--cache-path", cache],
                               capture_output=True, text=True)
        s = json.loads(stats.stdout)
        print(f"cache: {s['entries']} answers, integrity {s['integrity']}")
        ok = rerun_sent == len(edited) and results == a.jobs and rerun_wall < 0.05 * first_wall
        print(f"verdict: {'ok' if ok else 'NOT met'} (exactly {len(edited)} sent, {a.jobs} results, under 5% of "
              f"the first run's time)")
    finally:
        sim.terminate()


if __name__ == "__main__":
    main()
