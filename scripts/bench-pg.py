#!/usr/bin/env python3
"""Many machines share one run through PostgreSQL: the must-show figures.

Every worker is an `inflight run ... --state 'postgres://...?run=NAME' --server URL` process with its own
simulator (127.0.0.1 only); every part uses a fresh run name, `-m m` and `--cache off` (the response cache would
answer the same jobs instead). The database is a throwaway cluster from scripts/pg.sh, or INFLIGHT_TEST_PG's
(`postgres://USER@HOST:PORT/DB`) when set; the pgrestart part always starts its own cluster, as it restarts it.

  scale      one worker alone against one simulator capped near 150 jobs/s, on --single-jobs jobs (its rate);
             then four workers at once, each with its own such simulator, on --scale-jobs jobs (all given the
             input, started together). The combined rate (jobs / wall from the first start to the last exit)
             against 4 x the single rate (must be >= 0.95); every job exactly once in `inflight export`'s
             output, no errors; each worker's -o copy byte-equal to export's file; the jobs each worker's
             simulator answered, and their sum (== the jobs: nothing was sent twice).
  sigkill    three workers, --lease 3s, on slower simulators (~20 s); one is SIGKILLed at a random moment once
             its simulator has answered some requests; the other two finish. Every job once in export; the
             claims the killed worker held and the answers it had received; `inflight status --json` polled
             (at most ~15 s) until the dead worker shows alive=false, and its row.
  zombie     two workers, --lease 2s; one is SIGSTOPped mid-run and kept stopped until the other has exited
             (having finished every job once the stopped one's leases expired); then SIGCONT: its count of
             "answers recorded nothing" (0 when it printed none), both exit codes, every job once in export.
  pgrestart  two workers (~20 s); mid-run `scripts/pg.sh restart DIR`; both exit codes, whether each printed
             "paused" and "back", every job once in export and no errors.
  overhead   zero-latency simulators: a plain SQLite run (default state file) of --overhead-jobs jobs against one
             simulator, against four workers with the PostgreSQL state, each with its own simulator, on the
             same number of jobs in all; both rates (jobs / wall) and the ratio (must be >= 0.25).

Prints PASS/FAIL a part, with its figures; exits 1 if any part fails. Every process it starts is killed at the
end, whatever happens; every wait is bounded.

    scripts/bench-pg.py [--only scale,sigkill,zombie,pgrestart,overhead] [--seed N] [--keep]
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "inflight-target")
BIN = os.path.join(TARGET, "release")
PG_SH = os.path.join(ROOT, "scripts", "pg.sh")
PARTS = ["scale", "sigkill", "zombie", "pgrestart", "overhead"]

# lanes4 answers 64-token jobs four at a time, 2 ms (simulated) a token: about 30 jobs/s at time scale 1 for
# these short prompts, so x5 is about 150 jobs/s and x3.3 about 100 (measured and printed by the scale part).
SIM_150 = ["--profile", "lanes4", "--time-scale", "5"]
SIM_100 = ["--profile", "lanes4", "--time-scale", "3.3"]

PROCS = []  # every process started, killed at the end
FAILED = []


def log(msg=""):
    print(msg, flush=True)


def verdict(part, ok, msg):
    log(f"{'PASS' if ok else 'FAIL'} {part}: {msg}")
    if not ok:
        FAILED.append(part)


def popen(cmd, **kw):
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    PROCS.append(p)
    return p


def kill_all():
    for p in PROCS:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
            except ProcessLookupError:
                pass
    for p in PROCS:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log(f"warning: process {p.pid} ({p.args[0]}) did not exit after SIGKILL")
    PROCS.clear()


def cpu_ticks():
    """The machine's (busy, total) CPU ticks from /proc/stat: every process, PostgreSQL's and others' included."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def busy_since(t):
    b, a = cpu_ticks()
    return 100.0 * (b - t[0]) / max(1, a - t[1])


def write_jobs(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"j{i}", "prompt": f"Summarize item {i} in one sentence."}) + "\n")


# ---------------------------------------------------------------------------------------------------- simulators

