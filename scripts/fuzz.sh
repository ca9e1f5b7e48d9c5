#!/usr/bin/env bash
# Fuzz what strangers feed us (issue #9): build the cargo-fuzz targets in fuzz/ (their own
# workspace, built into fuzz/target) and run each for a bounded time.
#
#   scripts/fuzz.sh                    # every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh admission kube_inject
#
# Targets (properties in fuzz/src/*.rs):
#   admission    AdmissionReview body -> the POST /inject handler; patch applies, inject
#                twice == once, uninject restores, mesh-init accepts the injected args
#   kube_inject  multi-document YAML -> kube-inject/uninject; twice == once, uninject
#                restores, the webhook agrees with kube-inject on every template
#   lists        mesh_common::lists round trip, and mesh-init accepts what it accepts
#   log_filter   mesh_common::log::LogFilter round trip
#
# Environment:
#   FUZZ_SECONDS      seconds per target (default 60)
#   FUZZ_TIMEOUT      seconds one input may take before it counts as a hang (default 10)
#   FUZZ_RSS_MB       memory limit in MB before it counts as an OOM (default 2048)
#   FUZZ_SANITIZER    none (default) or address. Everything of ours is forbid(unsafe_code),
#                     so ASan adds little but halves the speed; address needs -Zsanitizer,
#                     which the stable toolchain only takes with RUSTC_BOOTSTRAP=1 (set
#                     here for that case only).
#   FUZZ_MINIMIZE_SECONDS  time to minimize a crashing input (default 60; 0 = don't)
#   FUZZ_KEEP_GOING=1 don't stop at the first crash (libFuzzer -fork=1 -ignore_crashes=1):
#                     collects every distinct crash found in the time given
#
# Per target it prints executions/s and whether a crash (panic, hang or OOM) was found;
# the input is kept under fuzz/artifacts/<target>/ and the script exits 1. The corpora
# (fuzz/corpus/<target>/) are seeded from webhook/testdata at every run and kept between
# runs; nothing under fuzz/{target,corpus,artifacts,logs} is committed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-10}
FUZZ_RSS_MB=${FUZZ_RSS_MB:-2048}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}
FUZZ_MINIMIZE_SECONDS=${FUZZ_MINIMIZE_SECONDS:-60}
FUZZ_KEEP_GOING=${FUZZ_KEEP_GOING:-0}
ALL_TARGETS=(admission kube_inject lists log_filter)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

FUZZ_DIR=$ROOT/fuzz
TARGET_DIR=$FUZZ_DIR/target

# --- toolchain -------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "fuzz.sh: cargo not found (install Rust with rustup)" >&2; exit 2; }
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked
fi
# libfuzzer-sys compiles libFuzzer (C++) with the system compiler.
if ! command -v c++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "fuzz.sh: installing g++ (libFuzzer is C++)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    else
        echo "fuzz.sh: a C++ compiler (c++) is needed to build libFuzzer" >&2
        exit 2
    fi
fi
case "$FUZZ_SANITIZER" in
    none) ;;
    *) export RUSTC_BOOTSTRAP=1 ;; # -Zsanitizer=... on the stable toolchain
esac
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR=$TARGET_DIR/$TRIPLE/release

# --- build (release, with debug assertions and overflow checks: cargo fuzz's default) ---
echo "== building fuzz targets (sanitizer: $FUZZ_SANITIZER) into ${TARGET_DIR#"$ROOT"/}"
cargo fuzz build --fuzz-dir "$FUZZ_DIR" --sanitizer "$FUZZ_SANITIZER" \
    --target "$TRIPLE" --target-dir "$TARGET_DIR"

# --- seeds from the golden cases ---------------------------------------------------------
MESH_FUZZ_SEEDS_FROM=$ROOT/webhook/testdata MESH_FUZZ_SEEDS_TO=$FUZZ_DIR/corpus \
    "$BIN_DIR/admission" -runs=0

