#!/usr/bin/env bash
# Issue 17's served measurement, on the GPU machine, from the repository root, with carried:
#   .devcarry/devpack.tar.xz   the server (build/server/spanserve, its SentencePiece module and
#                              the gRPC stubs), packed here by ../shared/device/pack.sh;
#   .devcarry/summ/model.partNN and test.jsonl.gz, as training/tools/gpu_train_summ.sh returned
#                              them, or model.tar.xz (`cat model.part* | xz > model.tar.xz`: 21
#                              against 31 MB, so that it travels with the devpack within 64 MiB)
#                              (or a model in training/runs/summ-long/model on a warm
#                              machine, or models/summ-long).
# The real spanserve binary serves the model with the CUDA backend; bench/serve_bench.py drives
# it over gRPC from the held-out split at each CONCURRENCY (default 64,256), SELF_SELECTED then
# DENSE, keeping every output; bench/summ_quality.py scores them. NUM_PROMPTS (default 256)
# requests a run. With TRAIN_MINUTES set, the carried model is first trained on for that long
# (training/tools/gpu_train_summ.sh --init-from; its files come back too) and the result served;
# where no model is carried or shipped, one is trained from scratch for that long; TRAIN_FLAGS
# go to the trainer (e.g. --attention rows).
# EXPAND_KV_HEADS=N serves the model with its KV heads repeated to N (tools/expand_kv_heads.py:
# the same logits) where its query heads per KV head are a count the CUDA kernels lack.
# CLIENT_PROCESSES (default 8) processes send each run: one Python client streams ~17-20k
# tokens/s at most, which capped every earlier run (17.4k tokens/s in both modes, both loads).
# DEVICE (default cuda) picks the backend: cpu tries the script here, on a small NUM_PROMPTS.
# Returns under $OUT: serve.json, quality.json and serve_logs.tar (server.log, metrics.txt: the
# last /metrics scrape with the step-duration histograms, device.txt).
set -uo pipefail
root=$PWD
out=${OUT:-$root/gpu_results}
mkdir -p "$out"
work=/tmp/summ_serve
rm -rf "$work"; mkdir -p "$work"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU"
} | tee "$work/device.txt"
source scripts/device/unpack_devpack.sh

model=training/runs/summ-long/model
if [[ -f .devcarry/summ/model.tar.xz ]]; then  # the parts joined and xz'd, to fit the carry
  tar -xJf .devcarry/summ/model.tar.xz -C "$work" && model=$work/model
elif [[ -d .devcarry/summ ]] && ls .devcarry/summ/model.part* >/dev/null 2>&1; then
  cat .devcarry/summ/model.part* > "$work/model.tar" && tar -xf "$work/model.tar" -C "$work"
  model=$work/model
elif [[ ! -f $model/config.json ]]; then
  model=models/summ-long
fi
test_split=training/runs/data/summ-long/test.jsonl
if [[ -f .devcarry/summ/test.jsonl.gz ]]; then
  gunzip -c .devcarry/summ/test.jsonl.gz > "$work/test.jsonl" && test_split=$work/test.jsonl
fi
if [[ -n ${TRAIN_MINUTES:-} ]]; then
  if [[ -f $model/config.json ]]; then  # on from the carried model, with a fresh optimizer
    model=$(cd "$(dirname "$model")" && pwd)/$(basename "$model")
    training/tools/gpu_train_summ.sh "$TRAIN_MINUTES" --init-from "$model" \
      --lr "${TRAIN_LR:-5e-4}" --warmup 100 ${TRAIN_FLAGS:-} || exit 1
  else  # no model anywhere: from scratch, with the config's schedule
    training/tools/gpu_train_summ.sh "$TRAIN_MINUTES" ${TRAIN_FLAGS:-} || exit 1
  fi
  model=training/runs/summ-long/model
fi
if [[ -n ${EXPAND_KV_HEADS:-} ]]; then  # a group size the CUDA kernels take (1, 2, 4 or 8)
  python3 training/tools/expand_kv_heads.py "$model" "$work/model-served" \
    --kv-heads "$EXPAND_KV_HEADS" || exit 1
  model=$work/model-served
fi
echo "model $model; held-out split $test_split ($(wc -l < "$test_split") documents)"
python3 bench/summ_quality.py prompts "$test_split" "$work/prompts.jsonl" \
  --max-tokens "${MAX_TOKENS:-384}" || exit 1

cat > "$work/spanserve.yaml" <<EOF
model:
  path: $model
device: ${DEVICE:-cuda}
kv_cache:
  block_size: ${BLOCK_SIZE:-16}
  gpu_memory_fraction: 0.5
  prefix_caching: false
scheduler:
  max_running: 256
  max_batched_tokens: ${MAX_BATCHED_TOKENS:-8192}
EOF
"$pack/server/spanserve" --config "$work/spanserve.yaml" --port 50051 --metrics-port 9090 \
  > "$work/server.log" 2>&1 &
server=$!
scrape() { python3 -c "import urllib.request, sys
sys.stdout.write(urllib.request.urlopen('http://localhost:9090/metrics').read().decode())"; }
for _ in $(seq 240); do  # /metrics answers at once; gRPC once the model is in
  grep -q 'event=serving' "$work/server.log" && break
  kill -0 $server 2>/dev/null || { tail -20 "$work/server.log"; exit 1; }
  sleep 0.5
done
SPANSERVE_BUILD_DIR=$pack PYTHONUNBUFFERED=1 timeout "${BENCH_TIMEOUT:-420}" \
  python3 bench/serve_bench.py --dataset "jsonl:$work/prompts.jsonl" \
  --num-prompts "${NUM_PROMPTS:-256}" --concurrency "${CONCURRENCY:-64,256}" \
  --span-modes self_selected,dense --warmup 4 --save-requests --save-text \
  --client-processes "${CLIENT_PROCESSES:-8}" \
  --metrics-port 9090 --progress-interval 20 --out "$out/serve.json" 2>&1 | tail -30
scrape > "$work/metrics.txt"
kill $server; wait $server
python3 bench/summ_quality.py score "$out/serve.json" "$test_split" --out "$out/quality.json"
tar -cf "$out/serve_logs.tar" -C "$work" server.log metrics.txt device.txt
grep -E 'step_duration_seconds_(sum|count)|engine_loop_seconds_total' "$work/metrics.txt" | head -16
tail -5 "$work/server.log"
ls -la "$out"
