#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a set time, one after another, and says what each found.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   # default 600 s each, every target
#
# Not run by CI (the property tests in crates/inflight cover the same ground there). Needs the nightly toolchain;
# installs cargo-fuzz when missing. Each target starts from fuzz/corpus/TARGET (kept between runs, not
# committed), seeded from fuzz/seeds/TARGET and examples/. Prints, per target: runs executed, the coverage and
# feature counts libFuzzer reports, and crashes found (any crash, timeout or out-of-memory input libFuzzer saved
# under fuzz/artifacts/TARGET, with the command that replays it). Exit status 1 when any target crashed.
#
# Environment: CARGO_TARGET_DIR (default ~/.cache/inflight-target-fuzz); FUZZ_SANITIZER (default none: the code
# under test is safe Rust, and what the fuzzers look for are panics, overflows and debug assertions, all on in
# these builds; `address` for AddressSanitizer, at about half the speed).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-600}"
shift || true
ALL_TARGETS=(line_parser template answers)
TARGETS=("${@:-${ALL_TARGETS[@]}}")
SANITIZER="${FUZZ_SANITIZER:-none}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/inflight-target-fuzz}"

if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]  (targets: ${ALL_TARGETS[*]})" >&2
    exit 2
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: cargo-fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

echo "fuzz.sh: building ${TARGETS[*]} (sanitizer: $SANITIZER, debug assertions on)" >&2
cargo +nightly fuzz build -s "$SANITIZER" >&2

# The corpus each target starts from: the committed seeds, and the examples in the shape the target reads.
seed_corpus() {
    local target=$1 dir=fuzz/corpus/$1
    mkdir -p "$dir"
    cp fuzz/seeds/"$target"/* "$dir"/
    case "$target" in
        line_parser)
            cp examples/segments.jsonl "$dir"/example-segments.jsonl
            head -n 1 examples/segments.jsonl > "$dir"/example-segment-1.jsonl
            ;;
        template)
            { printf '\0'; cat examples/claims.j2; } > "$dir"/example-claims.j2
            { printf '\1'; head -n 1 examples/segments.jsonl; } > "$dir"/example-fields.json
            ;;
    esac
}

# A value from libFuzzer's output: the last `stat::NAME: N` line, or a field of its last status line.
final_stat() { grep -o "stat::$1: *[0-9]*" "$2" | tail -n 1 | grep -o '[0-9]*$' || echo "?"; }
status_field() { grep -o " $1: *[0-9]*" "$2" | tail -n 1 | grep -o '[0-9]*$' || echo "?"; }

LOGS="$CARGO_TARGET_DIR/fuzz-logs"
mkdir -p "$LOGS"
failed=0
summary=()
for target in "${TARGETS[@]}"; do
    seed_corpus "$target"
    mkdir -p fuzz/artifacts/"$target"
    before=$(find fuzz/artifacts/"$target" -type f | wc -l)
    log="$LOGS/$target.log"
    touch "$log.start"
    started=$(date +%s)
    echo "fuzz.sh: $target for ${SECONDS_PER_TARGET}s (log: $log)" >&2
    # One process, one thread (libFuzzer's default without -jobs/-workers): the machine is shared.
    rc=0
    cargo +nightly fuzz run -s "$SANITIZER" "$target" fuzz/corpus/"$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -dict=fuzz/json.dict -print_final_stats=1 >"$log" 2>&1 || rc=$?
    elapsed=$(($(date +%s) - started))
    after=$(find fuzz/artifacts/"$target" -type f | wc -l)
    crashes=$((after - before))
    runs=$(final_stat number_of_executed_units "$log")
    line="$target: $runs runs in ${elapsed}s, cov $(status_field cov "$log"), ft $(status_field ft "$log"),"
    line="$line corpus $(status_field corp "$log"), peak RSS $(final_stat peak_rss_mb "$log") MB, crashes $crashes"
    if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        failed=1
        line="$line  FAILED (exit $rc)"
        grep -E "^(==[0-9]+==|thread '|SUMMARY|artifact_prefix|Test unit written)" "$log" | head -n 20 >&2 || true
        newest=$(find fuzz/artifacts/"$target" -type f -newer "$log.start" 2>/dev/null | head -n 1)
        [ -n "$newest" ] && echo "  replay: cargo +nightly fuzz run -s $SANITIZER $target $newest" >&2
    fi
    summary+=("$line")
done

echo
echo "fuzz.sh: ${SECONDS_PER_TARGET}s per target, sanitizer $SANITIZER"
printf '  %s\n' "${summary[@]}"
exit "$failed"
