#!/usr/bin/env bash
# Trains issue 17's document-to-summary span model (configs/train-summ-long.json) on the GPU
# machine within one lent call (10 minutes at most), from the repository root:
#
#   training/tools/gpu_train_summ.sh [MINUTES] [TRAINER FLAGS...]    (default 7 minutes)
#
# 1. data: the summ-long preset, seed DATA_SEED (default 17), in 16 processes (train LONG_DOCS,
#    default 60000, val 200, test 256 documents from disjoint seeds), unless a warm machine kept
#    it; at batch 32 (~545k tokens/s on the H100) 7 minutes are about 70k documents,
#    so 60000 is about one pass;
#    with SHORT_DOCS=N also N short documents (13-40 sentences, seed DATA_SEED + 1) mixed into
#    training; a call that goes on from an earlier one's model passes another DATA_SEED (e.g. 19)
#    to train on new documents, and carries the first call's test.jsonl.gz to serve;
# 2. the span tokenizer (SentencePiece, 4000 pieces, digits split) from 2000 training records,
#    unless one is carried in models/summ-long/tokenizer.model (the shipped one: same pieces);
# 3. training from scratch for MINUTES (a time-limited cosine: it anneals and exports within
#    the call), resuming runs/summ-long/checkpoint.pt if a warm machine kept it.
# With PROFILE_STEPS=N, first 10 + N + 20 steps on the validation documents under each attention
# form (--attention mask with unaligned and 64-aligned batches, then rows), the middle N
# profiled: runs/profile-*.log; PROFILE_ONLY=1 returns them (profile_logs.tar) and stops there.
# To go on from an exported model on a fresh machine, pass --init-from DIR (its weights, a fresh
# optimizer and schedule).
# Returns under $OUT: model.partNN (a tar of the bf16 export, cut into 15 MiB parts; join with
# `cat model.part* > model.tar`), test.jsonl.gz (the held-out split, for the serving bench,
# unless .devcarry/summ holds it) and logs.tar (train.log, metrics.jsonl, device.txt, data.log).
set -uo pipefail
minutes=${1:-7}
shift || true
root=$PWD
out=${OUT:-$root/gpu_results}
mkdir -p "$out"
cd "$root/training" || exit 1
mkdir -p runs/summ-long
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__)'; } | tee runs/device.txt
t0=$(date +%s)
data=runs/data/summ-long
if [[ ! -f $data/train.jsonl ]]; then
  python3 -m spanserve_train.summ_data --preset summ-long --out "$data" --seed "${DATA_SEED:-17}" \
    --workers 16 --n-train "${LONG_DOCS:-60000}" >runs/data.log 2>&1 || { cat runs/data.log; exit 1; }
fi
train_flags=()
if [[ -n ${SHORT_DOCS:-} ]]; then
  # A curriculum mix: SHORT_DOCS documents of 13-40 sentences (3-4 kinds, seed 18) beside the
  # long ones, where a young model finds its sources among fewer distractors.
  if [[ ! -f runs/data/summ-mix/train.jsonl ]]; then
    python3 -m spanserve_train.summ_data --preset summ-long --out runs/data/summ-short --seed $((${DATA_SEED:-17} + 1)) \
      --workers 16 --n-train "$SHORT_DOCS" --n-val 1 --n-test 1 --min-sentences 13 \
      --max-sentences 40 --max-kinds 4 >>runs/data.log 2>&1 || { cat runs/data.log; exit 1; }
    mkdir -p runs/data/summ-mix
    cat "$data/train.jsonl" runs/data/summ-short/train.jsonl > runs/data/summ-mix/train.jsonl
  fi
  train_flags=(--train-data runs/data/summ-mix/train.jsonl)
fi
tokenizer=runs/summ-long/tokenizer.model
if [[ -f $root/models/summ-long/tokenizer.model ]]; then
  cp "$root/models/summ-long/tokenizer.model" "$tokenizer"
elif [[ ! -f $tokenizer ]]; then
  python3 tools/build_span_tokenizer.py "$data/train.jsonl" "$tokenizer" --vocab-size 4000 \
    --max-records 2000 >>runs/data.log 2>&1 || { cat runs/data.log; exit 1; }
fi
cat runs/data.log
echo "data and tokenizer ready after $(( $(date +%s) - t0 )) s"
if [[ -n ${PROFILE_STEPS:-} ]]; then
  for variant in ${PROFILE_VARIANTS:-mask:1 mask:64 rows:64}; do  # attention form : batch length alignment
    attention=${variant%:*} pad=${variant#*:}
    python3 -u -m spanserve_train.train --config configs/train-summ-long.json --device cuda \
      --train-data "$data/val.jsonl" --out "runs/profile-$attention-$pad" --fresh --log-every 10 \
      --workers 4 --attention "$attention" --pad-to "$pad" --profile-steps "$PROFILE_STEPS" \
      --run-steps $((30 + PROFILE_STEPS)) >"runs/profile-$attention-$pad.log" 2>&1
    echo "profile $attention pad $pad exit $?"
    grep -E '^step' "runs/profile-$attention-$pad.log" | tail -1
    grep -A12 -m1 '^ *Name' "runs/profile-$attention-$pad.log" | cut -c1-200
    grep -E 'time total:' "runs/profile-$attention-$pad.log"  # GPU busy against host time
  done
  if [[ -n ${PROFILE_ONLY:-} ]]; then  # the profiles alone: no training run
    tar -cf "$out/profile_logs.tar" -C runs device.txt data.log $(cd runs && ls profile-*.log)
    exit 0
  fi
fi
python3 -u -m spanserve_train.train --config configs/train-summ-long.json --device cuda \
  --time-limit-min "$minutes" "${train_flags[@]}" "$@" >runs/train.log 2>&1
echo "train exit $?" >>runs/train.log
tar -cf runs/model.tar -C runs/summ-long model
split -b 15M -d runs/model.tar "$out/model.part"
[[ -f $root/.devcarry/summ/test.jsonl.gz ]] || gzip -c "$data/test.jsonl" >"$out/test.jsonl.gz"
cp runs/summ-long/metrics.jsonl runs/ 2>/dev/null
tar -cf "$out/logs.tar" -C runs train.log device.txt data.log \
  $(cd runs && ls metrics.jsonl profile-*.log 2>/dev/null)
grep -E '^model:|^train:|^val:|^eval|resumed|time limit|^exported|exit|Error|error' runs/train.log | cut -c1-600
grep -E '^step' runs/train.log | awk 'NR % 4 == 1' | tail -16
grep -E '^step' runs/train.log | tail -1
ls -la "$out"
