#!/usr/bin/env python3
"""The embedded engine (--engine) against the best test-bed llama-server configuration, on this machine.

A. Chat: N jobs (--jobs, 400), each a speaker and a short segment of varied text (deterministic), rendered by
   one template (a fixed preamble of a few sentences plus the fields), 64 output tokens, temperature 0 by
   default (--temperature): at temperature 0 the engine and llama-server give the same answers (tests/engine.rs),
   so both runs generate the same tokens and output tokens/s compares speed alone; at the servers' default 0.8
   the answers' lengths vary from run to run by several percent, more than the gap being measured.
   1. Server sweep: llama-server at -np in --nps (1,4,8,16) x -t in --threads (1,2), `-c` = np x 1024, a fresh
      server per run; the first --screen (100) jobs at a fixed concurrency equal to np (inflight's best fixed
      level for a server with np slots). The best two configurations by output tokens/s run again with all N
      jobs; the best of those is "the best server configuration".
   2. Engine: all N jobs with `--engine MODEL --concurrency auto` (its own tuning, no other engine flags), then
      the same jobs held at the best server configuration's concurrency (what the auto tuning gains or loses).
   3. A table of every run, the engine's figures (threads and their measured rates, sequences, prefill tokens
      computed / copied from the shared prefix, where its time went), and engine tok/s / best server tok/s
      (goal: >= 1.0x must, 1.10x goal).
B. Embeddings (--embed, the default; --no-embed skips it): M (--embed-texts, 2000) short texts (5-15 words,
   deterministic). Server `-np 4 -t 2 --embeddings --pooling mean -c 4096` (a fresh one per run), swept over
   inputs per request (1, 8, 32; `"input": [...]`) x concurrency (1, 4, 8); the engine with `--pooling mean`
   and its own tuning, one text per line (it packs them); and the engine at `-c 1`, one text per line (one text
   at a time, the serialized design). Texts/s and tokens/s (summary.prompt_tokens / wall_s) for each, the best
   server combination, and engine / best server.

Rates are inflight's own (`run --json`: summary.wall_s, output_tokens_per_s, prompt_tokens). Runs happen one
after another, never two at once; the load average is printed at start and end, since other work on the
machine moves every rate here. Any failing run (exit code other than 0 or 1, or no JSON summary) stops the
script. Build the release binary first (`cargo build --release --bin inflight`); about 30-40 minutes at the
defaults on 2 cores.

    scripts/bench-engine.py [--jobs 400] [--screen 100] [--nps 1,4,8,16] [--threads 1,2] [--embed-texts 2000]
                            [--no-embed] [--skip-server] [--bin PATH] [--model PATH] [--keep DIR]

A quick try (a few minutes): scripts/bench-engine.py --jobs 12 --screen 6 --nps 1,4 --threads 2 --embed-texts 40
"""
import argparse
import atexit
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# Measurements send the same jobs again: the response cache would answer them instead.
os.environ["INFLIGHT_CACHE"] = "off"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "inflight-target")
TESTBED = os.path.join(ROOT, "scripts", "testbed.sh")
MAX_TOKENS = 64

SERVERS = []  # PIDs of the llama-servers this script started and has not stopped yet


def stop_servers():
    while SERVERS:
        pid = SERVERS.pop()
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):  # up to 10 s for it to go, then SIGKILL
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


atexit.register(stop_servers)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


KEEP_FILES = {"dir": None}  # the temporary work directory, kept when the script stops on a failure


