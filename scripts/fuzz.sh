#!/usr/bin/env bash
# Fuzzes homeport's parsers of hostile input with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh [seconds-per-target] [target...]    default: 60 seconds, every target
#   scripts/fuzz.sh --cmin [target...]                  minimize the committed corpora
#   cargo run --manifest-path fuzz/Cargo.toml --example seeds   (re)write the seed-* inputs
#   scripts/fuzz.sh --list                              the targets
#
# Targets live in fuzz/fuzz_targets/, their properties in fuzz/src/lib.rs (shared with
# tests/it/parsers_prop.rs, which replays fuzz/corpus/* and fuzz/regressions/* in `cargo test`).
# Corpora in fuzz/corpus/<target>/ are committed: new inputs the fuzzer finds land there, so run
# --cmin before committing them. Crashes land in fuzz/artifacts/<target>/; copy a crash you have
# looked at to fuzz/regressions/<target>/ so it is replayed by `cargo test` from then on.
#
# Needs a nightly toolchain (sanitizer and coverage flags) and installs cargo-fuzz if missing.
set -euo pipefail

cd "$(dirname "$0")/.."
TARGETS=(wire_decoder settings token sql_classifier json_request result_decode)

if [[ "${1:-}" == "--list" ]]; then
    printf '%s\n' "${TARGETS[@]}"
    exit 0
fi

# The toolchain: `cargo +nightly` when rustup has a nightly, plain cargo when it already is one.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    CARGO=(cargo +nightly)
elif cargo --version | grep -q nightly; then
    CARGO=(cargo)
else
    echo "fuzz.sh: cargo-fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [[ "${1:-}" == "--cmin" ]]; then
    shift
    for t in "${@:-${TARGETS[@]}}"; do
        echo "== cmin $t ($(find "fuzz/corpus/$t" -type f | wc -l) inputs)"
        # Edge coverage only (no hit counters), so the committed corpora stay small.
        "${CARGO[@]}" fuzz cmin "$t" "fuzz/corpus/$t" -- -use_counters=0
        echo "   -> $(find "fuzz/corpus/$t" -type f | wc -l) inputs"
    done
    exit 0
fi

SECONDS_PER_TARGET="${1:-60}"
shift || true
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]]; then
    echo "usage: scripts/fuzz.sh [seconds-per-target] [target...] | --cmin [target...] | --list" >&2
    exit 2
fi
SELECTED=("${@:-${TARGETS[@]}}")

LOGS=fuzz/target/fuzz-logs
mkdir -p "$LOGS"
# Build first, so build errors show here and not only in a log.
if ((${#SELECTED[@]} == 1)); then
    "${CARGO[@]}" fuzz build "${SELECTED[0]}"
else
    "${CARGO[@]}" fuzz build
fi

failed=()
for t in "${SELECTED[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    args=(-max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [[ -f "fuzz/dict/$t.dict" ]] && args+=(-dict="fuzz/dict/$t.dict")
    echo "== $t: ${SECONDS_PER_TARGET}s"
    if "${CARGO[@]}" fuzz run "$t" "fuzz/corpus/$t" -- "${args[@]}" >"$LOGS/$t.log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
    fi
    # libFuzzer's last status line: runs, coverage, features, corpus size, executions per second.
    grep -E '^#[0-9]+' "$LOGS/$t.log" | tail -1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$LOGS/$t.log" || true
    echo "   $status (log: $LOGS/$t.log)"
done

if ((${#failed[@]})); then
    echo "fuzz.sh: crashes or failures in: ${failed[*]}; inputs in fuzz/artifacts/<target>/" >&2
    exit 1
fi
