#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with .pack/cuda.tar.xz carried
# (build_pack.sh makes it):
#   scripts/device/gpu_run.sh check     the CUDA tests (kernels against fp64 references, the
#                                       backend against the CPU backend on 200 prompts, graphs)
#   scripts/device/gpu_run.sh kernels   the decode attention grid, then PyTorch's SDPA and
#                                       FlexAttention on the same shapes, joined
#   scripts/device/gpu_run.sh e2e       SELF_SELECTED against DENSE on a LLaMA-7B-shaped model
#   scripts/device/gpu_run.sh splits    decode attention at each split count, LLaMA-3-8B shapes
#   scripts/device/gpu_run.sh ab        both decode kernels x both split merges, side by side
#   scripts/device/gpu_run.sh bench     the decode attention benchmark with BENCH_ARGS
#   scripts/device/gpu_run.sh profile   ncu (full set, SASS source page) on one launch of the
#                                       benchmark with BENCH_ARGS, and on cuDNN's SDPA at
#                                       SDPA_SHAPE ("batch heads kv_heads context head_dim")
#   scripts/device/gpu_run.sh interleave  the dense shapes again, ours and SDPA alternating
#                                       (INTERLEAVE_ARGS: e.g. --rounds 5 --cases llama3_8b:16:2048)
#   scripts/device/gpu_run.sh roof      read-only roof: cuda_read_roof_bench (load paths, orders)
#   scripts/device/gpu_run.sh prefill   the prefill attention kernels, tensor cores against CUDA
#                                       cores, side by side (PREFILL_ARGS; fails where they differ)
#   scripts/device/gpu_run.sh gemm      the decode GEMMs: cublasGemmEx default against every
#                                       cuBLASLt heuristic algorithm, fp32 and bf16 out
#   scripts/device/gpu_run.sh breakdown where a full-batch decode step goes: cuda_e2e_bench
#                                       --profile-phases (BREAKDOWN_ARGS), GPU time by phase
#   scripts/device/gpu_run.sh summ      issue 17's served shape offline: cuda_e2e_bench --workload
#                                       summ (the summary model's shape, dummy weights, ~3k-token
#                                       prompts, forced span summaries; SUMM_ARGS), timed, then
#                                       again with --profile-phases (prefill and decode by phase)
#   scripts/device/gpu_run.sh peer      the PyTorch peer (bench/cuda/torch_e2e_peer.py, static
#                                       cache, SDPA, CUDA graph; PEER_COMPILE=1 adds torch.compile)
#                                       and cuda_e2e_bench at the same fixed context (PEER_CONTEXT)
#                                       and batches 1 and 64, in turn
#   scripts/device/gpu_run.sh variants  e2e once for each backend variant in E2E_VARIANTS (default:
#                                       plain launches and cuBLAS; early launches and cuBLAS;
#                                       early launches and the measured GEMM choice), one after
#                                       another in one call, with E2E_ARGS
#   scripts/device/gpu_run.sh all       check, kernels, e2e in turn (longer than one 10-minute
#                                       command)
# Several phases may be named in one call: gpu_run.sh check kernels interleave.
# GTEST_FILTER narrows the check phase's tests; LOG_TAG names its logs tarball (logs_check_TAG);
# CHECK_TIMEOUT and E2E_TIMEOUT (seconds) stop a test binary or the e2e benchmark where the lent
# time is short; ATTN_ARGS adds options to the kernels phase's benchmark (e.g. --kernels
# cuda_cores tensor_cores: both side by side; PyTorch is compared with the backend's choice).
# Results go to $OUT (at most 8 files: the main CSV/JSON, and logs.tar.gz with everything);
# a short table comes last in the output.
set -uo pipefail
phases=("${@:-all}")
phase=$(IFS=_; echo "${phases[*]}")
root=$PWD
pack=$root/.pack/cuda
if [[ ! -d $pack ]]; then
  mkdir -p /tmp/spanserve_pack && tar -xJf "$root/.pack/cuda.tar.xz" -C /tmp/spanserve_pack || exit 1
  pack=/tmp/spanserve_pack/cuda
fi
out=${OUT:-$root/gpu_results}
work=$(mktemp -d)
mkdir -p "$out"

# cuBLAS and the CUDA runtime are the machine's own: the toolkit's, else PyTorch's wheels'.
libs=$pack/lib
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           $(python3 -c 'import nvidia, os; p = nvidia.__path__[0]; print(" ".join(os.path.join(p, d, "lib") for d in ("cu13", "cublas", "cuda_runtime")))' 2>/dev/null); do
  [[ -d $dir ]] && libs=$libs:$dir