def fail(msg):
    if KEEP_FILES["dir"]:
        msg += f"\n  (the run files are kept in {KEEP_FILES['dir']})"
        KEEP_FILES["dir"] = None
    print(f"bench-engine: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def remove_work(path):
    if KEEP_FILES["dir"]:
        shutil.rmtree(path, ignore_errors=True)


def csv_ints(text):
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


# --- inputs -------------------------------------------------------------------------------------------------

SPEAKERS = ["Ada", "Ben", "Chloe", "Dev", "Eli", "Farah", "Gus", "Hana", "Ivan", "Jun", "Kemi", "Lars"]
SUBJECTS = ["the market", "the river cleanup", "the new library", "the night bus", "the school garden",
            "the bridge repair", "the football club", "the bakery on the corner", "the recycling plan",
            "the summer festival", "the old station", "the bike lanes", "the town hall", "the clinic"]
CLAIMS = ["has {n} stalls", "opened in {y}", "removed {n} tons of plastic", "runs every {m} minutes",
          "cost {n} thousand pounds", "moved to the old station", "closes at {h} on Sundays",
          "was built by volunteers", "doubled its members since {y}", "is funded by the council",
          "took place over {m} weekends", "hired {n} new staff", "serves {n} families a week",
          "was delayed until {y}"]
OPENERS = ["People say", "My neighbour told me", "I read that", "Apparently", "Someone at work said",
           "The newsletter claims", "I heard on the radio that", "According to my sister,"]
JOINS = ["and also", "but", "and apparently", "although some say it", "and I think it"]

PREAMBLE = ("You are reading segments of transcripts recorded at a town meeting. Each segment is what one "
            "resident said about a local project or service. Some statements are facts that can be checked, "
            "others are opinions or hearsay. Your task is to list the factual claims only, one per line, in "
            "plain words, without numbering and without any comment of your own.")


def fill(rng, pattern):
    return pattern.format(n=rng.randint(2, 90), y=rng.randint(1990, 2024), m=rng.randint(2, 30),
                          h=rng.choice(["noon", "four", "six", "eight"]))


def chat_jobs(path, n):
    rng = random.Random(20240601)
    with open(path, "w") as f:
        for i in range(n):
            parts = [f"{rng.choice(OPENERS)} {rng.choice(SUBJECTS)} {fill(rng, rng.choice(CLAIMS))}"]
            for _ in range(rng.randint(0, 2)):
                parts.append(f"{rng.choice(JOINS)} {fill(rng, rng.choice(CLAIMS))}")
            segment = ", ".join(parts) + "."
            f.write(json.dumps({"id": f"seg-{i:05d}", "speaker": rng.choice(SPEAKERS), "segment": segment}) + "\n")
    return path


def template_file(path):
    with open(path, "w") as f:
        f.write(PREAMBLE + "\n\nSpeaker: {{ speaker }}\nSegment: {{ segment }}\n\nFactual claims:\n")
    return path


WORDS = ("river market library bus garden bridge club bakery plan festival station lane hall clinic school "
         "water light road park tree house table window city council street price train ticket summer winter "
         "morning evening child teacher doctor farmer music book paper coffee bread green quiet busy old new "
         "small large early late open closed cheap fresh warm cold bright dark long short").split()


def embed_texts(n):
    rng = random.Random(7)
    texts = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 15))]
        words[0] = words[0].capitalize()
        texts.append(" ".join(words) + f" {i}.")  # the number keeps every text distinct
    return texts


def embed_jobs(path, texts, per_request):
    with open(path, "w") as f:
        for i in range(0, len(texts), per_request):
            chunk = texts[i:i + per_request]
            line = {"id": f"e{i:06d}", "input": chunk[0] if per_request == 1 else chunk}
            f.write(json.dumps(line) + "\n")
    return path


# --- servers and runs -----------------------------------------------------------------------------------------


