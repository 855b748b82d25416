#!/usr/bin/env python3
"""A three-step workflow on two models (A, B, A; examples/claims-flow.yaml) on a server that holds one model at
a time: per-job chaining with 1 and with 4 workers (how people run it today), `inflight run --workflow`, and the
swap-free lower bound, with inflight's time / the bound.

The bound: the sum over steps of (jobs / that step's best sustained rate with its model loaded, measured alone
at fixed concurrency levels, on the very prompts inflight sent) plus one load time for each model change in the
step order (A, B, A: three loads from cold).

    scripts/bench-workflow.py --server router [--jobs 120] [--chain-jobs 40]   # test-bed llama-server, router mode
    scripts/bench-workflow.py --server sim --jobs 2000 --chain-jobs 20 --levels 16,32,64  # Ollama simulator, 2 s loads

The simulator runs in real time by default (--scale 1): a faster clock would shrink its 2 s loads and its
latencies but not inflight's measurement windows, which have a floor of half a second.

The router runs with `--cache-ram 0`: llama-server otherwise keeps recent prompts in host memory, and the bound,
which replays inflight's prompts once per level, would skip their prefill from the second level on (it measured
the judge step at 2.86 jobs/s that way, against 2.16 without). Chaining runs over --chain-jobs jobs (per-job
figures are what compare); each method gets its own prompts, so a server's prompt cache favours none. Prints its settings and figures; asserts nothing.
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

# Measurements send the same jobs again: the response cache would answer them instead.
os.environ["INFLIGHT_CACHE"] = "off"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "inflight-target")
BIN = os.path.join(TARGET, "release")
FLOW = os.path.join(ROOT, "examples", "claims-flow.yaml")
SYSTEM = "You extract factual claims. Be brief."
MAX_TOKENS = 32


def prompts(job, out1=None, out2=None):
    """The three prompts of examples/claims-flow.yaml, as its templates render them."""
    p1 = (f"List the factual claims made by {job['speaker']} in this transcript segment, one per line, nothing "
          f"else.\n\nSegment: {job['segment']}")
    p2 = f"Which of these claims could be checked against a public record, and how?\n\n{out1}"
    p3 = f"Claims: {out1}\nCritique: {out2}\nIs at least one claim checkable? Answer yes or no."
    return p1, p2, p3


def jobs(n, tag):
    base = [json.loads(line) for line in open(os.path.join(ROOT, "examples", "segments.jsonl"))]
    return [dict(base[i % len(base)], id=f"{tag}-{i}", segment=f"{base[i % len(base)]['segment']} ({tag} {i})")
            for i in range(n)]


class Server:
    def __init__(self, url, api):
        self.url, self.api = url, api

    def chat(self, model, prompt, system=None, max_tokens=MAX_TOKENS):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        if self.api == "ollama":
            body = {"model": model, "messages": messages, "stream": False, "keep_alive": "30m",
                    "options": {"num_predict": max_tokens, "temperature": 0}}
            path = "/api/chat"
        else:
            body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
            path = "/v1/chat/completions"
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            v = json.load(r)
        return v["message"]["content"] if self.api == "ollama" else v["choices"][0]["message"]["content"]


def chain(server, job):
    p1, _, _ = prompts(job)
    o1 = server.chat("extractor", p1, SYSTEM)
    o2 = server.chat("critic", prompts(job, o1)[1])
    server.chat("extractor", prompts(job, o1, o2)[2])


def time_chaining(server, todo, workers):
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda j: chain(server, j), todo))
    return time.monotonic() - start


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def inflight(args, cwd):
    start = time.monotonic()
    out = subprocess.run([os.path.join(BIN, "inflight"), "run", *args, "-q"], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"inflight failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return time.monotonic() - start, out.stdout


def load_time(server):
    """A switch's cost: a one-token answer right after asking the other model, minus a warm one."""
    server.chat("critic", "hi", max_tokens=1)
    start = time.monotonic()
    server.chat("extractor", "hi", max_tokens=1)
    switched = time.monotonic() - start
    start = time.monotonic()
    server.chat("extractor", "hi", max_tokens=1)
    return max(0.0, switched - (time.monotonic() - start))


