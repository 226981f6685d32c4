#!/usr/bin/env bash
# The C++ unit tests (tests/cpp) built with clang under ASan + UBSan (build-asan/) and under TSan
# (build-tsan/), then the real server built with TSan under a short gRPC load
# (tests/integration/test_tsan_server.py, which says which of its reports count). Any sanitizer
# report fails the run. CUDA and the benchmarks are off in these builds; only the test binaries
# (and the TSan server) are built.
#   SANITIZE="address,undefined thread"  the default; name one to run only it
set -euo pipefail
cd "$(dirname "$0")/.."
common=(-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DSPANSERVE_CUDA=OFF
        -DSPANSERVE_BENCH=OFF
        "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1" "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1")
# One compute thread (the OpenMP and OpenBLAS runtimes are not instrumented); UB aborts the test
# (-fno-sanitize-recover); a TSan report makes the process exit non-zero at its end.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=detect_leaks=1:detect_stack_use_after_return=1
export TSAN_OPTIONS="suppressions=$PWD/tests/sanitizers/tsan.supp second_deadlock_stack=1"
jobs=${JOBS:-$(nproc)}

for sanitizer in ${SANITIZE:-address,undefined thread}; do
  case "$sanitizer" in
    address,undefined) dir=build-asan targets=spanserve_tests ;;
    thread) dir=build-tsan targets="spanserve_tests spanserve" ;;
    *) echo "unknown sanitizer '$sanitizer'" >&2; exit 2 ;;
  esac
  echo "== $sanitizer: building $targets in $dir"
  BUILD_DIR=$dir TARGETS="$targets" JOBS=$jobs scripts/build.sh "${common[@]}" \
    -DSPANSERVE_SANITIZE="$sanitizer"
  echo "== $sanitizer: unit tests"
  ctest --test-dir "$dir" --output-on-failure -j "$jobs"
  if [ "$sanitizer" = thread ]; then
    echo "== thread: the server under gRPC load"
    SPANSERVE_BUILD_DIR=$dir SPANSERVE_TSAN_BUILD_DIR=$dir \
      /usr/bin/python3 -m pytest tests/integration/test_tsan_server.py -q
  fi
done
