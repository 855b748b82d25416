#!/usr/bin/env python3
"""The chaos suite (issue 16): every fault a weekend run meets, each scenario with a one-line verdict.

Scenarios (all by default; name some to run only those):

  mix       20,000 jobs through the fault proxy, 10% of requests faulted over every kind (20 of them 100 MB
            answers), --request-timeout 5s: every job a result or an error record past --max-attempts, 0 lost,
            0 duplicated, peak RSS under 150 MB, no request held past the timeout.
  load      the same jobs straight to a batching simulator and through the proxy (10% mix, stalls included,
            --request-timeout 5s): auto's rate with faults at least 0.5x its rate without, the level it holds
            at least 0.75x.
  sigkill   SIGKILL of inflight at 50 random moments of a 20,000-job run, resumed each time: every id exactly
            once, PRAGMA integrity_check ok.
  sigint    SIGINT at 20 random moments (during ingest too, and inside a group commit held open by a test-only
            failpoint), 32 requests in flight: every answer the server gave before the drain ended is recorded
            (server answers == results after each stop); resume loses nothing.
  diskfull  state and outputs on a small tmpfs that fills mid-run (needs root to mount it): exit code 3 with the
            disk-full message; after freeing space, resume: 0 lost, 0 duplicated.

For each: jobs, results, errors, duplicates, attempts spent, peak RSS; then the verdict. Exit status 1 if any
verdict fails.

    scripts/chaos.sh [--jobs 20000] [SCENARIO...]
"""

import argparse
import collections
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

# The same jobs run again in several scenarios: the response cache would answer them instead.
os.environ["INFLIGHT_CACHE"] = "off"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "inflight-target")
BIN = os.path.join(TARGET, "release")
RSS_LIMIT_MB = 150


class Procs:
    """Background servers, stopped on exit."""

    def __init__(self):
        self.procs = []

    def start(self, argv):
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        url = p.stdout.readline().strip()
        if not url.startswith("http"):
            sys.exit(f"{argv[0]} did not start")
        return url

    def sim(self, *flags):
        return self.start([f"{BIN}/inflight-sim", *flags])

    def proxy(self, upstream, *flags):
        return self.start([f"{BIN}/inflight-fault-proxy", "--upstream", upstream, *flags])

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def write_jobs(path, n, tag="j"):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"{tag}{i}", "prompt": f"Summarize item {i}.", "max_tokens": 16}) + "\n")


