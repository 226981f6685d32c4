#!/usr/bin/env bash
# How much of the one-wave tensor-core launch's time is the pool's layout: LLaMA-3-8B batch 16
# (and LLaMA-7B batch 16) dense, each pool order in turn, ROUNDS rounds.
set -uo pipefail
source bench/results/cuda/2026-11-24/session9/device_env.sh
res=$(mktemp -d)
for round in $(seq ${ROUNDS:-3}); do
  for order in address runs shuffled; do
    for shape in llama3_8b llama7b; do
      $pack/bin/cuda_attention_bench --csv $res/${order}_${shape}_r$round.csv --pool-order $order \
        --shapes $shape --batches 16 --contexts 8192 32768 --fractions 1 > /dev/null 2>&1 || echo "failed $order"
    done
  done
done
cd $res && python3 - <<'PY'
import csv, glob, statistics, collections
t = collections.defaultdict(list)
for f in glob.glob('*.csv'):
    order = f.split('_')[0]
    for r in csv.DictReader(open(f)):
        if r.get('time_us'):
            t[(r['shape'], r['context'], r['block_size'], order)].append(float(r['time_us']))
for k in sorted(t):
    print(*k, ' '.join(f'{x:.1f}' for x in t[k]), f'median {statistics.median(t[k]):.1f}')
PY
tar -czf $OUT/pool_probe.tar.gz -C $res .