# --- run ---------------------------------------------------------------------------------
mkdir -p "$FUZZ_DIR/logs"
failed=0
summary=()
for t in "${TARGETS[@]}"; do
    bin=$BIN_DIR/$t
    [ -x "$bin" ] || { echo "fuzz.sh: no such target: $t (have: ${ALL_TARGETS[*]})" >&2; exit 2; }
    corpus=$FUZZ_DIR/corpus/$t
    artifacts=$FUZZ_DIR/artifacts/$t
    log=$FUZZ_DIR/logs/$t.log
    mkdir -p "$corpus" "$artifacts"
    dict=()
    [ -f "$FUZZ_DIR/dict/$t.dict" ] && dict=("-dict=$FUZZ_DIR/dict/$t.dict")
    mode=()
    [ "$FUZZ_KEEP_GOING" = 1 ] && mode=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    before=$(ls "$artifacts")
    echo "== $t: ${FUZZ_SECONDS}s (log: ${log#"$ROOT"/})"
    set +e
    "$bin" "${dict[@]}" "${mode[@]}" -max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_TIMEOUT" \
        -rss_limit_mb="$FUZZ_RSS_MB" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "$corpus" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ -z "$rate" ]; then
        # No final stats (a crash stopped libFuzzer, or fork mode): the last status line,
        # "#N ... exec/s: R" (fork mode: "#N: ... time: Ts", so R = N / T overall).
        last=$(grep -a -E '^#[0-9]+' "$log" | tail -1 || true)
        execs=$(sed -E 's/^#([0-9]+).*/\1/' <<<"$last")
        secs=$(grep -Eo 'time: [0-9]+s' <<<"$last" | grep -Eo '[0-9]+' || true)
        if [ -n "$secs" ] && [ "$secs" -gt 0 ]; then
            rate=$((execs / secs))
        else
            rate=$(grep -Eo 'exec/s: [0-9]+' <<<"$last" | grep -Eo '[0-9]+' || true)
        fi
    fi
    # Findings are the files this run added to the artifacts folder.
    new=()
    while IFS= read -r f; do
        [ -n "$f" ] && ! grep -qxF "$f" <<<"$before" && [[ "$f" != *.min ]] && new+=("$artifacts/$f")
    done < <(ls "$artifacts")
    if [ "$rc" -eq 0 ] && [ ${#new[@]} -eq 0 ]; then
        result="no crash"
        echo "   $t: ${rate:-?} exec/s, ${execs:-?} executions, no crash"
    else
        failed=1
        kind=$(grep -a -Eo 'ERROR: libFuzzer: [a-z-]+' "$log" | head -1 | sed 's/ERROR: libFuzzer: //')
        result="CRASH (${kind:-exit $rc}): ${#new[@]} input(s): ${new[*]:-no artifact written}"
        echo "   $t: ${rate:-?} exec/s, ${execs:-?} executions, $result"
        grep -a -m3 -A1 "panicked at" "$log" | cut -c1-400 | sed "s/^/   /" || true
        for artifact in "${new[@]:0:5}"; do
            name=$(basename "$artifact")
            if [ "$FUZZ_MINIMIZE_SECONDS" -gt 0 ] && [[ "$name" == crash-* ]]; then
                min="$artifact.min"
                "$bin" -minimize_crash=1 -max_total_time="$FUZZ_MINIMIZE_SECONDS" \
                    -timeout="$FUZZ_TIMEOUT" -rss_limit_mb="$FUZZ_RSS_MB" \
                    -exact_artifact_path="$min" "$artifact" >"$log.$name.min.log" 2>&1 || true
                [ -f "$min" ] && echo "   minimized ($(wc -c <"$min") bytes): ${min#"$ROOT"/}"
            fi
            echo "   reproduce: $bin $artifact"
        done
        echo "   (or: cargo fuzz run --fuzz-dir fuzz --sanitizer $FUZZ_SANITIZER $t <input>)"
    fi
    summary+=("$(printf '%-12s %8s exec/s  %s' "$t" "${rate:-?}" "$result")")
done

echo "== summary (${FUZZ_SECONDS}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
