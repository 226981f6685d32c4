#!/usr/bin/env bash
# Early copies (SplitHead::early_entries) on and off, alternating, ROUNDS times, on the dense
# and sparse grid of both shapes (shuffled pool, the backend's launch otherwise); then the
# kernel test against a build that ignores the step's written blocks (it must fail).
set -uo pipefail
res=$(mktemp -d)
source bench/results/cuda/2026-11-24/session9/device_env.sh
for round in $(seq ${ROUNDS:-3}); do
  for early in 1 0; do
    $pack/bin/cuda_attention_bench --csv $res/ab_early${early}_r$round.csv --early-copies $early \
      --fractions 1 0.125 ${AB_ARGS:-} > $res/ab_early${early}_r$round.log 2>&1 || echo "bench failed: early $early round $round"
  done
done
echo "== mutant (early entries ignore the written blocks): failures expected"
timeout 200 $pack/bin/test_cuda_kernels_mutant --gtest_filter='DecodeAttention.*' > $res/mutant.log 2>&1
echo "mutant rc $?"; grep -cE "Failure" $res/mutant.log; grep -E "^\[  (PASSED|FAILED) " $res/mutant.log | head
echo "== real build"
timeout 200 $pack/bin/test_cuda_kernels --gtest_filter='DecodeAttention.*:StepAttention.*' > $res/kernels_decode.log 2>&1
echo "rc $?"; grep -E "^\[  (PASSED|FAILED) |Failure" $res/kernels_decode.log | head
tar -czf $OUT/ab_early.tar.gz -C $res .
