#!/usr/bin/env bash
# Issue 17 and 18's work of one lent call, on the GPU machine, from the repository root, with
# .pack/cuda.tar.xz (build_pack.sh) and .devcarry/devpack.tar.xz (server_pack.sh) carried, and
# optionally .devcarry/summ (a model to go on from, as summ_serve_bench.sh reads it):
#   1. the prefill attention benchmark (gpu_run.sh prefill) on an idle GPU: both job orders;
#   2. the CUDA checks (gpu_run.sh check) in the background, while
#   3. summ_serve_bench.sh trains TRAIN_MINUTES (default 5) and serves the model over gRPC,
#      SELF_SELECTED then DENSE (CONCURRENCY, default 64,256); the checks are done long before
#      the serving starts.
# Everything else is summ_serve_bench.sh's environment (SHORT_DOCS, DATA_SEED, BENCH_TIMEOUT).
# Returns at most 8 files under $OUT, as the device tool takes them: model.partNN (2), logs.tar,
# serve.json.gz, quality.json, serve_logs.tar, and extra.tar (the check's and the benchmark's
# logs, the held-out split).
#   e.g. SHORT_DOCS=30000 TRAIN_MINUTES=5 BENCH_TIMEOUT=120 scripts/device/summ_session.sh
set -uo pipefail
out=${OUT:-$PWD/gpu_results}
mkdir -p "$out/check"
OUT=$out/check PREFILL_ARGS=${PREFILL_ARGS:---iters 10} scripts/device/gpu_run.sh prefill 2>&1 |
  tail -14
(OUT=$out/check CHECK_TIMEOUT=${CHECK_TIMEOUT:-120} scripts/device/gpu_run.sh check \
  >"$out/check/check.txt" 2>&1) &
checks=$!
TRAIN_MINUTES=${TRAIN_MINUTES:-5} OUT=$out scripts/device/summ_serve_bench.sh 2>&1 | tail -60
wait $checks
tail -30 "$out/check/check.txt"
[[ -f $out/serve.json ]] && gzip -f "$out/serve.json"
tar -cf "$out/extra.tar" -C "$out" check $(cd "$out" && ls test.jsonl.gz 2>/dev/null) &&
  rm -rf "$out/check" "$out/test.jsonl.gz"
ls -la "$out"
