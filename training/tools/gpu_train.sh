#!/usr/bin/env bash
# Trains the shipped arithmetic model on the GPU machine, in one lent call (10 minutes at most),
# and runs the LoRA round trip through transformers beside it. From the repository root, with
# .carry/arith-train.tgz carried (training/runs/data/arith-mix/{train,val}.jsonl and
# training/runs/arith-small/tokenizer.model; see training/README.md, "The shipped model"):
#
#   training/tools/gpu_train.sh [MINUTES]        (default 6.5 minutes of training)
#
# Trains configs/train-arith-small.json (runs/small) with a time-limited cosine schedule
# (--time-limit-min), so it anneals and exports within the call; MEDIUM=1 trains a 3.37M
# candidate beside it, LORA=0 skips the LoRA round trip. Returns under $OUT: candidates.tar.gz
# (each exported model, log and metrics), lora.tar.gz (the merged LoRA export with transformers'
# logits, and its log), and a summary last in the output.
set -uo pipefail
minutes=${1:-6.5}
root=$PWD
out=${OUT:-$root/gpu_results}
mkdir -p "$out"
cd "$root/training" || exit 1
tar -xzf "$root/.carry/arith-train.tgz" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee runs/device.txt
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' \
  | tee -a runs/device.txt

train() {  # name, then flags over configs/train-arith-small.json
  local name=$1; shift
  python3 -u -m spanserve_train.train --config configs/train-arith-small.json \
    --out "runs/$name" --time-limit-min "$minutes" "$@" >"runs/$name.log" 2>&1
  echo "$name exit $?" >>"runs/$name.log"
}
train small --fresh &
if [[ ${MEDIUM:-0} == 1 ]]; then  # a 3.37M candidate, as in the first run (README)
  train medium --fresh --hidden 256 --heads 4 --intermediate 704 --export-dtype bfloat16 &
fi
if [[ ${LORA:-1} == 1 ]]; then
  (python3 -u tools/lora_hf_smoke.py runs/lora --steps 200 --device cuda >runs/lora.log 2>&1;
   echo "lora exit $?" >>runs/lora.log) &
fi
wait
for name in small medium; do
  mkdir -p "runs/pack/$name"
  cp -r "runs/$name/model" "runs/$name/metrics.jsonl" "runs/$name.log" "runs/pack/$name/" 2>/dev/null
done
cp runs/device.txt runs/pack/
tar -czf "$out/candidates.tar.gz" -C runs/pack .
if [[ -f runs/lora.log ]]; then
  tar -czf "$out/lora.tar.gz" -C runs lora/run/model lora.log
  echo "== lora"; tail -4 runs/lora.log
fi
for name in small medium; do
  [[ -f runs/$name.log ]] || continue
  echo "== $name"; grep -E '^model:|^train:|time limit|^exported' "runs/$name.log"
  grep '^eval' "runs/$name.log" | tail -3 | cut -c1-220; tail -2 "runs/$name.log"
done
