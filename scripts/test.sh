#!/usr/bin/env bash
# README command 2: installs what spanserve needs, builds it, and runs every test: the C++ tests
# (ctest), then the Python tests and the integration tests, which start the real server, then
# the sanitizer builds and the fuzzers (scripts/sanitize.sh, scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}

scripts/install_deps.sh
scripts/build.sh
ctest --test-dir "$build_dir" --output-on-failure
SPANSERVE_BUILD_DIR="$build_dir" /usr/bin/python3 -m pytest tests/python tests/integration
# The unit tests under ASan+UBSan and TSan, the TSan server under load, then each fuzzer ~20 s.
# SPANSERVE_SKIP_SANITIZERS=1 skips both for a quick local run; CI runs them.
if [ "${SPANSERVE_SKIP_SANITIZERS:-0}" != 1 ]; then
  scripts/sanitize.sh
  scripts/fuzz.sh
fi
