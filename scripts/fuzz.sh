#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang, ASan + UBSan, into build-fuzz/) and runs each
# for FUZZ_SECONDS (default 20) on a fresh copy of its committed seed corpus
# (tests/fuzz/corpus/<target>/), one at a time. Prints each target's executions and corpus size
# (also in $FUZZ_OUT/summary.txt). Fails on any crash, sanitizer report, leak, timeout or
# out-of-memory, after naming the input that caused it (kept under $FUZZ_OUT/<target>/).
#   FUZZ_TARGETS="fuzz_a fuzz_b"  runs only those;  FUZZ_OUT  default build-fuzz/fuzz-out
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${FUZZ_BUILD_DIR:-build-fuzz}
seconds=${FUZZ_SECONDS:-20}
out=${FUZZ_OUT:-$build_dir/fuzz-out}

BUILD_DIR="$build_dir" TARGETS=spanserve_fuzzers scripts/build.sh \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DSPANSERVE_FUZZ=ON \
  -DSPANSERVE_TESTS=OFF -DSPANSERVE_BENCH=OFF -DSPANSERVE_CUDA=OFF \
  "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1" "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1"

# Every target has a seed corpus (fuzz_engine.cc is a helper, not a target).
targets=${FUZZ_TARGETS:-$(ls tests/fuzz/corpus)}
# One compute thread; leaks and UB are errors too (UBSan aborts: -fno-sanitize-recover).
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
mkdir -p "$out"
summary="$out/summary.txt"
printf '%-26s %12s %10s %12s %8s  %s\n' target executions "corp(inputs)" "corp(bytes)" seeds \
  result > "$summary"
failed=0
for target in $targets; do
  work="$out/$target"
  rm -rf "$work" && mkdir -p "$work/corpus" "$work/crashes"
  cp tests/fuzz/corpus/"$target"/* "$work/corpus/"
  dict=()
  [ -f "tests/fuzz/$target.dict" ] && dict=("-dict=tests/fuzz/$target.dict")
  log="$work/fuzz.log"
  rc=0
  "$build_dir/tests/fuzz/$target" "$work/corpus" "${dict[@]}" -max_total_time="$seconds" \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/crashes/" \
    >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  # The last status line, "#N DONE cov: C ft: F corp: INPUTS/BYTES ...", gives the corpus.
  corp=$({ grep -E '^#[0-9]+' "$log" || true; } | tail -n1 | sed -n 's|.* corp: \([0-9]*\)/\([0-9]*[a-zA-Z]*\).*|\1 \2|p')
  seeds=$(ls tests/fuzz/corpus/"$target" | wc -l)
  result=ok
  if [ "$rc" -ne 0 ]; then
    result="FAILED (exit $rc)"
    failed=1
    echo "== $target failed (exit $rc); the end of $log:"
    tail -n 60 "$log"
    grep -h 'Test unit written to' "$log" || true
    ls "$work/crashes"/* 2>/dev/null | sed 's/^/crash input: /' || true
  fi
  printf '%-26s %12s %10s %12s %8s  %s\n' "$target" "${execs:-?}" ${corp:-? ?} "$seeds" \
    "$result" | tee -a "$summary"
done
echo "== fuzz summary (${seconds} s a target; logs and inputs under $out)"
cat "$summary"
exit "$failed"
