#!/usr/bin/env bash
# The data and tokenizer of the shipped model (models/arith-small), from the presets and seeds
# alone: arith-l1 (seed 101) and arith-l2 (seed 202), their train and val splits mixed
# (Python's random.Random(7) shuffle of l1 then l2), and a 300-piece tokenizer from both train
# splits; the outputs are byte for byte those the shipped model was trained with.
#   training/tools/make_shipped_data.sh [OUT]        (default training/runs)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs}
py=/usr/bin/python3
$py -m spanserve_train.arith_data --preset arith-l1 --out "$out/data/arith-l1" --seed 101
$py -m spanserve_train.arith_data --preset arith-l2 --out "$out/data/arith-l2" --seed 202
mkdir -p "$out/data/arith-mix" "$out/arith-small"
$py - "$out/data" <<'PY'
import random, sys
data = sys.argv[1]
for split in ("train", "val"):
    lines = []
    for level in ("arith-l1", "arith-l2"):
        with open(f"{data}/{level}/{split}.jsonl", encoding="utf-8") as f:
            lines += f.readlines()
    random.Random(7).shuffle(lines)
    with open(f"{data}/arith-mix/{split}.jsonl", "w", encoding="utf-8") as f:
        f.writelines(lines)
PY
$py tools/build_span_tokenizer.py "$out/data/arith-l1/train.jsonl" "$out/data/arith-l2/train.jsonl" \
  "$out/arith-small/tokenizer.model" --vocab-size 300
