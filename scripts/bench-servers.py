#!/usr/bin/env python3
"""One run over several servers (issue 17): the combined rate against the sum of each server alone.

Three simulators of different lanes and speeds. Each alone is swept over fixed concurrency levels (the best
level's jobs/s is its rate); then one `--concurrency auto` run over all three takes --jobs jobs. Prints each
server's best level and rate, the combined rate, its ratio to the sum, and the per-server counts. Then the
overhead check: the same jobs against one zero-latency simulated server at -c 64 and against four at -c 16
each (the same requests in flight), alternated --overhead-rounds times, with both rates and inflight's own CPU
time per 1,000 jobs (user + system of the inflight process alone). The four servers run in one simulator
process, the one server is the first of them: the server side then costs the same in both cases, and the
ratio measures the client's routing (`--overhead-processes` runs four processes instead: on two cores their
scheduling falls on the four-server case alone).

    scripts/bench-servers.py [--jobs 6000] [--level-jobs 400] [--overhead-only]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

# Measurements send the same jobs again: the response cache would answer them instead.
os.environ["INFLIGHT_CACHE"] = "off"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "inflight-target")
BIN = os.path.join(TARGET, "release")
SERVERS = [  # (name, simulator flags)
    ("lanes4 x2", ["--profile", "lanes4", "--time-scale", "2"]),
    ("8 lanes x3", ["--profile", "batching32", "--lanes", "8", "--time-scale", "3"]),
    ("16 lanes x4", ["--profile", "batching32", "--lanes", "16", "--time-scale", "4"]),
]
LEVELS = [4, 8, 16, 32, 64]


SIM_ENV = dict(os.environ)


def start(flags, servers=1):
    """A simulator process running `servers` servers: the process and their URLs (one URL when `servers` is 1)."""
    p = subprocess.Popen([f"{BIN}/inflight-sim", "--servers", str(servers)] + flags, stdout=subprocess.PIPE,
                         text=True, env=SIM_ENV)
    urls = [p.stdout.readline().strip() for _ in range(servers)]
    return p, urls[0] if servers == 1 else urls


def jobs(path, n, tag):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"{tag}{i}", "prompt": f"Summarize item {i} ({tag}).", "max_tokens": 32}) + "\n")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(work, tag, n, urls, extra):
    src = os.path.join(work, f"{tag}.jsonl")
    if not os.path.exists(src):
        jobs(src, n, tag)
    out_path = os.path.join(work, f"{tag}-out.jsonl")
    for f in (out_path, out_path.replace(".jsonl", ".errors.jsonl"), out_path.replace(".jsonl", ".inflight.db")):
        if os.path.exists(f):
            os.remove(f)
    cmd = [f"{BIN}/inflight", "run", src, "-o", out_path, "-q", "--json"] + extra
    for u in urls:
        cmd += ["--server", u]
    cpu = children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True)
    cpu = children_cpu() - cpu
    if out.returncode != 0:
        sys.exit(f"inflight failed ({out.returncode}): {out.stderr[-2000:]}")
    summary = json.loads(out.stdout)
    summary["cpu_s"] = cpu
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=6000)
    ap.add_argument("--level-jobs", type=int, default=300)
    ap.add_argument("--overhead-jobs", type=int, default=20000)
    ap.add_argument("--overhead-rounds", type=int, default=3)
    ap.add_argument("--overhead-only", action="store_true", help="skip the three-server part")
    ap.add_argument("--overhead-processes", action="store_true",
                    help="the overhead part's four servers in four simulator processes instead of one (on two cores "
                         "four processes' scheduling falls on the four-server case only)")
    ap.add_argument("--sim-threads", type=int, help="runtime threads of each simulator (TOKIO_WORKER_THREADS; "
                    "default: one a core). Four simulators on two cores each start two by default")
    a = ap.parse_args()
    if a.sim_threads:
        SIM_ENV["TOKIO_WORKER_THREADS"] = str(a.sim_threads)
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "inflight", "--bin", "inflight-sim"], cwd=ROOT,
                   check=True, env={**os.environ, "CARGO_TARGET_DIR": TARGET})
    work = tempfile.mkdtemp(prefix="bench-servers-")
    procs = []
    try:
        urls = []
        for _, flags in ([] if a.overhead_only else SERVERS):
            p, u = start(flags)
            procs.append(p)
            urls.append(u)
        if urls:
            print(f"settings: {a.jobs} jobs of 32 tokens, {os.cpu_count()} cores; each server alone at levels "
                  f"{LEVELS}, {a.level_jobs} jobs a level")
        best_sum = 0.0
        for (name, _), url in zip(SERVERS if urls else [], urls):
            rates = {}
            for level in LEVELS:
                s = run(work, f"alone{len(rates)}{name[:2]}", a.level_jobs, [url], ["-c", str(level)])
                rates[level] = s["summary"]["jobs_per_s"]
            level = max(rates, key=rates.get)
            best_sum += rates[level]
            print(f"  {name:14} alone: best fixed level {level}, {rates[level]:.1f} jobs/s "
                  f"({', '.join(f'{k}: {v:.0f}' for k, v in rates.items())})")
        if urls:
            s = run(work, "together", a.jobs, urls, [])
            rate = s["summary"]["jobs_per_s"]
            print(f"all three, --concurrency auto: {rate:.1f} jobs/s; sum of the three alone {best_sum:.1f} jobs/s; "
                  f"ratio {rate / best_sum:.3f}")
            for (name, _), share in zip(SERVERS, s["servers"]):
                print(f"  {name:14} answered {share['done']} jobs at level {share['held']}")
        for p in procs:
            p.terminate()
        procs = []
        zero = []
        if a.overhead_processes:
            for _ in range(4):
                p, u = start(["--zero-latency"])
                procs.append(p)
                zero.append(u)
        else:
            p, zero = start(["--zero-latency"], servers=4)
            procs.append(p)
        print(f"overhead: four zero-latency servers in {'four simulator processes' if a.overhead_processes else 'one simulator process'}")
        # The same 64 requests in flight in both: one server at -c 64, four at -c 16 each; alternated, so drift
        # of the machine falls on both.
        ones, fours, one_cpu, four_cpu = [], [], [], []
        for _ in range(a.overhead_rounds):
            s1 = run(work, "zero1", a.overhead_jobs, zero[:1], ["-c", "64"])
            s4 = run(work, "zero4", a.overhead_jobs, zero, ["-c", "16"])
            ones.append(s1["summary"]["jobs_per_s"])
            fours.append(s4["summary"]["jobs_per_s"])
            one_cpu.append(s1["cpu_s"] * 1000 / a.overhead_jobs)
            four_cpu.append(s4["cpu_s"] * 1000 / a.overhead_jobs)
            print(f"  round: one server {ones[-1]:.0f} jobs/s ({one_cpu[-1] * 1000:.0f} ms of inflight CPU per 1,000 "
                  f"jobs), four servers {fours[-1]:.0f} jobs/s ({four_cpu[-1] * 1000:.0f} ms)")
        one, four = statistics.median(ones), statistics.median(fours)
        c1, c4 = statistics.median(one_cpu), statistics.median(four_cpu)
        print(f"overhead, {a.overhead_jobs} jobs x {a.overhead_rounds} rounds, 64 in flight, zero-latency simulators "
              f"(medians): one server at -c 64 {one:.0f} jobs/s, four at -c 16 each {four:.0f} jobs/s "
              f"(ratio {four / one:.2f}); inflight's CPU per 1,000 jobs: one {c1 * 1000:.0f} ms, four {c4 * 1000:.0f} ms "
              f"(ratio {c4 / c1:.2f})")
    finally:
        for p in procs:
            p.terminate()


if __name__ == "__main__":
    main()
