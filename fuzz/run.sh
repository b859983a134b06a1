#!/usr/bin/env bash
# Runs one of keel's fuzz targets for a bounded time on a stable toolchain.
#
#   fuzz/run.sh TARGET [SECONDS] [extra libFuzzer flags...]
#
# TARGET is config, config_structured, head or framing; SECONDS defaults to 600. The seed
# corpus fuzz/corpus/TARGET is copied into the working corpus fuzz/work/TARGET (kept between
# runs, not committed), so what the fuzzer adds never lands in the repository by accident.
# Crashes go to fuzz/artifacts/TARGET/. The log is fuzz/work/TARGET.log.
#
# Environment: SANITIZER (address, the default, or none), NICE (niceness, default 19),
# DEBUG_ASSERTIONS (1, the default, builds with debug assertions and overflow checks; 0 not).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${1:?usage: fuzz/run.sh TARGET [SECONDS] [libFuzzer flags...]}"
seconds="${2:-600}"
shift $(($# < 2 ? $# : 2))

if [ ! -f "$here/fuzz_targets/$target.rs" ]; then
    echo "no fuzz target '$target' (have: $(cd "$here/fuzz_targets" && ls | sed 's/\.rs$//' | tr '\n' ' '))" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes -Zsanitizer and other unstable flags; RUSTC_BOOTSTRAP lets the stable
# compiler accept them.
export RUSTC_BOOTSTRAP=1
sanitizer="${SANITIZER:-address}"
flags=(--sanitizer "$sanitizer")
if [ "${DEBUG_ASSERTIONS:-1}" = 1 ]; then
    flags+=(--debug-assertions)
fi

work="$here/work/$target"
mkdir -p "$work" "$here/artifacts/$target"
cp -n "$here/corpus/$target/"* "$work/" 2>/dev/null || true
log="$here/work/$target.log"

cd "$here"
nice -n "${NICE:-19}" cargo fuzz build "${flags[@]}" "$target"
start=$(date +%s)
set +e
nice -n "${NICE:-19}" cargo fuzz run "${flags[@]}" "$target" "$work" -- \
    -max_total_time="$seconds" -print_final_stats=1 "$@" >"$log" 2>&1
rc=$?
set -e
end=$(date +%s)

# The last status line (`#N DONE cov: ... ft: ... corp: ... exec/s: ...`), the final stats,
# and what went wrong when the run did not end cleanly.
grep -E '^#[0-9]+' "$log" | tail -n 1 || true
grep -E '^(stat::|Done )' "$log" || true
if [ "$rc" != 0 ]; then
    grep -E -A 30 '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY|artifact_prefix)' "$log" | head -n 60 || true
    grep -E 'Test unit written to' "$log" || true
fi
echo "target=$target seconds=$seconds wall=$((end - start))s exit=$rc corpus=$(ls "$work" | wc -l) artifacts=$(ls "$here/artifacts/$target" | wc -l) log=$log"
exit "$rc"
