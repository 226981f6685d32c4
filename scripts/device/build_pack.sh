#!/usr/bin/env bash
# Builds the CUDA tests and benchmarks on this machine and packs them, with the shared libraries
# the GPU machine lacks, into .pack/cuda and .pack/cuda.tar.xz (ignored by git); carry the
# tarball (8 MB; the folder is 60 MB, near the 64 MiB limit on what travels).
#   scripts/device/build_pack.sh          (BUILD_DIR=build-cuda, JOBS=2)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD_DIR:-build-cuda}
shared=${SHARED_DIR:-../shared}
targets=(test_launch_plan test_cuda_kernels test_cuda_backend cuda_attention_bench cuda_e2e_bench
         cuda_gemm_bench cuda_read_roof_bench cuda_prefill_bench spanserve_sentencepiece)
cmake -S . -B "$build" -G Ninja >/dev/null
cmake --build "$build" --target "${targets[@]}" -j "${JOBS:-2}"
rm -rf .pack/cuda
"$shared/device/pack.sh" .pack/cuda \
  "$build/tests/cuda/test_launch_plan" "$build/tests/cuda/test_cuda_kernels" \
  "$build/tests/cuda/test_cuda_backend" "$build/bench/cuda/cuda_attention_bench" \
  "$build/bench/cuda/cuda_e2e_bench" "$build/bench/cuda/cuda_gemm_bench" \
  "$build/bench/cuda/cuda_read_roof_bench" "$build/bench/cuda/cuda_prefill_bench" \
  "$build/engine/libspanserve_sentencepiece.so" >/dev/null
strip --strip-debug .pack/cuda/bin/* .pack/cuda/lib/*
# The tests find their data under the source directory compiled into them; gpu_run.sh links it.
pwd > .pack/cuda/source_dir.txt
tar -cJf .pack/cuda.tar.xz -C .pack cuda
du -sh .pack/cuda .pack/cuda.tar.xz
