#!/usr/bin/env bash
# Configures and builds spanserve into build/ (or $BUILD_DIR). Extra args go to cmake configure.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
# ccache, where installed, lets several build folders (sanitizers, fuzzers, CPU-only) share
# objects; NOHASHDIR keeps hits across folders (debug info then names the first folder).
launcher=()
if command -v ccache >/dev/null; then
  export CCACHE_NOHASHDIR=1
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache
            -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} \
  "${launcher[@]}" "$@"
# TARGETS (space-separated) builds only those; the default is everything.
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}" ${TARGETS:+--target $TARGETS}
