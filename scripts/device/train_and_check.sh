#!/usr/bin/env bash
# One lent call (under 10 minutes) that trains the shipped model and runs the CUDA checks beside
# it, then checks the new model on the GPU against the CPU engine. From the repository root, with
# .pack/cuda.tar.xz (scripts/device/build_pack.sh) and .carry/arith-train.tgz carried:
#
#   scripts/device/train_and_check.sh [MINUTES]     (default 5 minutes of training)
#
# 1. in the background: training/tools/gpu_train.sh MINUTES (LORA=0: no LoRA round trip);
# 2. meanwhile: the CUDA tests except the shipped-model one (they need no trained model);
# 3. then the new model goes to models/arith-small and the shipped-model test runs on it.
# Returns candidates.tar.gz, logs_check_all.tar.gz and logs_check_shipped.tar.gz under $OUT.
set -uo pipefail
minutes=${1:-5}
LORA=0 training/tools/gpu_train.sh "$minutes" >/tmp/train.txt 2>&1 &
train=$!
GTEST_FILTER='-*ShippedModel*' LOG_TAG=all scripts/device/gpu_run.sh check >/tmp/check.txt 2>&1
checked=$?
wait $train
rm -rf models/arith-small && cp -r training/runs/small/model models/arith-small
GTEST_FILTER='*ShippedModel*' LOG_TAG=shipped scripts/device/gpu_run.sh check >/tmp/shipped.txt 2>&1
shipped=$?
cat /tmp/check.txt; grep -A3 '== test_cuda_backend' /tmp/shipped.txt; tail -12 /tmp/train.txt
echo "check exit $checked, shipped-model check exit $shipped"