def start_server(kind, scale):
    if kind == "router":
        out = subprocess.run([os.path.join(ROOT, "scripts", "testbed.sh"), "router", "-np", "4", "-t", "2", "-c", "8192",
                              "--cache-ram", "0"],
                             capture_output=True, text=True, check=True)
        url, pid = out.stdout.split()
        return Server(url, "openai"), int(pid), "llama-server router --models-max 1 -np 4 -t 2 --cache-ram 0"
    proc = subprocess.Popen([os.path.join(BIN, "inflight-sim"), "--api", "ollama", "--model", "extractor", "--model",
                             "critic", "--max-loaded-models", "1", "--load-secs", "2", "--time-scale", str(scale),
                             "--profile", "batching32"], stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    return Server(url, "ollama"), proc.pid, f"inflight-sim ollama, 1 loaded model, 2 s loads, batching32, x{scale}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", choices=["router", "sim"], default="router")
    ap.add_argument("--jobs", type=int, default=120)
    ap.add_argument("--chain-jobs", type=int, default=None, help="jobs for per-job chaining (default: --jobs)")
    ap.add_argument("--scale", type=float, default=1.0, help="simulator time scale")
    ap.add_argument("--levels", default="1,2,4,8", help="fixed levels measured for each step's best rate")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "inflight", "--bin", "inflight-sim"], cwd=ROOT,
                   check=True, env=dict(os.environ, CARGO_TARGET_DIR=TARGET))
    server, pid, desc = start_server(a.server, a.scale)
    scale = a.scale if a.server == "sim" else 1.0
    chain_jobs = a.chain_jobs or a.jobs
    print(f"server: {desc}; workflow {os.path.relpath(FLOW, ROOT)} (A, B, A; {MAX_TOKENS} tokens a step); "
          f"{a.jobs} jobs, chaining over {chain_jobs}")
    try:
        with tempfile.TemporaryDirectory() as d:
            server.chat("extractor", "hi", max_tokens=1)  # the first load from disk is not a switch
            rows = []
            for workers in (1, 4):
                t = time_chaining(server, jobs(chain_jobs, f"chain{workers}"), workers)
                rows.append((f"per-job chaining, {workers} worker{'s' if workers > 1 else ''}", t, chain_jobs))
            write_jsonl(os.path.join(d, "jobs.jsonl"), jobs(a.jobs, "inflight"))
            wall, summary = inflight(["jobs.jsonl", "--workflow", FLOW, "-o", "out.jsonl", "--server", server.url], d)
            rows.append(("inflight --workflow", wall, a.jobs))
            switches = next((l.strip() for l in summary.splitlines() if "model switches" in l), "")

            # The bound, on the prompts inflight sent: each step alone, its model loaded, at its best level.
            outs = [json.loads(line)["steps"] for line in open(os.path.join(d, "out.jsonl"))]
            by_id = {j["id"]: j for j in jobs(a.jobs, "inflight")}
            step_rows = {1: [], 2: [], 3: []}
            for line in open(os.path.join(d, "out.jsonl")):
                v = json.loads(line)
                s = v["steps"]
                p = prompts(by_id[v["id"]], s["extract"]["output"], s["critique"]["output"])
                for k in (1, 2, 3):
                    step_rows[k].append({"id": v["id"], "prompt": p[k - 1], "max_tokens": MAX_TOKENS, "temperature": 0})
            bound, parts = 0.0, []
            for k, model in ((1, "extractor"), (2, "critic"), (3, "extractor")):
                server.chat(model, "hi", max_tokens=1)
                best, best_level = 0.0, None
                for level in a.levels.split(","):
                    path = os.path.join(d, f"step{k}-{level}.jsonl")
                    write_jsonl(path, step_rows[k])
                    extra = ["--system", SYSTEM] if k == 1 else []
                    t, _ = inflight([path, "-o", path + ".out", "--server", server.url, "--model", model, "-c", level,
                                     *extra], d)
                    if len(outs) / t > best:
                        best, best_level = len(outs) / t, level
                bound += len(outs) / best
                parts.append(f"step {k} {best:.2f} jobs/s at {best_level}")
            load = load_time(server)
            bound += 3 * load
            print(f"bound: {'; '.join(parts)}; load {load:.2f} s x 3 -> {bound:.1f} s for {a.jobs} jobs "
                  f"({bound / a.jobs:.3f} s a job)")
            print(f"{'method':40} {'wall s':>9} {'s/job':>8} {'/ bound':>8}")
            for name, t, n in rows:
                print(f"{name:40} {t:9.1f} {t / n:8.3f} {t / n / (bound / a.jobs):8.2f}")
            best_chain = min(t / n for name, t, n in rows if "chaining" in name)
            mine = wall / a.jobs
            print(f"inflight: {best_chain / mine:.2f}x faster than the better chaining, {mine / (bound / a.jobs):.2f}x "
                  f"the swap-free bound; {switches}")
            if scale != 1.0:
                print(f"(simulated time runs x{scale}: multiply wall times by {scale} for the server's own time)")
    finally:
        subprocess.run(["kill", str(pid)])


if __name__ == "__main__":
    main()
