#!/usr/bin/env bash
# Builds every Kring fuzz target and runs each for SECONDS_PER_TARGET (default 10).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [EXTRA_LIBFUZZER_ARGS...]
#
# Exits non-zero if any target crashes, times out or runs out of memory; the
# crashing input is left in fuzz/artifacts/TARGET/. Prints per target the number of
# executions so runs can be compared.
#
# cargo-fuzz needs nightly-only flags (-Zsanitizer, ...); the toolchain here is
# stable, so RUSTC_BOOTSTRAP=1 lets it accept them. cargo-fuzz is installed if
# missing.
set -euo pipefail

secs="${1:-10}"
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [EXTRA_LIBFUZZER_ARGS...]" >&2
    exit 2
fi
shift $(( $# > 0 ? 1 : 0 ))

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir/.."
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== building fuzz targets"
cargo fuzz build
# Run the binaries just built, not `cargo fuzz run`: that rebuilds whenever a source
# file changed meanwhile (minutes per target with the sanitizer) and would fuzz code
# of another moment than the build.
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$fuzz_dir/target/$triple/release"

logs="$fuzz_dir/target/logs"
mkdir -p "$logs"
failed=()
summary=()
for target in $(cargo fuzz list); do
    corpus="$fuzz_dir/corpus/$target"
    seeds="$fuzz_dir/seeds/$target"
    mkdir -p "$corpus"
    dirs=("$corpus")
    [[ -d "$seeds" ]] && dirs+=("$seeds")
    log="$logs/$target.log"
    echo "== $target: ${secs}s (log: $log)"
    status=0
    mkdir -p "$fuzz_dir/artifacts/$target"
    "$bin_dir/$target" -artifact_prefix="$fuzz_dir/artifacts/$target/" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@" \
        "${dirs[@]}" >"$log" 2>&1 || status=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    final="$(grep -E '^#[0-9]+[[:space:]]' "$log" | tail -n 1 || true)"
    if [[ "$status" -ne 0 ]]; then
        failed+=("$target")
        summary+=("$(printf '%-14s FAILED (exit %s), executions %s' "$target" "$status" "${execs:-?}")")
        echo "   FAILED (exit $status); end of the log:"
        grep -v '^stat::' "$log" | tail -n 60 | sed 's/^/   | /'
    else
        summary+=("$(printf '%-14s ok, executions %s | %s' "$target" "${execs:-?}" "$final")")
    fi
done

echo
echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