def inflight(args, env=None, timeout=None):
    """Runs inflight under /usr/bin/time; returns (exit code, stdout, stderr, peak RSS in MB)."""
    rss_file = tempfile.mktemp(prefix="chaos-rss-")
    cmd = ["/usr/bin/time", "-f", "%M", "-o", rss_file, f"{BIN}/inflight", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    with open(rss_file) as f:
        rss = int(f.read().split()[-1]) / 1024
    os.unlink(rss_file)
    return out.returncode, out.stdout, out.stderr, rss


def ids_in(path):
    """The custom_ids of a JSONL output file, and how many of its lines are not whole records."""
    ids, torn = [], 0
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    ids.append(json.loads(line)["custom_id"])
                except (ValueError, KeyError):
                    torn += 1
    return ids, torn


def tally(out, n):
    """Results, errors, duplicates and lost jobs of a run's output files."""
    errors_path = out[: -len(".jsonl")] + ".errors.jsonl"
    (results, torn_r), (errors, torn_e) = ids_in(out), ids_in(errors_path)
    seen = collections.Counter(results + errors)
    duplicates = sum(c - 1 for c in seen.values() if c > 1)
    lost = n - len(seen)
    return {"results": len(results), "errors": len(errors), "duplicates": duplicates, "lost": lost,
            "torn": torn_r + torn_e}


def attempts_spent(state):
    db = sqlite3.connect(state)
    (spent,) = db.execute("SELECT COALESCE(SUM(attempts), 0) FROM jobs").fetchone()
    db.close()
    return spent


def integrity(state):
    db = sqlite3.connect(state)
    (ok,) = db.execute("PRAGMA integrity_check").fetchone()
    db.close()
    return ok


def report(name, jobs, t, attempts, rss, checks):
    """Prints the scenario's figures and its verdict; returns whether every check held."""
    print(f"  jobs {jobs}, results {t['results']}, errors {t['errors']}, duplicates {t['duplicates']}, "
          f"lost {t['lost']}, attempts spent {attempts}, peak RSS {rss:.0f} MB")
    failed = [what for what, ok in checks if not ok]
    verdict = "PASS" if not failed else "FAIL (" + "; ".join(failed) + ")"
    print(f"verdict {name}: {verdict}")
    return not failed


def scenario_mix(a, procs, work):
    sim = procs.sim("--zero-latency")
    proxy = procs.proxy(sim, "--mix", "0.10", "--huge-limit", "20", "--seed", "16", "--stall-secs", "60")
    src, out = os.path.join(work, "mix.jsonl"), os.path.join(work, "mix-out.jsonl")
    write_jobs(src, a.jobs)
    code, stdout, stderr, rss = inflight(["run", src, "-o", out, "--server", proxy, "-q", "--json",
                                          "--request-timeout", "5s"])
    stats = get_json(f"{proxy}/proxy/stats")
    faults = sum(stats["faults"].values())
    print(f"  proxy: {stats['requests']} requests, {faults} faulted ({faults / max(stats['requests'], 1):.1%}): "
          + ", ".join(f"{k} {v}" for k, v in sorted(stats["faults"].items()))
          + f"; longest held {stats['longest_held_ms'] / 1000:.1f} s")
    summary = json.loads(stdout) if stdout.strip() else {}
    c = (summary.get("concurrency") or {})
    print(f"  exit {code}; auto held {c.get('held')}, faults judged: {c.get('faults')}")
    t = tally(out, a.jobs)
    return report("mix", a.jobs, t, attempts_spent(out[:-6] + ".inflight.db"), rss, [
        ("exit 0 or 1", code in (0, 1)),
        ("no torn line", t["torn"] == 0),
        ("0 lost", t["lost"] == 0),
        ("0 duplicated", t["duplicates"] == 0),
        (f"peak RSS under {RSS_LIMIT_MB} MB", rss < RSS_LIMIT_MB),
        ("20 huge answers sent", stats["faults"].get("huge", 0) == 20),
        ("no request held past the 5 s timeout (+1 s)", stats["longest_held_ms"] <= 6000),
    ])


def auto_run(src, out, server):
    code, stdout, stderr, rss = inflight(["run", src, "-o", out, "--server", server, "-q", "--json",
                                          "--request-timeout", "5s"])
    if code not in (0, 1):
        sys.exit(f"inflight failed ({code}): {stderr[-2000:]}")
    s = json.loads(stdout)
    return s, rss


def scenario_load(a, procs, work):
    flags = ["--profile", "batching32", "--time-scale", "4"]
    sim = procs.sim(*flags)
    proxy = procs.proxy(sim, "--mix", "0.10", "--fault", "huge=0", "--seed", "5", "--stall-secs", "60")
    n = a.load_jobs
    src = os.path.join(work, "load.jsonl")
    write_jobs(src, n)
    clean, _ = auto_run(src, os.path.join(work, "load-clean.jsonl"), sim)
    faulty, rss = auto_run(src, os.path.join(work, "load-faulty.jsonl"), proxy)
    rate = lambda s: s["summary"]["jobs_per_s"]
    held = lambda s: s["concurrency"]["held"]
    r_ratio, l_ratio = rate(faulty) / rate(clean), held(faulty) / held(clean)
    print(f"  simulator {' '.join(flags)}, {n} jobs, auto, --request-timeout 5s")
    print(f"  straight:       {rate(clean):7.1f} jobs/s, held {held(clean)}")
    print(f"  through faults: {rate(faulty):7.1f} jobs/s, held {held(faulty)}; faults judged: "
          f"{faulty['concurrency']['faults']}")
    print(f"  ratios: rate {r_ratio:.2f}x, level {l_ratio:.2f}x")
    t = tally(os.path.join(work, "load-faulty.jsonl"), n)
    return report("load", n, t, attempts_spent(os.path.join(work, "load-faulty.inflight.db")), rss, [
        ("rate with faults >= 0.5x", r_ratio >= 0.5),
        ("level with faults >= 0.75x", l_ratio >= 0.75),
        ("0 lost", t["lost"] == 0),
        ("0 duplicated", t["duplicates"] == 0),
    ])


def kill_at_random(argv, sig, moments, rng, work, env=None, on_stop=None):
    """Starts `argv` again and again, sending `sig` after a random delay each time, `moments` times (or until a
    run finishes first). Returns the exit codes and the peak RSS."""
    codes, peak = [], 0.0
    for i in range(moments):
        rss_file = os.path.join(work, f"rss-{i}")
        p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file, f"{BIN}/inflight", *argv],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **(env or {})})
        delay = rng.choice([rng.uniform(0.01, 0.3), rng.uniform(0.3, 3.0)])
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            # /usr/bin/time forwards nothing: signal inflight itself, its only child.
            child = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
            for pid in child:
                os.kill(int(pid), sig)
            p.wait()
        with open(rss_file) as f:
            peak = max(peak, int(f.read().split()[-1]) / 1024)
        codes.append(p.returncode)
        if on_stop:
            on_stop(i, p.returncode, p.stderr.read())
        if p.returncode == 0:
            break
    return codes, peak


