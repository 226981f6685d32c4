#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with .devcarry/devpack.tar.xz carried: the
# server (build/server/spanserve, with its SentencePiece module and gRPC stubs) and the CUDA
# tests, packed here by ../shared/device/pack.sh. In parallel, in one call:
#   1. transformers references for the model families (training/tools/make_hf_references.py,
#      CPU), returned as $OUT/hf_refs.tar.gz;
#   2. the CUDA kernel and backend tests (model families: llama3 rope, Qwen2 biases, sliding
#      window), logs in $OUT/cuda_tests.log;
#   3. bench/prefix_bench.py on the GPU: TTFT with a shared 1k-token prefix, caching on and off,
#      two servers side by side on a 1B random LLaMA (bf16), $OUT/prefix_gpu.json.
# PHASE_TIMEOUT (seconds) bounds each part.
set -uo pipefail
root=$PWD
out=${OUT:-$root/gpu_results}
t=${PHASE_TIMEOUT:-150}
mkdir -p "$out"
source scripts/device/unpack_devpack.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"

(cd training/tools && timeout "$t" python3 make_hf_references.py /tmp/hf_refs \
   > "$out/hf_refs.log" 2>&1; echo "hf_refs rc=$?" >> "$out/hf_refs.log") &
refs=$!
(for test in test_cuda_kernels test_cuda_backend; do
   LD_LIBRARY_PATH=$libs timeout "$t" "$pack/bin/$test" 2>&1 | tail -40
   echo "$test rc=${PIPESTATUS[0]}"
 done > "$out/cuda_tests.log") &
tests=$!

model=/tmp/prefix_model
timeout "$t" python3 training/tools/make_random_model.py "$model" --hidden 2048 \
  --intermediate 5632 --layers 16 --heads 16 --kv-heads 8 --context 2048 --dtype bfloat16 \
  --seed 3 > "$out/prefix_gpu.log" 2>&1
SPANSERVE_BUILD_DIR=$pack PYTHONUNBUFFERED=1 timeout "$t" python3 bench/prefix_bench.py \
  --model "$model" --device cuda --memory-mb 2048 --out "$out/prefix_gpu.json" \
  >> "$out/prefix_gpu.log" 2>&1
echo "prefix_bench rc=$?" >> "$out/prefix_gpu.log"
tail -30 "$out/prefix_gpu.log"

wait $tests; cat "$out/cuda_tests.log" | grep -E 'PASSED|FAILED|rc='
wait $refs; tail -5 "$out/hf_refs.log"
[[ -d /tmp/hf_refs ]] && tar -czf "$out/hf_refs.tar.gz" -C /tmp hf_refs
ls -la "$out"
