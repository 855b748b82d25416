#!/usr/bin/env python3
"""Prefix-aware order on the test-bed llama-server (issue 18): --prefix-order auto against off (file order).

Documents of about 400 tokens with several questions each (32 output tokens), shuffled through the file so that
no two neighbours share a document. Two server settings, each started fresh for every run (so no run finds the
other's documents cached):

  1. `-np 4 -t 2 --cache-ram 0`: no host prompt cache, only what the four slots hold; the working set (every
     document) is far larger. `--prefix-order auto` vs `off`; issue 18 asks at least 1.5x faster.
  2. `-np 4 -t 2` with the server's default prompt cache (which holds every document): issue 18 asks auto to
     be at least 0.95x as fast as file order.

Each run: `inflight run --json -c 4` (four in flight, the slots; a fixed level, so the order is the only
difference; `--concurrency auto` lets inflight tune it, as a user's default run does), wall time, jobs/s and
the prompt tokens the server took from its cache (`cached_prompt_tokens`, from its `timings.cache_n`).

    scripts/bench-prefix.py [--docs 20] [--questions 10] [--concurrency 4|auto] [--cache-ram-0-only]
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

# The same jobs run several times: the response cache would answer them instead.
os.environ["INFLIGHT_CACHE"] = "off"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "inflight-target")
BIN = os.path.join(TARGET, "release", "inflight")

WORDS = ("river mountain ledger harbor copper lantern orchard meadow signal archive quarry beacon timber "
         "compass granite willow furnace canal thistle parcel").split()


def document(i, rng):
    """About 400 tokens of text, different for each document from its first words on."""
    words = [rng.choice(WORDS) for _ in range(300)]
    return f"Report {i}: " + " ".join(words)


def write_jobs(path, docs, questions, seed):
    rng = random.Random(seed)
    texts = [document(i, rng) for i in range(docs)]
    jobs = []
    for d in range(docs):
        for q in range(questions):
            content = f"{texts[d]}\n\nQuestion {q}: which word appears most often in report {d}, and why?"
            jobs.append({"custom_id": f"d{d}q{q}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"messages": [{"role": "user", "content": content}], "max_tokens": 32,
                                  "temperature": 0}})
    # Shuffle, then push apart neighbours of the same document.
    rng.shuffle(jobs)
    for i in range(1, len(jobs)):
        if jobs[i]["custom_id"].split("q")[0] == jobs[i - 1]["custom_id"].split("q")[0]:
            j = rng.randrange(len(jobs))
            jobs[i], jobs[j] = jobs[j], jobs[i]
    with open(path, "w") as f:
        for j in jobs:
            f.write(json.dumps(j) + "\n")


def testbed(*args):
    p = subprocess.run([os.path.join(ROOT, "scripts/testbed.sh"), *args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"scripts/testbed.sh {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return p.stdout.strip().splitlines()[-1]


def one_run(work, label, jobs, server_args, order, level):
    url, pid = testbed("start", *server_args).split()
    try:
        d = os.path.join(work, label)
        os.makedirs(d)
        cmd = [BIN, "run", jobs, "-o", os.path.join(d, "out.jsonl"), "--server", url, "-q", "--json", "-c", level,
               "--prefix-order", order]
        started = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - started
        if p.returncode != 0:
            sys.exit(f"inflight failed ({p.returncode}): {p.stderr[-2000:]}")
        s = json.loads(p.stdout)["summary"]
        print(f"  {label:28} {wall:6.1f} s  {s['jobs_per_s']:5.2f} jobs/s  prompt tokens {s['prompt_tokens']:6}  "
              f"from the server's cache {s['cached_prompt_tokens']:6}", flush=True)
        return wall
    finally:
        subprocess.run(["kill", pid])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--concurrency", default="4", help="inflight's -c in every run (4: the slots; auto: its own tuning)")
    ap.add_argument("--cache-ram-0-only", action="store_true", help="only the runs with the server's prompt cache off")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "inflight"], cwd=ROOT, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": TARGET})
    testbed("setup")
    work = tempfile.mkdtemp(prefix="bench-prefix-")
    jobs = os.path.join(work, "jobs.jsonl")
    write_jobs(jobs, a.docs, a.questions, seed=7)
    n = a.docs * a.questions
    print(f"{a.docs} documents x {a.questions} questions = {n} jobs (about 400 prompt tokens, 32 output tokens), "
          f"shuffled; llama-server -np 4 -t 2, a fresh server per run; inflight -c {a.concurrency}; {os.cpu_count()} cores")
    small = ["-np", "4", "-t", "2", "-c", "4096", "--cache-ram", "0"]
    print("server prompt cache off (--cache-ram 0): only the four slots hold prompts")
    grouped = one_run(work, "--prefix-order auto", jobs, small, "auto", a.concurrency)
    file_order = one_run(work, "--prefix-order off", jobs, small, "off", a.concurrency)
    print(f"  auto is {file_order / grouped:.2f}x faster than file order (issue 18 asks >= 1.5)")
    if a.cache_ram_0_only:
        sys.exit(0 if file_order / grouped >= 1.5 else 1)
    default = ["-np", "4", "-t", "2", "-c", "4096"]
    print("server default prompt cache (holds every document)")
    grouped2 = one_run(work, "--prefix-order auto (big cache)", jobs, default, "auto", a.concurrency)
    file_order2 = one_run(work, "--prefix-order off (big cache)", jobs, default, "off", a.concurrency)
    print(f"  auto is {file_order2 / grouped2:.2f}x as fast as file order (issue 18 asks >= 0.95)")
    ok = file_order / grouped >= 1.5 and file_order2 / grouped2 >= 0.95
    print(f"verdict: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
