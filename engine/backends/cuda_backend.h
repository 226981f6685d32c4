// The CUDA backend: bf16 weights and KV cache, fp32 accumulation and residual stream, matrix
// products through cuBLAS, the kernels of kernels/ for everything else, sampling on the GPU
// (only token ids come back per step), and CUDA graphs for decode steps by batch-size bucket.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backends/backend.h"
#include "engine/backends/cpu_backend.h"
#include "engine/model/model.h"

namespace spanserve {

struct CudaBackendOptions {
  KvPoolOptions pool;                 // block_size; num_blocks (0: sized from the memory share)
  double gpu_memory_fraction = 0.9;   // share of the free GPU memory for weights, buffers and KV
  int32_t max_step_rows = 2048;       // rows the step buffers are first sized for (they grow)
  bool cuda_graphs = true;            // replay decode steps from CUDA graphs
  int32_t max_graph_rows = 256;       // larger decode steps run eagerly
  // Matrix products of up to 64 rows: through the decode GEMM (kernels/decode_gemm.cu) or
  // cublasGemmEx. kMeasured times cuBLAS and the decode GEMM at each split count it takes, at
  // init, for each of the model's shapes and row tile counts on this GPU, and keeps the
  // fastest (H100: ours for gate_up, lm_head and the smaller qkv and o steps, cuBLAS for
  // down and 64-row o; bench/results/cuda/2026-12-07/early_launch). kOn: the decode GEMM
  // at its plan's splits everywhere.
  enum class DecodeGemm { kOff, kOn, kMeasured };
  DecodeGemm decode_gemm = DecodeGemm::kMeasured;
  // Programmatic dependent launch (sm_90) of the layer's kernels and the decode GEMM: each
  // starts while the kernel ahead finishes (the GEMM with its weight stages in flight) and
  // waits for it before it reads what that kernel wrote. Decode attention launches early
  // either way (DecodeAttentionArgs::early_launch).
  bool early_launch = true;
  bool progress = true;               // a progress line on stderr while the weights upload
  // Benchmarks only: steps run eagerly with a CUDA event after each launch, and the last step's
  // GPU time by phase is kept in CudaBackendStats::last_phases.
  bool profile_phases = false;
};

// Visible GPUs; 0 when there is no device or no driver.
int CudaDeviceCount();

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(std::shared_ptr<const Model> model,
                                                          const CudaBackendOptions& options);

struct CudaBackendStats {
  int64_t graph_steps = 0;      // steps replayed from a CUDA graph
  int64_t eager_steps = 0;
  int64_t graphs_captured = 0;
  int64_t weight_bytes = 0;     // on the GPU
  int64_t kv_pool_bytes = 0;
  // The last step: its wall time in Step, the host part before the forward pass was launched
  // (validation, the plan, its upload), and the forward pass's GPU time (CUDA events).
  double last_step_ms = 0, last_host_ms = 0, last_gpu_ms = 0;
  // With profile_phases: the last step's GPU time by phase, in launch order of first use.
  std::vector<std::pair<std::string, double>> last_phases;
  // Each product shape (out x in) and row count the decode GEMM takes: which kernel runs it,
  // with both times where they were measured (DecodeGemm::kMeasured).
  std::vector<std::string> gemm_choices;
};

// Counters of a backend made by CreateCudaBackend; zeros for any other backend.
CudaBackendStats GetCudaBackendStats(const Backend& backend);

}  // namespace spanserve