done
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export SPANSERVE_SOURCE_DIR=$root
# The tests read tests/data under the source directory they were built in.
built_in=$(cat "$pack/source_dir.txt" 2>/dev/null || echo "$root")
if [[ ! -e $built_in/tests/data ]]; then mkdir -p "$(dirname "$built_in")" && ln -sfn "$root" "$built_in"; fi

nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm --format=csv \
  | tee "$work/device.txt"

status=0
check() {
  local t
  for t in test_launch_plan test_cuda_kernels test_cuda_backend; do
    timeout "${CHECK_TIMEOUT:-0}" "$pack/bin/$t" ${GTEST_FILTER:+--gtest_filter="$GTEST_FILTER"} \
      --gtest_output="xml:$work/$t.xml" >"$work/$t.log" 2>&1 || status=1
    echo "== $t"
    grep -E '^\[  (PASSED|FAILED) |^\[  SKIPPED \] [0-9]+ test|^block [0-9]+:|^engine:|Failure' \
      "$work/$t.log" | head -30
  done
}
kernels() {
  "$pack/bin/cuda_attention_bench" --csv "$work/attention.csv" ${ATTN_ARGS:-} >"$work/attention.log" 2>&1 || status=1
  tail -26 "$work/attention.log"
  cp "$work/attention.csv" "$out/" 2>/dev/null
  PYTHONUNBUFFERED=1 python3 bench/cuda/torch_attention_bench.py --out "$work/torch_attention.csv" \
    --ours "$work/attention.csv" --compare "$work/attention_compare.csv" \
    --budget-s "${TORCH_BUDGET_S:-240}" >"$work/torch_attention.log" 2>&1 || status=1
  sed -n '/^shape /,$p' "$work/torch_attention.log" | tail -80
  cp "$work/attention_compare.csv" "$work/torch_attention.csv" "$out/" 2>/dev/null
}
# The split-count sweep behind gpu::SplitsFor: each split count side by side in one run, at the
# shapes where splits matter (LLaMA-3-8B's 8 KV heads; LLaMA-7B at batches under 64).
splits() {
  local grid=(--contexts 2048 8192 32768 --blocks 16 --fractions 1 0.125)
  local counts=(--splits 0 1 2 4 8 16 32 64)
  "$pack/bin/cuda_attention_bench" --csv "$work/attention_splits.csv" --shapes llama3_8b \
    --batches 1 16 64 "${grid[@]}" "${counts[@]}" >"$work/attention_splits.log" 2>&1 || status=1
  "$pack/bin/cuda_attention_bench" --csv "$work/attention_splits_7b.csv" --shapes llama7b \
    --batches 1 16 "${grid[@]}" "${counts[@]}" >"$work/attention_splits_7b.log" 2>&1 || status=1
  tail -n +2 "$work/attention_splits_7b.csv" >>"$work/attention_splits.csv"
  # The backend's split count with longer minimum splits (SplitChunks' granularity).
  local mst
  for mst in 256 512; do
    "$pack/bin/cuda_attention_bench" --csv "$work/attention_mst$mst.csv" --min-split-tokens $mst \
      --batches 1 16 "${grid[@]}" >"$work/attention_mst$mst.log" 2>&1 || status=1
    tail -n +2 "$work/attention_mst$mst.csv" >>"$work/attention_splits.csv"
  done
  grep -h ' splits ' "$work/attention_splits.log" "$work/attention_splits_7b.log" | tail -60
  cp "$work/attention_splits.csv" "$out/" 2>/dev/null
}
# The decode kernels (CUDA cores, tensor cores) and the split merges (a second kernel, the last
# CTA) side by side in one run, dense and at fraction 0.125,
# block 16; then the tensor-core kernel at each split count for LLaMA-3-8B: what kAuto, the
# merge and SplitsFor are chosen from.
ab() {
  local grid=(--blocks 16 --fractions 1 0.125 --merges fused kernel)
  "$pack/bin/cuda_attention_bench" --csv "$work/attention_ab.csv" --shapes llama7b "${grid[@]}" \
    --kernels cuda_cores tensor_cores >"$work/attention_ab.log" 2>&1 || status=1
  "$pack/bin/cuda_attention_bench" --csv "$work/attention_ab_gqa.csv" --shapes llama3_8b \
    "${grid[@]}" --kernels tensor_cores >"$work/attention_ab_gqa.log" 2>&1 || status=1
  "$pack/bin/cuda_attention_bench" --csv "$work/attention_ab_splits.csv" --shapes llama3_8b \
    --kernels tensor_cores --blocks 16 --fractions 1 --splits 1 2 3 4 6 8 16 33 64 \
    >"$work/attention_ab_splits.log" 2>&1 || status=1
  tail -n +2 "$work/attention_ab_gqa.csv" >>"$work/attention_ab.csv"
  tail -n +2 "$work/attention_ab_splits.csv" >>"$work/attention_ab.csv"
  python3 - "$work/attention_ab.csv" <<'PY'
import csv, sys
cells, variants = {}, []
for r in csv.DictReader(open(sys.argv[1])):
    key = (r["shape"], int(r["batch"]), int(r["context"]), float(r["fraction"]), int(r["splits"]))
    v = r["variant"].replace("tensor_cores", "tc").replace("cuda_cores", "cc").replace("merge_kernel", "mk")
    cells.setdefault(key, {})[v] = float(r["time_us"])
    if v not in variants:
        variants.append(v)
print("shape      batch   ctx  frac spl " + " ".join(f"{v:>13s}" for v in variants))
for key, row in cells.items():
    print(f"{key[0]:10s} {key[1]:5d} {key[2]:5d} {key[3]:5.3f} {key[4]:3d} " + " ".join(
        f"{row[v]:13.1f}" if v in row else f"{'-':>13s}" for v in variants))
PY
  cp "$work/attention_ab.csv" "$out/" 2>/dev/null
}
e2e() {
  timeout "${E2E_TIMEOUT:-0}" "$pack/bin/cuda_e2e_bench" --json "$work/e2e.json" ${E2E_ARGS:-} \
    >"$work/e2e.log" 2>&1 || status=1
  grep -v '^dummy weights\|^cuda: weights' "$work/e2e.log" | tail -12
  cp "$work/e2e.json" "$out/" 2>/dev/null
}
variants() {
  local v tag
  for v in ${E2E_VARIANTS:-"0:off" "1:off" "1:measured"}; do
    tag=early${v%%:*}_gemm_${v##*:}
    timeout "${E2E_TIMEOUT:-0}" "$pack/bin/cuda_e2e_bench" --json "$work/e2e_$tag.json" \
      --early-launch "${v%%:*}" --decode-gemm "${v##*:}" ${E2E_ARGS:-} >"$work/e2e_$tag.log" 2>&1 \
      || status=1
    echo "== $tag"
    grep -v '^dummy weights\|^cuda: weights' "$work/e2e_$tag.log" | tail -26
    cp "$work/e2e_$tag.json" "$out/" 2>/dev/null
  done
}
bench() {
  "$pack/bin/cuda_attention_bench" --csv "$work/attention_bench.csv" ${BENCH_ARGS:-} \
    >"$work/attention_bench.log" 2>&1 || status=1
  grep ' us ' "$work/attention_bench.log" | tail -80
  cp "$work/attention_bench.csv" "$out/" 2>/dev/null
}
interleave() {
  PYTHONUNBUFFERED=1 python3 bench/cuda/torch_attention_bench.py \
    --interleave "$pack/bin/cuda_attention_bench" --interleave-out "$work/attention_interleaved.csv" \
    ${INTERLEAVE_ARGS:-} >"$work/interleave.log" 2>&1 || status=1
  sed -n '/^shape /,$p' "$work/interleave.log" | tail -30
  cp "$work/attention_interleaved.csv" "$out/" 2>/dev/null
}
profile() {
  local ncu_args=(--clock-control none --set full --import-source no --launch-skip 4 --launch-count 1)
  ncu "${ncu_args[@]}" -k regex:DecodeAttention -o "$work/ours" \
    "$pack/bin/cuda_attention_bench" --csv "$work/profiled.csv" ${BENCH_ARGS:-} \
    >"$work/profile_ours.log" 2>&1 || status=1
  read -r b h kvh ctx hd <<<"${SDPA_SHAPE:-16 32 8 8192 128}"
  ncu "${ncu_args[@]}" -k regex:sdpa\|flash\|fmha -o "$work/sdpa" python3 -c "
import torch, torch.nn.functional as F
q = torch.randn($b, $h, 1, $hd, device='cuda', dtype=torch.bfloat16)
k, v = (torch.randn($b, $kvh, $ctx, $hd, device='cuda', dtype=torch.bfloat16) for _ in range(2))
for _ in range(8): F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
torch.cuda.synchronize()" >"$work/profile_sdpa.log" 2>&1 || status=1
  local r
  for r in ours sdpa; do
    [[ -f $work/$r.ncu-rep ]] || continue
    ncu -i "$work/$r.ncu-rep" --page details >"$out/ncu_$r.txt" 2>&1
    ncu -i "$work/$r.ncu-rep" --page source --csv --print-source sass >"$out/ncu_${r}_sass.csv" 2>&1
    grep -E "Duration|DRAM Throughput|Issued Warp|Warp Cycles Per Issued|Grid Size|Registers Per|Dynamic Shared|Executed Ipc A" \
      "$out/ncu_$r.txt" | head -12
  done
}
roof() {
  "$pack/bin/cuda_read_roof_bench" >"$work/read_roof.csv" 2>"$work/read_roof.log" || status=1
  sort -t, -k6 -g "$work/read_roof.csv" | tail -6
  cp "$work/read_roof.csv" "$out/" 2>/dev/null
}
gemm() {
  "$pack/bin/cuda_gemm_bench" ${GEMM_ARGS:-} >"$work/gemm.csv" 2>"$work/gemm.log" || status=1
  # The GPU machine has no column(1).
  grep -E '^#|gemm_ex_default|decode_gemm|lt_best' "$work/gemm.csv" |
    { if command -v column >/dev/null; then column -t -s,; else cat; fi; } | head -160
  cp "$work/gemm.csv" "$out/" 2>/dev/null
}
prefill() {
  "$pack/bin/cuda_prefill_bench" --csv "$work/prefill.csv" ${PREFILL_ARGS:-} >"$work/prefill.log" 2>&1 || status=1
  tail -24 "$work/prefill.log"
  cp "$work/prefill.csv" "$out/" 2>/dev/null
}
breakdown() {
  timeout "${E2E_TIMEOUT:-0}" "$pack/bin/cuda_e2e_bench" --profile-phases \
    --json "$work/breakdown.json" ${BREAKDOWN_ARGS:---requests 64 --min-context 1024 --max-context 2048} \
    >"$work/breakdown.log" 2>&1 || status=1
  grep -v '^dummy weights\|^cuda: weights' "$work/breakdown.log" | tail -8
  cp "$work/breakdown.json" "$out/" 2>/dev/null
}
summ() {
  local args=${SUMM_ARGS:---requests 256 --batch 256 --min-context 1200 --max-context 4900}
  local tag
  for tag in timed profiled; do
    timeout "${E2E_TIMEOUT:-0}" "$pack/bin/cuda_e2e_bench" --workload summ $args \
      $([[ $tag == profiled ]] && echo --profile-phases) --json "$work/summ_$tag.json" \
      >"$work/summ_$tag.log" 2>&1 || status=1
    grep -v '^dummy weights\|^cuda: weights' "$work/summ_$tag.log" | tail -10
    cp "$work/summ_$tag.json" "$out/" 2>/dev/null
  done
}
# The Python of the GPU machine with its own libraries, not the packed ones.
peer() {
  local ctx=${PEER_CONTEXT:-1536} batch
  for batch in 1 64; do
    timeout "${E2E_TIMEOUT:-0}" "$pack/bin/cuda_e2e_bench" --requests "$batch" --batch "$batch" \
      --min-context "$ctx" --max-context "$ctx" --json "$work/e2e_fixed_b$batch.json" \
      >"$work/e2e_fixed_b$batch.log" 2>&1 || status=1
    grep -v '^dummy weights\|^cuda: weights' "$work/e2e_fixed_b$batch.log" | tail -5
    cp "$work/e2e_fixed_b$batch.json" "$out/" 2>/dev/null
  done
  local variant flag
  for variant in graph ${PEER_COMPILE:+compile}; do
    flag=; [[ $variant == compile ]] && flag=--compile
    env -u LD_LIBRARY_PATH PYTHONUNBUFFERED=1 timeout "${PEER_TIMEOUT:-300}" \
      python3 bench/cuda/torch_e2e_peer.py --batch 1 64 --context "$ctx" $flag \
      --json "$work/torch_peer_$variant.json" \
      2>&1 | grep -v Warning | tail -4 || status=1
    cp "$work/torch_peer_$variant.json" "$out/" 2>/dev/null
  done
}
for p in "${phases[@]}"; do
  case $p in
    check|kernels|e2e|splits|ab|bench|interleave|profile|roof|gemm|prefill|breakdown|summ|peer|variants) $p ;;
    all) check; kernels; e2e ;;
    *) echo "usage: $0 check|kernels|e2e|splits|ab|bench|interleave|profile|roof|gemm|prefill|breakdown|summ|peer|variants|all ..."; exit 2 ;;
  esac
done
tar -czf "$out/logs_$phase${LOG_TAG:+_$LOG_TAG}.tar.gz" -C "$work" .
exit $status
