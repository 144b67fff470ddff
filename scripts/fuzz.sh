#!/usr/bin/env bash
# Builds the cargo-fuzz targets of fuzz/ and runs each for SECONDS (default 5), one after
# another; exits non-zero on the first crash, naming its artifact. Per target it prints
# the executions and the corpus size from libFuzzer's final stats.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      # e.g. scripts/fuzz.sh 600 (long run)
#
# Runs on the stable toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags),
# with AddressSanitizer, debug assertions and overflow checks (optimised above 30 s). Seeds come from
# fuzz/corpus/<target> (read only); what the fuzzer finds goes to fuzz/corpus-run/<target>
# (git-ignored, kept between runs). Logs: $FUZZ_LOG_DIR/<target>.log (default
# fuzz/target/fuzz-logs).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-5}
shift || true
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
command -v cargo-fuzz >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo-fuzz" ] || {
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 2
}
# Brief runs (the suite's) only prove that every target builds and runs: an unoptimised
# build (ASan still on) takes a fraction of the optimised one, which compiles every crate
# with one codegen unit. Longer runs want the speed of the optimised build.
if [ "$secs" -le 30 ]; then
  flags=(--dev)
  export CARGO_PROFILE_DEV_DEBUG=0 # no debug info: 14 ASan binaries link much faster
else
  flags=(--debug-assertions)
fi
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
logs=${FUZZ_LOG_DIR:-target/fuzz-logs}
mkdir -p "$logs"
logs=$(cd "$logs" && pwd)
echo "fuzz: building ${#targets[@]} targets"
cargo fuzz build "${flags[@]}" >"$logs/build.log" 2>&1 || { tail -40 "$logs/build.log"; exit 1; }

printf '%-16s %12s %8s %8s  %s\n' target executions corpus cov result
for t in "${targets[@]}"; do
  mkdir -p "corpus-run/$t"
  log="$logs/$t.log"
  rc=0
  cargo fuzz run "${flags[@]}" "$t" "corpus-run/$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$done_line")
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
  if [ "$rc" -ne 0 ]; then
    printf '%-16s %12s %8s %8s  %s\n' "$t" "${execs:--}" "${corp:--}" "${cov:--}" "CRASH (exit $rc)"
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to' "$log" | head -8 >&2 || true
    echo "fuzz: $t crashed; log $log; reproduce with: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --debug-assertions $t artifacts/$t/<file>)" >&2
    exit 1
  fi
  printf '%-16s %12s %8s %8s  %s\n' "$t" "${execs:--}" "${corp:--}" "${cov:--}" ok
done
