// The CPU backend: fp32 math, BLAS for the matrix products, attention over the paged KV cache
// that reads only the chunks each row was given. It is also the reference for the CUDA backend.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backends/backend.h"
#include "engine/model/model.h"

namespace spanserve {

struct KvPoolOptions {
  int32_t block_size = 16;        // tokens per KV block, 16 to 256
  int32_t num_blocks = 0;         // 0: sized from memory_bytes
  int64_t memory_bytes = 256 << 20;
};

// Bytes one KV block takes over all layers (K and V) at the given element size.
int64_t KvBlockBytes(const ModelConfig& config, int32_t block_size, int32_t element_bytes);

// Test builds only (CMake SPANSERVE_FAULT_INJECTION, on with SPANSERVE_TESTS; config
// debug.fail_steps): Step returns INTERNAL "injected fault at step N" on its Nth call (1-based:
// one call per engine step) for each N listed. It fails after the first layer has written its
// K and V, so the failed step leaves half-written blocks behind, as a real fault would.
struct CpuFaultOptions {
  std::vector<int64_t> fail_steps;
};
// Whether this build has the hook; without it CreateCpuBackend refuses fail steps.
bool CpuFaultInjectionBuilt();

struct CpuBackendOptions {
  // Simulated Megatron tensor parallelism (engine/model/tensor_parallel.h): N ranks, each with its
  // shard of the weights and its own KV pool over its KV heads (the same block ids and tables on
  // every rank), their partial wo and w_down products summed by AllReduceSum. It checks on the
  // CPU the sharding a multi-GPU backend runs; 1 is the plain forward pass. The pool keeps the
  // unsharded backend's block count (KV heads replicated over ranks take extra memory).
  int32_t tensor_parallel_size = 1;
};

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(std::shared_ptr<const Model> model,
                                                         const KvPoolOptions& pool,
                                                         const CpuFaultOptions& faults = {},
                                                         const CpuBackendOptions& options = {});

}  // namespace spanserve
