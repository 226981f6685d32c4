// Picks and builds the compute backend for a device: cpu, cuda, or auto (cuda when this build
// has it and a GPU is present, else cpu).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backends/backend.h"
#include "engine/backends/cpu_backend.h"
#include "engine/model/model.h"

namespace spanserve {

enum class Device { kCpu, kCuda, kAuto };

absl::StatusOr<Device> ParseDevice(const std::string& name);

struct BackendOptions {
  Device device = Device::kAuto;
  KvPoolOptions pool;                 // pool.memory_bytes used when pool.num_blocks == 0 (cpu)
  double gpu_memory_fraction = 0.9;   // cuda: share of free GPU memory for weights + KV cache
  CpuFaultOptions cpu_faults;         // test builds: steps the CPU backend fails (cpu_backend.h)
  int32_t tensor_parallel_size = 1;   // cpu: simulated ranks (cpu_backend.h); cuda: 1 only
};

// True when this build has the CUDA backend and a GPU is visible.
bool CudaDeviceAvailable();

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::shared_ptr<const Model> model,
                                                       const BackendOptions& options);

}  // namespace spanserve
