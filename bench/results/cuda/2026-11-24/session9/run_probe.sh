#!/usr/bin/env bash
# Run length against the one-wave and full-batch launches: each pool layout in turn, ROUNDS
# rounds, dense, batch 16 and 64 of both shapes at 8k and 32k.
set -uo pipefail
source bench/results/cuda/2026-11-24/session9/device_env.sh
res=$(mktemp -d)
layouts=("address:--pool-order address" "runs128:--pool-order runs --run-tokens 128"
         "runs512:--pool-order runs --run-tokens 512" "runs1024:--pool-order runs --run-tokens 1024"
         "runs4096:--pool-order runs --run-tokens 4096")
for round in $(seq ${ROUNDS:-3}); do
  for layout in "${layouts[@]}"; do
    name=${layout%%:*}
    $pack/bin/cuda_attention_bench --csv $res/${name}_r$round.csv ${layout#*:} --batches ${BATCHES:-16 64} \
      --contexts 8192 32768 --fractions 1 > /dev/null 2>&1 || echo "failed $name"
  done
done
cd $res && python3 - <<'PY'
import csv, glob, statistics, collections
t = collections.defaultdict(list)
names = []
for f in sorted(glob.glob('*.csv')):
    name = f.split('_')[0]
    if name not in names: names.append(name)
    for r in csv.DictReader(open(f)):
        if r.get('time_us'):
            t[(r['shape'], int(r['batch']), int(r['context']), int(r['block_size']))].append((name, float(r['time_us'])))
print('shape batch context block', *names)
for k in sorted(t):
    med = {n: statistics.median([x for m, x in t[k] if m == n]) for n in names}
    print(*k, *(f'{med[n]:.1f}' for n in names))
PY
tar -czf $OUT/run_probe.tar.gz -C $res .
