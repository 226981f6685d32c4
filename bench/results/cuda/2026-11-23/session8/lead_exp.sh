#!/usr/bin/env bash
# Session 8 experiment: lead layouts against even splits, interleaved with SDPA.
# RUNS="ours args|cases;ours args|cases" (ours args "-": the default).
set -u
tar -xJf .pack/cuda.tar.xz -C /tmp && P=/tmp/cuda
export LD_LIBRARY_PATH=$P/lib:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [[ -n ${FILTER:-} ]]; then
  for t in test_launch_plan test_cuda_kernels test_cuda_backend; do
    timeout 300 $P/bin/$t --gtest_filter="$FILTER" 2>&1 | grep -E "^\[  (PASSED|FAILED) |FAILED|Failure|max rel" | head -20
  done
fi
i=0
IFS=';' read -ra runs <<<"$RUNS"
for run in "${runs[@]}"; do
  i=$((i+1))
  ours=${run%%|*}; cases=${run#*|}
  [[ $ours == - ]] && ours=""
  echo "== $i ours: '$ours' cases: $cases"
  timeout ${EXP_TIMEOUT:-250} python3 bench/cuda/torch_attention_bench.py --interleave $P/bin/cuda_attention_bench \
    --interleave-out $OUT/lead_$i.csv --rounds ${ROUNDS:-5} --cases $cases \
    --ours-args="$ours" --base-args="${BASE:---lead-percent=0}" 2>&1 | sed -n '/^shape /,$p' | tail -20
done
