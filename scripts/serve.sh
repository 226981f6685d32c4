#!/usr/bin/env bash
# README command 1: installs what spanserve needs, builds it, picks the default model and starts
# the server on it (gRPC on :50051, /metrics on :9090; CUDA when there is a GPU, else CPU).
#
# The default model is models/arith-small/ (the trained span model, in the repository); without
# it (a trimmed checkout), a small model with random weights is made once into models/dev-random/
# (it serves noise, but exercises everything). SPANSERVE_MODEL=<dir> picks another model; extra arguments go
# to spanserve (e.g. --port 6000 --device cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}

scripts/install_deps.sh
scripts/build.sh

model=${SPANSERVE_MODEL:-}
if [[ -z "$model" ]]; then
  if [[ -f models/arith-small/config.json ]]; then
    model=models/arith-small
  else
    model=models/dev-random
    if [[ ! -f $model/config.json ]]; then
      echo "serve: no trained model yet: making $model (random weights)"
      /usr/bin/python3 training/tools/make_random_model.py "$model"
    fi
  fi
fi
echo "serve: starting spanserve on $model (try: $build_dir/server/spanserve-cli '1+2=' )"
exec "$build_dir/server/spanserve" --config deploy/spanserve.yaml --model "$model" "$@"