def testbed(*args):
    p = subprocess.run([TESTBED, *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0 or not p.stdout.strip():
        fail(f"scripts/testbed.sh {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout.strip().splitlines()[-1]


def start_server(args):
    url, pid = testbed("start", *args).split()
    SERVERS.append(int(pid))
    return url


class Runner:
    def __init__(self, binary, work):
        self.binary, self.work, self.count = binary, work, 0

    def run(self, label, jobs, backend, concurrency, extra=()):
        """One `inflight run --json -q` into a fresh directory; its JSON summary, with the process's seconds."""
        self.count += 1
        d = os.path.join(self.work, f"run-{self.count:02d}")
        os.makedirs(d)
        cmd = [self.binary, "run", jobs, "-o", os.path.join(d, "out.jsonl"), *backend,
               "--concurrency", str(concurrency), "--json", "-q", *extra]
        with open(os.path.join(d, "command.txt"), "w") as f:
            f.write(" ".join(cmd) + "\n")
        print(f"  run {self.count}: {label} ...", end="", flush=True)
        start = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True)
        elapsed = time.monotonic() - start
        with open(os.path.join(d, "stderr.txt"), "w") as f:
            f.write(p.stderr)
        summary = None
        for line in reversed(p.stdout.splitlines()):
            if line.startswith("{"):
                try:
                    summary = json.loads(line)
                    break
                except ValueError:
                    pass
        if p.returncode not in (0, 1) or summary is None:
            print(" FAILED", flush=True)
            why = "no JSON summary on stdout" if summary is None else f"exit code {p.returncode}"
            fail(f"run {self.count} ({label}) failed: {why}\n  command: {' '.join(cmd)}\n"
                 f"  stdout (tail): {p.stdout[-1000:]}\n  stderr (tail): {p.stderr[-3000:]}")
        s = summary["summary"]
        note = ""
        if p.returncode == 1 or s["failed"] or s["done"] < s["jobs"]:
            note = (f"  (exit {p.returncode}: {s['done']}/{s['jobs']} done, {s['failed']} failed, "
                    f"{s['bad_lines']} bad lines; see {d})")
        print(f" {s['wall_s']:.1f}s{note}", flush=True)
        summary["_process_s"] = elapsed
        summary["_dir"] = d
        return summary


def conc_text(r):
    c = r.get("concurrency") or {}
    if c.get("mode") == "auto":
        return f"auto (held {c.get('held')}{'*' if c.get('searching') else ''})"
    return str(c.get("held", "-"))


def chat_table(rows):
    print(f"{'config':<24}{'concurrency':>16}{'jobs':>6}{'wall s':>9}{'jobs/s':>9}{'output tok/s':>14}"
          f"{'process s':>11}")
    for label, r in rows:
        s = r["summary"]
        print(f"{label:<24}{conc_text(r):>16}{s['done']:>6}{s['wall_s']:>9.1f}{s['jobs_per_s']:>9.2f}"
              f"{s['output_tokens_per_s']:>14.1f}{r['_process_s']:>11.1f}")
    if any((r.get("concurrency") or {}).get("searching") for _, r in rows):
        print("  (* auto was still searching when the jobs ran out: held is its limit at the end)")


def engine_figures(r):
    e, s = r["engine"], r["summary"]
    if not e:
        print("engine: (no engine object in the summary)")
        return
    rates = ", ".join(f"{t['threads']}: {t['tokens_per_s']:.0f} tok/s" for t in e["thread_rates"]) or "not measured"
    print(f"engine: {e['threads']} threads of {e['physical_cores']} physical cores (measured: {rates})")
    print(f"engine: {e['sequences']} sequences, at most {e['max_batch_sequences']} decoded together, "
          f"batch {e['batch']}, KV cache {e['kv_tokens']} tokens, context {e['context']}")
    print(f"engine prefill: {e['prefill_tokens']} prompt tokens computed, {e['prefix_saved_tokens']} copied from "
          f"the shared prefix ({e['prefix_tokens']} tokens), {e.get('kept_tokens', 0)} kept from the sequence's "
          f"previous job; {e['decode_tokens']} decoded, {e['embed_tokens']} embedded")
    inside = e["prefill_s"] + e["decode_s"] + e["embed_s"] + e["sampling_s"] + e["waiting_s"]
    wall = s["wall_s"]
    pct = (lambda x: f" ({100 * x / wall:.0f}%)") if wall > 0 else (lambda x: "")
    print(f"engine time over {wall:.1f}s wall: prefill {e['prefill_s']:.1f}s{pct(e['prefill_s'])}, "
          f"decode {e['decode_s']:.1f}s{pct(e['decode_s'])}, embed {e['embed_s']:.1f}s{pct(e['embed_s'])}, "
          f"sampling {e['sampling_s']:.1f}s{pct(e['sampling_s'])}, waiting {e['waiting_s']:.1f}s"
          f"{pct(e['waiting_s'])}, outside the engine (dispatch, JSON, store) {wall - inside:.1f}s"
          f"{pct(wall - inside)}")
    print(f"  (the process ran {r['_process_s']:.1f}s in all: model load and thread measuring included)")
    notes = (r.get("concurrency") or {}).get("notes") or []
    for n in notes:
        print(f"  note: {n}")


def ratio_text(a, b):
    return f"{a / b:.3f}x" if b > 0 else "n/a (best server rate is 0)"


# --- the two parts ------------------------------------------------------------------------------------------------


def chat(args, runner, model):
    work = runner.work
    jobs_all = chat_jobs(os.path.join(work, f"chat-{args.jobs}.jsonl"), args.jobs)
    screen_n = min(args.screen, args.jobs)
    jobs_screen = chat_jobs(os.path.join(work, f"chat-{screen_n}.jsonl"), screen_n)  # the first K of the same
    template = template_file(os.path.join(work, "segment.j2"))
    common = ["--template", template, "--max-tokens", str(MAX_TOKENS), "--temperature", str(args.temperature)]
    rows, best = [], None
    print(f"\n== A. chat: {args.jobs} jobs, {MAX_TOKENS} output tokens, prompts rendered from one template ==",
          flush=True)
    if not args.skip_server:
        configs = [(np, t) for np in args.nps for t in args.threads]
        print(f"server sweep: {len(configs)} configurations, first {screen_n} jobs each, concurrency = np",
              flush=True)
        screens = {}
        for np, t in configs:
            label = f"server -np {np} -t {t}"
            url = start_server(["-np", str(np), "-t", str(t), "-c", str(np * 1024)])
            try:
                r = runner.run(f"{label}, {screen_n} jobs at -c {np}", jobs_screen, ["--server", url], np, common)
            finally:
                stop_servers()
            screens[(np, t)] = r
            rows.append((f"{label} (screen)", r))
        ranked = sorted(configs, key=lambda k: screens[k]["summary"]["output_tokens_per_s"], reverse=True)
        finals = {}
        print(f"best two of the screen: {', '.join(f'-np {np} -t {t}' for np, t in ranked[:2])}; "
              f"again with all {args.jobs} jobs", flush=True)
        for np, t in ranked[:2]:
            label = f"server -np {np} -t {t}"
            url = start_server(["-np", str(np), "-t", str(t), "-c", str(np * 1024)])
            try:
                r = runner.run(f"{label}, {args.jobs} jobs at -c {np}", jobs_all, ["--server", url], np, common)
            finally:
                stop_servers()
            finals[(np, t)] = r
            rows.append((label, r))
        best = max(finals, key=lambda k: finals[k]["summary"]["output_tokens_per_s"])
        best = (best, finals[best])
    print(f"engine: all {args.jobs} jobs, --concurrency auto", flush=True)
    eng = runner.run(f"engine, {args.jobs} jobs, auto", jobs_all, ["--engine", model], "auto", common)
    rows.append(("engine", eng))
    fixed = None
    if best:
        # The same jobs on the engine held at the best server configuration's concurrency: what the engine's
        # auto tuning (its own choice of sequences) gains or loses against a fixed level.
        level = best[0][0]
        print(f"engine at the best server configuration's concurrency: all {args.jobs} jobs at -c {level}",
              flush=True)
        fixed = runner.run(f"engine, {args.jobs} jobs at -c {level}", jobs_all, ["--engine", model], level, common)
        rows.append((f"engine at -c {level}", fixed))
    # Single-sequence speed, the check that the engine's kernels are built for this CPU: one job at a time on
    # the engine against the server's one-slot screens, same jobs.
    print(f"engine, one sequence: the first {screen_n} jobs at -c 1", flush=True)
    solo = runner.run(f"engine, {screen_n} jobs at -c 1", jobs_screen, ["--engine", model], 1, common)
    rows.append(("engine, one sequence (screen)", solo))

    print(f"\nchat runs ({MAX_TOKENS} max output tokens; wall s, jobs/s and tok/s are inflight's own, "
          f"process s is the whole command):")
    chat_table(rows)
    print()
    engine_figures(eng)
    rate = eng["summary"]["output_tokens_per_s"]
    if best:
        (np, t), br = best
        brate = br["summary"]["output_tokens_per_s"]
        print(f"\nbest server configuration: -np {np} -t {t} at -c {np}: {brate:.1f} output tok/s over "
              f"{br['summary']['done']} jobs")
        print(f"engine: {rate:.1f} output tok/s")
        print(f"CHAT engine / best server: {ratio_text(rate, brate)} (goal: >= 1.0x must, 1.10x goal)")
        if fixed:
            frate = fixed["summary"]["output_tokens_per_s"]
            print(f"engine held at -c {np} (not its own tuning): {frate:.1f} output tok/s, "
                  f"{ratio_text(frate, brate)} the best server")
        one_slot = [screens[k] for k in screens if k[0] == 1]
        if one_slot:
            srate = max(r["summary"]["output_tokens_per_s"] for r in one_slot)
            erate = solo["summary"]["output_tokens_per_s"]
            print(f"ONE SEQUENCE engine -c 1 / best server -np 1: {erate:.1f} / {srate:.1f} tok/s = "
                  f"{ratio_text(erate, srate)} (the engine's kernels against llama-server's -DGGML_NATIVE=ON build)")
    else:
        print(f"\nengine: {rate:.1f} output tok/s (--skip-server: no server to compare with)")


def embed(args, runner, model):
    work = runner.work
    texts = embed_texts(args.embed_texts)
    words = sum(len(t.split()) for t in texts)
    print(f"\n== B. embeddings: {len(texts)} texts of 5-15 words ({words} words), --pooling mean ==", flush=True)
    files = {}

    def jobs(per):
        if per not in files:
            files[per] = embed_jobs(os.path.join(work, f"embed-{per}.jsonl"), texts, per)
        return files[per]

    rows = []  # (label, inputs per request, summary)
    if not args.skip_server:
        server_args = ["-np", "4", "-t", "2", "--embeddings", "--pooling", "mean", "-c", "4096"]
        print(f"server sweep: llama-server {' '.join(server_args)}, inputs per request "
              f"{','.join(map(str, args.embed_per))} x concurrency {','.join(map(str, args.embed_conc))}, a fresh server "
              f"per run", flush=True)
        for per in args.embed_per:
            for c in args.embed_conc:
                url = start_server(server_args)
                try:
                    r = runner.run(f"server, {per} per request, -c {c}", jobs(per), ["--server", url], c)
                finally:
                    stop_servers()
                rows.append((f"server {per}/req", per, r))
    eng_args = ["--engine", model, "--pooling", "mean"]
    print("engine: one text per line, --concurrency auto; then -c 1 (one text at a time)", flush=True)
    eng = runner.run("engine, 1 per line, auto", jobs(1), eng_args, "auto")
    rows.append(("engine", 1, eng))
    ser = runner.run("engine, 1 per line, -c 1", jobs(1), eng_args, 1)
    rows.append(("engine, one at a time", 1, ser))

    def texts_per_s(r, per):
        s = r["summary"]
        done_texts = min(s["done"] * per, len(texts))
        return done_texts / s["wall_s"] if s["wall_s"] > 0 else 0.0

    def tokens_per_s(r):
        s = r["summary"]
        return s["prompt_tokens"] / s["wall_s"] if s["wall_s"] > 0 else 0.0

    print(f"\nembedding runs (texts/s = texts answered / wall s; tokens/s = summary.prompt_tokens / wall s):")
    print(f"{'config':<24}{'concurrency':>16}{'requests':>9}{'wall s':>9}{'texts/s':>10}{'tokens/s':>10}"
          f"{'process s':>11}")
    for label, per, r in rows:
        s = r["summary"]
        print(f"{label:<24}{conc_text(r):>16}{s['done']:>9}{s['wall_s']:>9.1f}{texts_per_s(r, per):>10.1f}"
              f"{tokens_per_s(r):>10.0f}{r['_process_s']:>11.1f}")
    print()
    engine_figures(eng)
    rate = texts_per_s(eng, 1)
    serial = texts_per_s(ser, 1)
    print(f"\nengine (auto): {rate:.1f} texts/s, {tokens_per_s(eng):.0f} tokens/s; one text at a time (-c 1): "
          f"{serial:.1f} texts/s ({ratio_text(rate, serial)} of it)")
    servers = [(label, per, r) for label, per, r in rows if label.startswith("server")]
    if servers:
        label, per, br = max(servers, key=lambda x: texts_per_s(x[2], x[1]))
        brate = texts_per_s(br, per)
        print(f"best server combination: {per} input{'s' if per > 1 else ''} per request at -c {conc_text(br)}: "
              f"{brate:.1f} texts/s, {tokens_per_s(br):.0f} tokens/s")
        print(f"EMBED engine / best server: {ratio_text(rate, brate)} texts/s "
              f"(tokens/s: {ratio_text(tokens_per_s(eng), tokens_per_s(br))})")


EMBED_PER = [1, 8, 32]
EMBED_CONC = [1, 4, 8]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=400, help="chat jobs for the full runs (400)")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="the chat jobs' temperature (0: both sides give the same answers, so the same tokens)")
    ap.add_argument("--screen", type=int, default=100, help="chat jobs per server screen run (100)")
    ap.add_argument("--embed-texts", type=int, default=2000, help="texts for the embedding runs (2000)")
    ap.add_argument("--nps", type=csv_ints, default=[1, 4, 8, 16], help="llama-server -np values (1,4,8,16)")
    ap.add_argument("--threads", type=csv_ints, default=[1, 2], help="llama-server -t values (1,2)")
    ap.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                    help="run part A, chat (default: on)")
    ap.add_argument("--embed", action=argparse.BooleanOptionalAction, default=True,
                    help="run part B, embeddings (default: on)")
    ap.add_argument("--embed-per", type=csv_ints, default=EMBED_PER,
                    help="the server sweep's inputs per request (1,8,32)")
    ap.add_argument("--embed-conc", type=csv_ints, default=EMBED_CONC,
                    help="the server sweep's concurrency levels (1,4,8)")
    ap.add_argument("--skip-server", action="store_true", help="the engine only, no llama-server runs")
    ap.add_argument("--bin", default=os.path.join(TARGET, "release", "inflight"),
                    help="the inflight binary (default: $CARGO_TARGET_DIR/release/inflight)")
    ap.add_argument("--model", help="the GGUF model (default: `scripts/testbed.sh model`)")
    ap.add_argument("--keep", metavar="DIR", help="keep every run's files (jobs, outputs, state, stderr) in DIR")
    args = ap.parse_args()
    if args.jobs < 1 or args.screen < 1 or args.embed_texts < 1:
        ap.error("--jobs, --screen and --embed-texts must be at least 1")
    if not os.access(args.bin, os.X_OK):
        fail(f"no inflight binary at {args.bin} (cargo build --release --bin inflight, or --bin PATH)")
    model = args.model or testbed("model")
    if not os.path.isfile(model):
        fail(f"no model at {model}")

    if args.keep:
        work = os.path.abspath(args.keep)
        os.makedirs(work, exist_ok=True)
        if os.listdir(work):
            fail(f"--keep {work} is not empty (every run needs a fresh output path)")
    else:
        work = tempfile.mkdtemp(prefix="bench-engine-")
        KEEP_FILES["dir"] = work
        atexit.register(remove_work, work)

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"machine: {os.cpu_count()} logical cores (nproc {len(os.sched_getaffinity(0))}), {cpu}")
    print(f"load average at start: {load}")
    print(f"inflight: {args.bin}")
    print(f"model: {model}")
    print(f"chat: {args.jobs} jobs, {MAX_TOKENS} max output tokens, temperature {args.temperature}; "
          + ("no server runs (--skip-server)" if args.skip_server else
             f"server -np {','.join(map(str, args.nps))} x -t {','.join(map(str, args.threads))} "
             f"(-c = np x 1024), screens of {min(args.screen, args.jobs)} jobs at concurrency np, best two again "
             f"with all {args.jobs}"))
    print("embeddings: " + (f"{args.embed_texts} texts" + ("" if args.skip_server else
                            f", server -np 4 -t 2, inputs per request {','.join(map(str, args.embed_per))} x "
                            f"concurrency {','.join(map(str, args.embed_conc))}") if args.embed else "off (--no-embed)"))
    print(f"work directory: {work}{'' if args.keep else ' (removed at the end; --keep DIR keeps it)'}", flush=True)

    start = time.monotonic()
    runner = Runner(args.bin, work)
    if args.chat:
        chat(args, runner, model)
    if args.embed:
        embed(args, runner, model)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    runs = f"{runner.count} run{'s' if runner.count != 1 else ''}"
    print(f"\nload average at end: {load}; {runs} in {time.monotonic() - start:.0f}s")


if __name__ == "__main__":
    main()
