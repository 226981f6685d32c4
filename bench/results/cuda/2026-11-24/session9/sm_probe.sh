#!/usr/bin/env bash
# Does a one-wave tensor-core launch gain from the 4 SMs that 128 CTAs leave idle? One split a
# row, 4 query heads a KV head: group4_kv4 batch 31/32/33 = 124/128/132 CTAs of equal work, and
# LLaMA-3-8B batch 16 (128 CTAs) beside them; twice, in alternating order.
set -uo pipefail
source bench/results/cuda/2026-11-24/session9/device_env.sh
for rep in 1 2; do
  for shape in group4_kv4 llama3_8b; do
    batches="31 32 33"; [[ $shape == llama3_8b ]] && batches=16
    [[ $rep == 2 ]] && batches=$(echo $batches | tr ' ' '\n' | tac | tr '\n' ' ')
    $pack/bin/cuda_attention_bench --csv $OUT/sm_probe_${shape}_$rep.csv --shapes $shape \
      --batches $batches --contexts 2048 8192 32768 --blocks 16 128 --fractions 1 --splits 1 \
      > $OUT/sm_probe_${shape}_$rep.log 2>&1
  done
done
head -1 $OUT/sm_probe_group4_kv4_1.csv
for f in $OUT/sm_probe_*.csv; do echo "== $f"; grep -v '^shape\|summary' $f | cut -d, -f1-12; done