class Sim:
    def __init__(self, flags):
        self.flags = flags
        self.p = popen([f"{BIN}/inflight-sim"] + flags, stdout=subprocess.PIPE, text=True)
        self.url = self.p.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"inflight-sim {flags} printed {self.url!r}")

    def stats(self):
        with urllib.request.urlopen(self.url + "/sim/stats", timeout=5) as r:
            return json.load(r)

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(timeout=10)


def sims(n, flags):
    return [Sim(flags) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------- workers

class Worker:
    def __init__(self, work, tag, jobs, state, server, extra=()):
        self.tag = tag
        self.out = os.path.join(work, f"{tag}.jsonl")
        self.stdout = os.path.join(work, f"{tag}.stdout")
        self.stderr = os.path.join(work, f"{tag}.stderr")
        self.cmd = [f"{BIN}/inflight", "run"] + ([jobs] if jobs else []) + [
            "-o", self.out, "--server", server, "-m", "m", "--cache", "off", "-q", "--json", *extra]
        if state:
            self.cmd += ["--state", state]
        self.rc = None
        self.ended = None
        self.started = time.monotonic()
        with open(self.stdout, "w") as o, open(self.stderr, "w") as e:
            self.p = popen(self.cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL)
        self.pid = self.p.pid

    def poll(self):
        if self.rc is None:
            rc = self.p.poll()
            if rc is not None:
                self.rc, self.ended = rc, time.monotonic()
        return self.rc

    def err_text(self):
        with open(self.stderr, errors="replace") as f:
            return f.read()

    def summary(self):
        try:
            with open(self.stdout) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def stale(self):
        """The count of "N answers recorded nothing" on stderr, 0 when absent."""
        for line in self.err_text().splitlines():
            if "answers recorded nothing" in line:
                try:
                    return int(line.split()[0])
                except ValueError:
                    pass
        return 0

    def lost(self):
        """(warnings, claims) of the "N claims were lost" warnings on stderr."""
        n = [int(x) for x in re.findall(r"(\d+) claims were lost", self.err_text())]
        return len(n), sum(n)

    def released(self):
        for line in self.err_text().splitlines():
            if line.startswith("released ") and "claimed jobs" in line:
                return int(line.split()[1])
        return 0

    def command(self):
        return " ".join(self.cmd)


def wait_all(workers, timeout):
    """Waits for every worker, at most `timeout` seconds; kills the ones still running then. Returns the time the
    last one exited (monotonic) and the tags of those killed for hanging."""
    deadline = time.monotonic() + timeout
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    hung = []
    for w in workers:
        if w.poll() is None:
            hung.append(w.tag)
            os.kill(w.pid, signal.SIGCONT)
            w.p.kill()
            w.p.wait(timeout=10)
            w.rc, w.ended = "hung (killed)", time.monotonic()
    ends = [w.ended for w in workers if w.ended is not None]
    return (max(ends) if ends else time.monotonic()), hung


def report_hang(workers, hung, timeout):
    for w in workers:
        if w.tag in hung:
            log(f"  ! {w.tag} still running after {timeout:.0f} s, killed: {w.command()}")
            log("    its stderr ends: " + " | ".join(w.err_text().strip().splitlines()[-5:]))


def note_lost(workers):
    """The workers' "N claims were lost (their leases expired ...)" warnings, if any: printed, as they are worth a
    look where no worker stopped (the simulators' request counts say whether any job was actually sent twice)."""
    seen = [(w.tag, *w.lost()) for w in workers if w.lost()[0]]
    if seen:
        log("  'claims were lost' warnings: " + ", ".join(f"{t} {k}x ({c} claims)" for t, k, c in seen))


def report_bad_exit(workers, ok_codes=(0,)):
    bad = False
    for w in workers:
        if w.rc not in ok_codes:
            bad = True
            log(f"  ! {w.tag} exited {w.rc}: {w.command()}")
            log("    its stderr ends: " + " | ".join(w.err_text().strip().splitlines()[-8:]))
    return bad


# ---------------------------------------------------------------------------------------------------- the database

def with_run(base, name):
    return f"{base}{'&' if '?' in base else '?'}run={name}"


def run_name(part):
    return f"bench-{part}-{os.getpid()}-{int(time.time() * 1000) % 10**9}"


def pg_start():
    out = subprocess.run([PG_SH, "start", "--owner-pid", str(os.getpid())], capture_output=True, text=True,
                         timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/pg.sh start failed: {out.stderr.strip()}")
    url, d = out.stdout.split()[:2]
    return url, d


def pg_stop(d):
    subprocess.run([PG_SH, "stop", d], capture_output=True, timeout=120)


def psql(base, sql):
    """One value from the database (psql), or None when psql cannot tell."""
    url = base.split("?")[0]
    try:
        out = subprocess.run(["psql", url, "-Atqc", sql], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def claims_of(base, name, pid):
    v = psql(base, "SELECT count(*) FROM inflight.jobs j JOIN inflight.runs r ON r.id = j.run "
                   "JOIN inflight.workers w ON w.id = j.worker "
                   f"WHERE r.name = '{name}' AND w.pid = {int(pid)} AND j.state = 1")
    return int(v) if v not in (None, "") else None


def status(state):
    out = subprocess.run([f"{BIN}/inflight", "status", "--state", state, "--json"], capture_output=True,
                         text=True, timeout=30)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {"error": f"exit {out.returncode}: {out.stderr.strip()[-300:]}"}


# ---------------------------------------------------------------------------------------------------- checks

def check_export(work, tag, state, n, workers):
    """Exports the run and checks every job j0..j{n-1} is there once, with no errors; compares each worker's -o
    copy with it. Returns (ok, text)."""
    path = os.path.join(work, f"{tag}-export.jsonl")
    err_path = path.replace(".jsonl", ".errors.jsonl")
    ex = subprocess.run([f"{BIN}/inflight", "export", "--state", state, "-o", path], capture_output=True,
                        text=True, timeout=300)
    if ex.returncode not in (0, 1) or not os.path.exists(path):
        return False, f"inflight export exited {ex.returncode}: {ex.stderr.strip()[-500:]}", []
    ids = []
    with open(path, "rb") as f:
        data = f.read()
    for line in data.splitlines():
        ids.append(json.loads(line)["custom_id"])
    errors = 0
    if os.path.exists(err_path):
        with open(err_path) as f:
            errors = sum(1 for line in f if line.strip())
    unique = set(ids)
    want = {f"j{i}" for i in range(n)}
    dupes = len(ids) - len(unique)
    missing = len(want - unique)
    ok = len(ids) == n and unique == want and errors == 0
    text = (f"export: {len(ids)} lines, {len(unique)} unique custom_ids (of {n}), {dupes} duplicates, "
            f"{missing} missing, {errors} errors")
    copies = []
    for w in workers:
        if w.out is None:
            continue
        try:
            with open(w.out, "rb") as f:
                same = f.read() == data
        except OSError:
            same = False
        wep = w.out.replace(".jsonl", ".errors.jsonl")
        werr = open(wep, "rb").read() if os.path.exists(wep) else b""
        xerr = open(err_path, "rb").read() if os.path.exists(err_path) else b""
        copies.append((w.tag, same and werr == xerr))
    if copies:
        equal = sum(1 for _, s in copies if s)
        text += f"; -o copies byte-equal to export: {equal}/{len(copies)}"
        bad = [t for t, s in copies if not s]
        if bad:
            text += f" (differ: {', '.join(bad)})"
    return ok, text, copies


# ---------------------------------------------------------------------------------------------------- parts

def part_scale(a, work, pg):
    log(f"== scale: one worker alone ({a.single_jobs} jobs), then four at once ({a.scale_jobs} jobs); simulator "
        f"{' '.join(SIM_150)} each")
    single_jobs = os.path.join(work, "scale-single-in.jsonl")
    write_jobs(single_jobs, a.single_jobs)
    sim = Sim(SIM_150)
    state = with_run(pg, run_name("scale-single"))
    c0 = cpu_ticks()
    t0 = time.monotonic()
    w = Worker(work, "scale-single", single_jobs, state, sim.url)
    end, hung = wait_all([w], a.single_jobs / 50 + 120)
    busy1 = busy_since(c0)
    report_hang([w], hung, a.single_jobs / 50 + 120)
    single = a.single_jobs / (end - t0)
    s = w.summary() or {}
    sst = sim.stats()
    sim.stop()
    held = (s.get("concurrency") or {}).get("held")
    log(f"  one worker: {single:.1f} jobs/s ({a.single_jobs} jobs in {end - t0:.2f} s, start to exit; its own "
        f"summary {s.get('summary', {}).get('jobs_per_s', float('nan')):.1f} jobs/s, auto concurrency held "
        f"{held}); its simulator answered {sst['ok']} of {sst['requests']} requests; the machine's CPUs "
        f"{busy1:.0f}% busy")
    bad = report_bad_exit([w])

    jobs = os.path.join(work, "scale-in.jsonl")
    write_jobs(jobs, a.scale_jobs)
    ss = sims(4, SIM_150)
    name = run_name("scale")
    state = with_run(pg, name)
    c0 = cpu_ticks()
    t0 = time.monotonic()
    ws = [Worker(work, f"scale-w{i}", jobs, state, ss[i].url) for i in range(4)]
    timeout = a.scale_jobs / 100 + 180
    end, hung = wait_all(ws, timeout)
    busy4 = busy_since(c0)
    report_hang(ws, hung, timeout)
    wall = end - t0
    rate = a.scale_jobs / wall
    ratio = rate / (4 * single)
    per = [x.stats() for x in ss]
    for x in ss:
        x.stop()
    bad |= report_bad_exit(ws)
    note_lost([w] + ws)
    ok_export, text, _ = check_export(work, "scale", state, a.scale_jobs, ws)
    load = open("/proc/loadavg").read().split()[:3]
    log(f"  four workers: {rate:.1f} jobs/s ({a.scale_jobs} jobs in {wall:.2f} s, first start to last exit); "
        f"4 x single = {4 * single:.1f} jobs/s; ratio {ratio:.3f} (must be >= 0.95); the machine's CPUs "
        f"{busy4:.0f}% busy, load average {' '.join(load)}")
    for x, st in zip(ws, per):
        sm = (x.summary() or {}).get("summary", {})
        log(f"    {x.tag}: exit {x.rc}, its simulator answered {st['ok']} jobs ({st['requests']} requests); "
            f"its summary: {sm.get('done')} done, {sm.get('jobs_per_s', float('nan')):.1f} jobs/s")
    total = sum(st["requests"] for st in per)
    log(f"  simulators' requests in all: {total} (== {a.scale_jobs}: nothing sent twice)")
    log(f"  {text}")
    ok = not bad and not hung and ok_export and ratio >= 0.95 and total == a.scale_jobs
    verdict("scale", ok, f"single {single:.1f} jobs/s, four {rate:.1f} jobs/s, ratio {ratio:.3f} >= 0.95: "
            f"{ratio >= 0.95}; every job once: {ok_export}; requests {total} == {a.scale_jobs}: "
            f"{total == a.scale_jobs}")


def part_sigkill(a, work, pg, rng):
    n = a.sigkill_jobs
    log(f"== sigkill: three workers, --lease 3s, {n} jobs, simulators {' '.join(SIM_100)}; one SIGKILLed mid-run")
    jobs = os.path.join(work, "sigkill-in.jsonl")
    write_jobs(jobs, n)
    ss = sims(3, SIM_100)
    name = run_name("sigkill")
    state = with_run(pg, name)
    t0 = time.monotonic()
    ws = [Worker(work, f"sigkill-w{i}", jobs, state, ss[i].url, ["--lease", "3s"]) for i in range(3)]
    victim, vsim = ws[1], ss[1]
    # A random moment: once the victim's simulator has answered between 10% and 60% of its third of the jobs.
    target = int(rng.uniform(0.1, 0.6) * n / 3)
    deadline = time.monotonic() + 120
    answered = 0
    while time.monotonic() < deadline and victim.poll() is None:
        answered = vsim.stats()["ok"]
        if answered >= target:
            break
        time.sleep(0.02)
    killed = victim.poll() is None
    claims = None
    if killed:
        os.kill(victim.pid, signal.SIGKILL)
        at = time.monotonic() - t0
        answered = vsim.stats()["ok"]
        claims = claims_of(pg, name, victim.pid)
        log(f"  SIGKILLed {victim.tag} (pid {victim.pid}) at {at:.1f} s: its simulator had answered {answered} "
            f"jobs; it held {claims if claims is not None else '?'} claims in the database")
    else:
        log(f"  ! {victim.tag} exited ({victim.rc}) before its simulator answered {target} jobs: nothing killed")
    # status, until the dead worker shows alive=false (at most ~15 s)
    row, st = None, None
    poll_end = time.monotonic() + 15
    while killed and time.monotonic() < poll_end:
        st = status(state)
        row = next((r for r in st.get("workers", []) if r.get("pid") == victim.pid), None)
        if row is not None and row.get("alive") is False:
            break
        time.sleep(0.5)
    dead_seen = row is not None and row.get("alive") is False
    log(f"  inflight status --json, {time.monotonic() - t0:.1f} s in: state {st.get('state') if st else None}, "
        f"summary {json.dumps(st.get('summary')) if st else None}")
    log(f"    the killed worker's row: {json.dumps(row)}")
    others = [w for w in ws if w is not victim]
    timeout = n / 30 + 120
    end, hung = wait_all(others, timeout)
    report_hang(others, hung, timeout)
    victim.p.wait(timeout=10)
    per = [x.stats() for x in ss]
    for x in ss:
        x.stop()
    bad = report_bad_exit(others)
    note_lost(others)
    ok_export, text, _ = check_export(work, "sigkill", state, n, others)
    total = sum(s["requests"] for s in per)
    recorded = n - sum(s["ok"] for i, s in enumerate(per) if i != 1)
    log(f"  the others exited {[w.rc for w in others]} after {end - t0:.1f} s; simulators answered "
        f"{[s['ok'] for s in per]} of {[s['requests'] for s in per]} requests (the killed worker's second); "
        f"{total} requests in all, {total - n} sent again (jobs the killed worker had sent and not recorded)")
    log(f"  the killed worker: {per[1]['requests']} requests sent, {per[1]['ok']} answered, {recorded} recorded "
        f"in the run (the jobs the others did not answer), {claims} claims held at the kill")
    log(f"  {text}")
    ok = killed and not bad and not hung and ok_export and dead_seen
    verdict("sigkill", ok, f"killed after {answered} answers holding {claims} claims; every job once: {ok_export}; "
            f"status shows it alive=false: {dead_seen}")


def part_zombie(a, work, pg, rng):
    n = a.zombie_jobs
    log(f"== zombie: two workers, --lease 2s, {n} jobs, simulators {' '.join(SIM_100)}; one SIGSTOPped until the "
        f"other exits")
    jobs = os.path.join(work, "zombie-in.jsonl")
    write_jobs(jobs, n)
    ss = sims(2, SIM_100)
    name = run_name("zombie")
    state = with_run(pg, name)
    t0 = time.monotonic()
    ws = [Worker(work, f"zombie-w{i}", jobs, state, ss[i].url, ["--lease", "2s"]) for i in range(2)]
    zombie, other = ws[1], ws[0]
    target = int(rng.uniform(0.15, 0.5) * n / 2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and zombie.poll() is None and ss[1].stats()["ok"] < target:
        time.sleep(0.02)
    stopped = zombie.poll() is None
    if stopped:
        os.kill(zombie.pid, signal.SIGSTOP)
        answered = ss[1].stats()["ok"]
        claims = claims_of(pg, name, zombie.pid)
        log(f"  SIGSTOPped {zombie.tag} at {time.monotonic() - t0:.1f} s: its simulator had answered {answered} "
            f"jobs; it held {claims if claims is not None else '?'} claims")
    else:
        log(f"  ! {zombie.tag} exited ({zombie.rc}) before it could be stopped")
    timeout = n / 30 + 120
    end, hung = wait_all([other], timeout)
    report_hang([other], hung, timeout)
    log(f"  {other.tag} exited {other.rc} at {end - t0:.1f} s (released {other.released()} claims)")
    after = ss[1].stats()
    if stopped:
        os.kill(zombie.pid, signal.SIGCONT)
        log(f"  SIGCONT {zombie.tag} at {time.monotonic() - t0:.1f} s")
    end2, hung2 = wait_all([zombie], 60)
    report_hang([zombie], hung2, 60)
    per = [x.stats() for x in ss]
    for x in ss:
        x.stop()
    stale = zombie.stale()
    log(f"  {zombie.tag} exited {zombie.rc} {end2 - end:.1f} s after SIGCONT; answers recorded nothing: {stale}; "
        f"released {zombie.released()} claims; its simulator answered {after['ok']} while it was stopped or before, "
        f"{per[1]['ok']} in all")
    bad = report_bad_exit(ws)
    note_lost(ws)
    ok_export, text, _ = check_export(work, "zombie", state, n, ws)
    total = sum(s["requests"] for s in per)
    log(f"  simulators answered {[s['ok'] for s in per]}; {total} requests in all, {total - n} sent again")
    log(f"  {text}")
    ok = stopped and not bad and not hung and not hung2 and ok_export
    verdict("zombie", ok, f"answers recorded nothing: {stale}; exits {[w.rc for w in ws]}; every job once, no "
            f"duplicates: {ok_export}")


def part_pgrestart(a, work, own):
    n = a.restart_jobs
    log(f"== pgrestart: two workers, {n} jobs, simulators {' '.join(SIM_150)}; mid-run scripts/pg.sh restart")
    if own is None:
        verdict("pgrestart", False, "no cluster of its own (scripts/pg.sh start failed)")
        return
    pg, d = own
    jobs = os.path.join(work, "pgrestart-in.jsonl")
    write_jobs(jobs, n)
    ss = sims(2, SIM_150)
    state = with_run(pg, run_name("pgrestart"))
    t0 = time.monotonic()
    ws = [Worker(work, f"pgrestart-w{i}", jobs, state, ss[i].url) for i in range(2)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and all(w.poll() is None for w in ws) and \
            sum(s.stats()["ok"] for s in ss) < n // 3:
        time.sleep(0.05)
    r0 = time.monotonic()
    answered = sum(s.stats()["ok"] for s in ss)
    rs = subprocess.run([PG_SH, "restart", d], capture_output=True, text=True, timeout=120)
    log(f"  scripts/pg.sh restart at {r0 - t0:.1f} s ({answered} jobs answered): exit {rs.returncode} after "
        f"{time.monotonic() - r0:.1f} s {rs.stderr.strip()}")
    timeout = n / 30 + 180
    end, hung = wait_all(ws, timeout)
    report_hang(ws, hung, timeout)
    for x in ss:
        x.stop()
    bad = report_bad_exit(ws)
    note_lost(ws)
    flags = []
    for w in ws:
        e = w.err_text()
        paused, back = "state database unreachable" in e, "state database back" in e
        flags.append(paused and back)
        line = next((x for x in e.splitlines() if "state database unreachable" in x), "")
        log(f"  {w.tag}: exit {w.rc}; printed paused: {paused}, back: {back}  {line[:200]}")
    ok_export, text, _ = check_export(work, "pgrestart", state, n, ws)
    log(f"  finished {end - t0:.1f} s after the start; {text}")
    ok = rs.returncode == 0 and not bad and not hung and ok_export
    verdict("pgrestart", ok, f"exits {[w.rc for w in ws]}; paused/back printed by {sum(flags)}/2; every job once, "
            f"no errors: {ok_export}")


def part_overhead(a, work, pg):
    n = a.overhead_jobs
    log(f"== overhead: zero-latency simulators, {n} jobs: SQLite (one worker) vs PostgreSQL (four workers)")
    jobs = os.path.join(work, "overhead-in.jsonl")
    write_jobs(jobs, n)
    sim = Sim(["--zero-latency"])
    c0 = cpu_ticks()
    t0 = time.monotonic()
    w = Worker(work, "overhead-sqlite", jobs, None, sim.url)
    end, hung = wait_all([w], n / 200 + 120)
    busy1 = busy_since(c0)
    report_hang([w], hung, n / 200 + 120)
    sim.stop()
    sq = n / (end - t0)
    sm = (w.summary() or {}).get("summary", {})
    bad = report_bad_exit([w])
    log(f"  SQLite, one worker: {sq:.0f} jobs/s ({end - t0:.2f} s, start to exit; its summary "
        f"{sm.get('jobs_per_s', float('nan')):.0f} jobs/s); the machine's CPUs {busy1:.0f}% busy")
    ss = sims(4, ["--zero-latency"])
    state = with_run(pg, run_name("overhead"))
    t0 = time.monotonic()
    c0 = cpu_ticks()
    ws = [Worker(work, f"overhead-pg{i}", jobs, state, ss[i].url) for i in range(4)]
    end2, hung2 = wait_all(ws, n / 100 + 180)
    busy4 = busy_since(c0)
    report_hang(ws, hung2, n / 100 + 180)
    per = [x.stats() for x in ss]
    for x in ss:
        x.stop()
    pgr = n / (end2 - t0)
    bad |= report_bad_exit(ws)
    note_lost(ws)
    ok_export, text, _ = check_export(work, "overhead", state, n, ws)
    ratio = pgr / sq
    log(f"  PostgreSQL, four workers: {pgr:.0f} jobs/s ({end2 - t0:.2f} s, first start to last exit); simulators "
        f"answered {[s['ok'] for s in per]}; the machine's CPUs {busy4:.0f}% busy")
    log(f"  {text}")
    ok = not bad and not hung and not hung2 and ok_export and ratio >= 0.25
    verdict("overhead", ok, f"SQLite {sq:.0f} jobs/s, PostgreSQL x4 {pgr:.0f} jobs/s, ratio {ratio:.2f} (must be "
            f">= 0.25); every job once: {ok_export}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(PARTS), help="parts to run, comma-separated (default: all)")
    ap.add_argument("--single-jobs", type=int, default=5000)
    ap.add_argument("--scale-jobs", type=int, default=20000)
    ap.add_argument("--sigkill-jobs", type=int, default=6000)
    ap.add_argument("--zombie-jobs", type=int, default=3000)
    ap.add_argument("--restart-jobs", type=int, default=6000)
    ap.add_argument("--overhead-jobs", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=None, help="seed of the random kill/stop moments")
    ap.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (outputs, stderr of each worker)")
    a = ap.parse_args()
    parts = [p.strip() for p in a.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {unknown}; parts: {', '.join(PARTS)}")
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    if not a.no_build:
        # Without the embedded engine (not measured here), so the build needs no llama.cpp.
        subprocess.run(["cargo", "build", "--release", "-q", "--no-default-features", "-p", "inflight", "-p",
                        "inflight-sim", "--bin", "inflight", "--bin", "inflight-sim"], cwd=ROOT, check=True,
                       env={**os.environ, "CARGO_TARGET_DIR": TARGET}, timeout=3600)
    top = tempfile.mkdtemp(prefix="bench-pg-")
    load = open("/proc/loadavg").read().split()[:3]
    log(f"{os.cpu_count()} cores, load average {' '.join(load)} at the start; seed {seed}; work in {top}")
    clusters = []
    try:
        env_pg = os.environ.get("INFLIGHT_TEST_PG")
        own = None
        if env_pg and parts != ["pgrestart"]:
            pg = env_pg
            log(f"database: INFLIGHT_TEST_PG ({pg.split('@')[-1]})")
        if not env_pg or "pgrestart" in parts:
            try:
                own = pg_start()
                clusters.append(own[1])
                log(f"own cluster: {own[0]} in {own[1]}")
            except Exception as e:  # noqa: BLE001 - reported as the parts' failure
                log(f"scripts/pg.sh start failed: {e}")
        if not env_pg:
            if own is None:
                sys.exit("no PostgreSQL: set INFLIGHT_TEST_PG or install it (scripts/pg.sh setup)")
            pg = own[0]
        for k, part in enumerate(parts):
            t = time.monotonic()
            work = os.path.join(top, f"{k + 1}-{part}")  # a part named twice (--only a,a) starts afresh
            os.makedirs(work)
            try:
                if part == "scale":
                    part_scale(a, work, pg)
                elif part == "sigkill":
                    part_sigkill(a, work, pg, rng)
                elif part == "zombie":
                    part_zombie(a, work, pg, rng)
                elif part == "pgrestart":
                    part_pgrestart(a, work, own)
                elif part == "overhead":
                    part_overhead(a, work, pg)
            except Exception as e:  # noqa: BLE001 - one part's error must not stop the others
                verdict(part, False, f"error: {type(e).__name__}: {e}")
            finally:
                kill_all()
            log(f"   ({part}: {time.monotonic() - t:.0f} s)")
    finally:
        kill_all()
        for d in clusters:
            pg_stop(d)
        if not a.keep:
            subprocess.run(["rm", "-rf", top], timeout=120)
    failed = f"; FAILED: {', '.join(FAILED)}" if FAILED else ""
    log(f"{len(parts) - len(FAILED)} of {len(parts)} parts passed{failed}")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