def scenario_sigkill(a, procs, work):
    # A server of some 200 jobs/s, so that 50 kills land before the run ends.
    sim = procs.sim("--profile", "batching32", "--time-scale", "2")
    src, out = os.path.join(work, "kill.jsonl"), os.path.join(work, "kill-out.jsonl")
    write_jobs(src, a.jobs)
    argv = ["run", src, "-o", out, "--server", sim, "-q"]
    codes, rss = kill_at_random(argv, signal.SIGKILL, 50, random.Random(50), work)
    kills = sum(1 for c in codes if c != 0)
    code, _, stderr, rss2 = inflight(argv)
    state = out[:-6] + ".inflight.db"
    t = tally(out, a.jobs)
    ok = integrity(state)
    print(f"  {kills} SIGKILLs (exit codes {collections.Counter(codes)}), then a run to the end: exit {code}; "
          f"integrity_check: {ok}")
    return report("sigkill", a.jobs, t, attempts_spent(state), max(rss, rss2), [
        ("50 kills landed", kills == 50),
        ("final run exit 0", code == 0),
        ("every id exactly once", t["lost"] == 0 and t["duplicates"] == 0 and t["errors"] == 0),
        ("integrity_check ok", ok == "ok"),
    ])


def scenario_sigint(a, procs, work):
    sim = procs.sim("--profile", "batching32", "--time-scale", "2")
    src, out = os.path.join(work, "int.jsonl"), os.path.join(work, "int-out.jsonl")
    write_jobs(src, a.jobs)
    state = out[:-6] + ".inflight.db"
    argv = ["run", src, "-o", out, "--server", sim, "-q", "-c", "32"]
    mismatches = []

    def check(i, code, stderr):
        answered = get_json(f"{sim}/sim/stats")["ok"]
        recorded = tally(out, a.jobs)["results"]
        if code not in (0, 130) or answered != recorded:
            mismatches.append((i, code, answered, recorded, stderr[-300:]))

    # Every other stop with group commits held open 30 ms, so the signal lands inside one.
    stops = []
    for half in range(2):
        env = {"INFLIGHT_FAILPOINT_COMMIT_MS": "30"} if half else {}
        codes, rss = kill_at_random(argv, signal.SIGINT, 10, random.Random(20 + half), work, env, check)
        stops += codes
    interrupted = sum(1 for c in stops if c == 130)
    code, _, _, rss2 = inflight(argv)
    t = tally(out, a.jobs)
    answered = get_json(f"{sim}/sim/stats")["ok"]
    print(f"  {interrupted} SIGINTs at 32 in flight (exit codes {collections.Counter(stops)}), half of them with "
          f"group commits held 30 ms; server answers == results after every stop: {not mismatches}; "
          f"then a run to the end: exit {code}, {answered} server answers for {t['results']} results")
    for m in mismatches[:5]:
        print(f"    stop {m[0]}: exit {m[1]}, server answered {m[2]}, recorded {m[3]}: {m[4]!r}")
    return report("sigint", a.jobs, t, attempts_spent(state), max(rss, rss2), [
        ("20 SIGINTs landed", interrupted == 20),
        ("every answer before the drain ended recorded", not mismatches),
        ("final run exit 0", code == 0),
        ("0 lost, 0 duplicated", t["lost"] == 0 and t["duplicates"] == 0),
    ])


