#!/usr/bin/env bash
# Trains the shipped arithmetic model (configs/train-arith-small.json) on the GPU machine, within
# one lent call (10 minutes at most), from the repository root:
#
#   training/tools/gpu_train.sh [MINUTES] [TRAINER FLAGS...]      (default 6 minutes of training)
#
# 1. data: the range preset (arith-range, seed 303) in 16 processes, unless a warm machine kept it,
#    and the stress prompts of tools/stress_arith.py (another generator: seed 1, 600 records);
# 2. a checkpoint to resume: runs/range/checkpoint.pt if a warm machine kept it, else the pieces
#    carried in .carry/ckpt (tools/checkpoint_parts.py), else a fresh start;
# 3. training for MINUTES (a time-limited cosine: it anneals and exports within the call; on a
#    resumed run pass --fresh-schedule --lr X for a new cycle), then a greedy check per bucket
#    on validation records in both modes (--eval-per-bucket);
# 4. the export scored by bucket_eval.py on the test split (TEST_PER_BUCKET records a bucket,
#    default 100) and the stress prompts, both modes; then the same for each model directory
#    named in COMPARE (space-separated, e.g. a carried earlier export), if time is left.
# Returns under $OUT: model.tar (the export, bf16), ckpt.partNN (the checkpoint for a later
# resume), logs.tar (train.log, metrics.jsonl, device.txt, eval-*.json, eval.log); the trainer's
# last lines and the eval tables end the output.
set -uo pipefail
minutes=${1:-6}
shift || true
root=$PWD
out=${OUT:-$root/gpu_results}
mkdir -p "$out"
cd "$root/training" || exit 1
mkdir -p runs
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__)'; } | tee runs/device.txt
t0=$(date +%s)
if [[ ! -f runs/data/arith-range/train.jsonl ]]; then
  python3 -m spanserve_train.arith_data --preset arith-range --out runs/data/arith-range \
    --seed 303 --workers 16 || exit 1
fi
[[ -f runs/data/stress.jsonl ]] || python3 tools/stress_arith.py runs/data/stress.jsonl --n 600 --seed 1
echo "data ready after $(( $(date +%s) - t0 )) s"
if [[ ! -f runs/range/checkpoint.pt && -d $root/.carry/ckpt ]]; then
  python3 tools/checkpoint_parts.py join "$root/.carry/ckpt" runs/range/checkpoint.pt || exit 1
  echo "resuming from the carried checkpoint"
fi
python3 -u -m spanserve_train.train --config configs/train-arith-small.json \
  --time-limit-min "$minutes" "$@" >runs/train.log 2>&1
echo "train exit $?" >>runs/train.log
tar -cf "$out/model.tar" -C runs/range model
python3 tools/checkpoint_parts.py split runs/range/checkpoint.pt "$out" >/dev/null
cp runs/range/metrics.jsonl runs/
grep -E '^model:|^train:|^val:|resumed|time limit|^exported|exit' runs/train.log
grep -E '^step' runs/train.log | awk 'NR % 8 == 1' | tail -12
grep -A12 '^greedy by bucket' runs/train.log | tail -13
pack() { tar -cf "$out/logs.tar" -C runs train.log metrics.jsonl device.txt eval.log \
           $(cd runs && ls eval-*.json 2>/dev/null); }
: >runs/eval.log
pack
i=0
for model in runs/range/model ${COMPARE:-}; do
  python3 -u -m spanserve_train.bucket_eval --model "$model" --out "runs/eval-$i.json" \
    --data test=runs/data/arith-range/test.jsonl --per-bucket "${TEST_PER_BUCKET:-100}" \
    --data stress=runs/data/stress.jsonl 2>&1 | tee -a runs/eval.log
  i=$((i + 1))
  pack
done
ls -la "$out"
