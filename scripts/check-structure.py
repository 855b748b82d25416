#!/usr/bin/env python3
"""The codebase's shape, checked: no import cycle between the files of `cli/`, between `store` and `output`, or
between `dispatch` and `report`; no function over 100 lines in `cli/`; and no repeated block of six or more lines
among the places that send, acquire, read job files and set a run up (jscpd, from npm, reads Rust).

    scripts/check-structure.py            # prints what it checked; exit 1 on a finding

jscpd is installed once into ${XDG_CACHE_HOME:-~/.cache}/inflight-tools (npm, pinned version) when missing.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "crates/inflight/src"
JSCPD_VERSION = "4.0.5"
MAX_CLI_FN_LINES = 100
# The places issue 14 named: the job task and the step task, acquire, the job-file readers, the run's setup.
DUPLICATE_SCOPE = [
    "dispatch/attempt.rs", "dispatch/mod.rs", "dispatch/recorder.rs", "dispatch/probation.rs",
    "workflow/task.rs", "workflow/schedule.rs",
    "cli/run.rs", "cli/workflow.rs", "cli/session.rs", "cli/run_args.rs", "cli/bench.rs", "cli/doctor.rs",
    "store/sqlite.rs", "doctor/jobs.rs", "job/input.rs", "job/parse.rs", "job/file.rs", "cli/jobs.rs",
]
# Module pairs that must not import each other both ways.
NO_LOOP = [("store", "output"), ("dispatch", "report")]


def module_of(path: Path) -> list[str]:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def uses(path: Path) -> set[tuple[str, ...]]:
    """Module paths a file names: `use crate::a::b`, `use super::x`, and `crate::a::` in expressions."""
    # Comments (doc links included) name modules without importing them.
    text = "\n".join(line.split("//")[0] for line in path.read_text().splitlines())
    me = module_of(path)
    # A file's `super` is its parent module; a mod.rs's `super` is the parent of its own module.
    parent = me[:-1]
    found = set()
    for m in re.finditer(r"\bcrate::([a-z_]+)(?:::([a-z_]+))?", text):
        found.add(tuple(p for p in m.groups() if p))
    for m in re.finditer(r"\bsuper::([a-z_]+)", text):
        found.add(tuple(parent + [m.group(1)]))
    return found


def cycles_in(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (enough to say whether there is one, and which)."""
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def check_imports() -> list[str]:
    problems = []
    files = sorted(SRC.rglob("*.rs"))
    top: dict[str, set[str]] = {}
    cli: dict[str, set[str]] = {}
    cli_files = {p.stem for p in (SRC / "cli").glob("*.rs")}
    for f in files:
        me = module_of(f)
        if not me:
            continue
        for target in uses(f):
            if target[0] != me[0]:
                top.setdefault(me[0], set()).add(target[0])
            if me[0] == "cli" and target[0] == "cli":
                src = me[1] if len(me) > 1 else "mod"
                dst = target[1] if len(target) > 1 and target[1] in cli_files else "mod"
                if src != dst:
                    cli.setdefault(src, set()).add(dst)
        # A parent names its children with `mod x;`: the parent depends on them.
        if me[0] == "cli" and len(me) == 1:
            for child in re.findall(r"^mod ([a-z_]+);", f.read_text(), re.M):
                cli.setdefault("mod", set()).add(child)
    for a, b in NO_LOOP:
        if b in top.get(a, ()) and a in top.get(b, ()):
            problems.append(f"import loop: {a} and {b} import each other")
        else:
            print(f"ok: no import loop between {a} and {b}")
    loops = cycles_in(cli)
    for c in loops:
        problems.append("import cycle between cli files: " + " -> ".join(c))
    if not loops:
        print(f"ok: no import cycle among the {len(cli_files)} files of cli/")
    return problems


def check_function_lengths() -> list[str]:
    problems = []
    longest = (0, "")
    for f in sorted((SRC / "cli").glob("*.rs")):
        lines = f.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = re.match(r"^(\s*)(pub(\([a-z]+\))? )?(async )?fn ([a-z_0-9]+)", lines[i])
            if not m:
                i += 1
                continue
            indent, name = m.group(1), m.group(5)
            end = i
            while end < len(lines) and not (lines[end].startswith(indent + "}") and len(lines[end].rstrip()) == len(indent) + 1):
                end += 1
            n = end - i + 1
            longest = max(longest, (n, f"{f.relative_to(SRC)}:{i + 1} {name}"))
            if n > MAX_CLI_FN_LINES:
                problems.append(f"{f.relative_to(SRC)}:{i + 1}: fn {name} is {n} lines (over {MAX_CLI_FN_LINES})")
            i = end + 1
    if not problems:
        print(f"ok: no function over {MAX_CLI_FN_LINES} lines in cli/ (longest: {longest[1]}, {longest[0]} lines)")
    return problems


def jscpd() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inflight-tools" / f"jscpd-{JSCPD_VERSION}"
    exe = cache / "node_modules/.bin/jscpd"
    if not exe.exists():
        print(f"installing jscpd {JSCPD_VERSION} from npm into {cache}", file=sys.stderr)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(cache),
                        f"jscpd@{JSCPD_VERSION}"], check=True, stdout=sys.stderr)
    return exe


def check_duplicates() -> list[str]:
    files = [str(SRC / f) for f in DUPLICATE_SCOPE if (SRC / f).exists()]
    out = subprocess.run([str(jscpd()), "--min-lines", "6", "--min-tokens", "30", "--format", "rust",
                          "--reporters", "console", "--silent", *files], capture_output=True, text=True)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    clones = re.findall(r"Clone found \(rust\):\n(.*?\n.*?)\n", text, re.S)
    summary = re.search(r"Found (\d+) clones", text)
    if out.returncode != 0 or summary is None and "Clone found" in text:
        return [f"jscpd failed: {text[-500:]}"]
    if clones:
        return ["repeated block (6+ lines):\n  " + c.strip().replace(str(SRC) + "/", "") for c in clones]
    print(f"ok: no repeated block of 6+ lines among {len(files)} files (jscpd {JSCPD_VERSION}):",
          ", ".join(f for f in DUPLICATE_SCOPE if (SRC / f).exists()))
    return []


def main() -> int:
    problems = check_imports() + check_function_lengths() + check_duplicates()
    for p in problems:
        print("FAIL:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