def scenario_diskfull(a, procs, work):
    if os.geteuid() != 0:
        print("  skipped: mounting a tmpfs needs root")
        return True
    sim = procs.sim("--zero-latency")
    mnt = tempfile.mkdtemp(prefix="chaos-tmpfs-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", mnt], check=True)
    try:
        src, out = os.path.join(work, "full.jsonl"), os.path.join(mnt, "out.jsonl")
        write_jobs(src, a.jobs)
        argv = ["run", src, "-o", out, "--server", sim, "-q"]
        code, _, stderr, rss = inflight(argv)
        message = stderr.strip().splitlines()
        print(f"  12 MB tmpfs: exit {code}: {' / '.join(message[-2:])}")
        partial = tally(out, a.jobs)
        subprocess.run(["mount", "-o", "remount,size=256m", mnt], check=True)
        code2, _, _, rss2 = inflight(argv)
        t = tally(out, a.jobs)
        print(f"  stopped with {partial['results']} whole results and {partial['torn']} torn lines in the outputs; "
              f"after freeing space: exit {code2}")
        return report("diskfull", a.jobs, t, attempts_spent(out[:-6] + ".inflight.db"), max(rss, rss2), [
            ("exit code 3", code == 3),
            ("the message says the disk is full", "disk is full" in stderr),
            ("no half record in the outputs at the stop", partial["torn"] == 0),
            ("resume exit 0", code2 == 0),
            ("0 lost, 0 duplicated", t["lost"] == 0 and t["duplicates"] == 0),
        ])
    finally:
        subprocess.run(["umount", mnt])
        os.rmdir(mnt)


SCENARIOS = {"mix": scenario_mix, "load": scenario_load, "sigkill": scenario_sigkill, "sigint": scenario_sigint,
             "diskfull": scenario_diskfull}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--load-jobs", type=int, default=20000)
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=" | ".join(SCENARIOS))
    a = ap.parse_args()
    unknown = [s for s in a.scenarios if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario {unknown[0]!r}; the scenarios are {', '.join(SCENARIOS)}")
    chosen = a.scenarios or list(SCENARIOS)
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "inflight", "--bin", "inflight-sim",
                    "--bin", "inflight-fault-proxy"], cwd=ROOT, check=True, env={**os.environ, "CARGO_TARGET_DIR": TARGET})
    print(f"chaos: {a.jobs} jobs a scenario ({a.load_jobs} for load), {os.cpu_count()} cores")
    results = {}
    for name in chosen:
        print(f"\n== {name}")
        procs, work = Procs(), tempfile.mkdtemp(prefix=f"chaos-{name}-")
        started = time.time()
        try:
            results[name] = SCENARIOS[name](a, procs, work)
        finally:
            procs.stop()
        print(f"  ({time.time() - started:.0f} s)")
    print("\n" + "  ".join(f"{n}: {'PASS' if ok else 'FAIL'}" for n, ok in results.items()))
    sys.exit(0 if all(results.values()) else 1)


if __name__ == "__main__":
    main()
