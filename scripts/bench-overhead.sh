#!/usr/bin/env bash
# Overhead benchmark (issue 2): inflight against a zero-latency simulated server, with every result committed to
# SQLite, beside the raw rate wrk gets from the same server with the same number of connections.
# Prints jobs/s, the ratio to wrk, and peak RSS; then peak RSS for a 1,000,000-line input.
#   JOBS=100000 CONC=64 BIG=1000000 scripts/bench-overhead.sh
set -euo pipefail
# Measurements send the same jobs again: the response cache would answer them instead.
export INFLIGHT_CACHE=off
cd "$(dirname "$0")/.."
JOBS="${JOBS:-100000}"; CONC="${CONC:-64}"; BIG="${BIG:-1000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inflight-target}"
command -v wrk >/dev/null || { echo "installing wrk (Debian package)" >&2; apt-get install -y -qq wrk >&2; }
cargo build --release -q --bin inflight --bin inflight-sim
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d); trap 'kill $SIM 2>/dev/null; rm -rf "$work"' EXIT

exec 3< <("$bin/inflight-sim" --zero-latency)
read -r URL <&3; SIM=$!
python3 - "$work" "$JOBS" "$BIG" <<'PY'
import json, sys
work, n, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for name, count in (("jobs.jsonl", n), ("big.jsonl", big)):
    with open(f"{work}/{name}", "w") as f:
        for i in range(count):
            f.write(json.dumps({"id": f"j{i}", "prompt": f"Summarize item {i} in one line."}) + "\n")
PY

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"messages":[{"role":"user","content":"Summarize item 1 in one line."}]}'
LUA

echo "settings: $JOBS jobs, concurrency $CONC, zero-latency simulator at $URL, $(nproc) cores"
wrk_rate=$(wrk -t2 -c"$CONC" -d10s -s "$work/post.lua" "$URL/v1/chat/completions" | awk '/Requests\/sec/ {print $2}')
echo "wrk:      $wrk_rate requests/s (raw HTTP, no state)"

measure() { # input label -> prints rate and RSS
  /usr/bin/time -f "%e %M" -o "$work/time" "$bin/inflight" run "$1" -o "$work/out-$2.jsonl" --server "$URL" \
    -c "$CONC" -q > "$work/summary-$2.txt"
  read -r secs rss_kb < "$work/time"
  lines=$(wc -l < "$work/out-$2.jsonl")
  echo "$secs $rss_kb $lines"
}
read -r secs rss lines < <(measure "$work/jobs.jsonl" main)
python3 - "$JOBS" "$secs" "$rss" "$lines" "$wrk_rate" <<'PY'
import sys
n, secs, rss, lines, wrk = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
rate = n / secs
print(f"inflight: {rate:,.0f} jobs/s end to end (ingest + send + commit + output), {secs:.1f} s, {lines} result lines")
print(f"          peak RSS {rss/1024:.0f} MB; inflight/wrk = {rate/wrk:.2f}")
PY
grep -E "sustained" "$work/summary-main.txt" | sed 's/^ */          dispatch only: /'

if [ "$BIG" -gt 0 ]; then
  read -r secs rss lines < <(measure "$work/big.jsonl" big)
  echo "1M input: $BIG lines in $secs s, $lines results, peak RSS $((rss / 1024)) MB"
fi
