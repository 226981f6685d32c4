#include "engine/backends/backend_factory.h"

#include "absl/strings/str_cat.h"
#ifdef SPANSERVE_HAS_CUDA
#include "engine/backends/cuda_backend.h"
#endif

namespace spanserve {

absl::StatusOr<Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda") return Device::kCuda;
  if (name == "auto") return Device::kAuto;
  return absl::InvalidArgumentError(
      absl::StrCat("device must be cpu, cuda or auto, not '", name, "'"));
}

#ifdef SPANSERVE_HAS_CUDA
bool CudaDeviceAvailable() { return CudaDeviceCount() > 0; }
#else
bool CudaDeviceAvailable() { return false; }
#endif

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::shared_ptr<const Model> model,
                                                       const BackendOptions& options) {
  const bool cuda = options.device == Device::kCuda ||
                    (options.device == Device::kAuto && CudaDeviceAvailable());
  if (cuda && !CudaDeviceAvailable()) {
    return absl::FailedPreconditionError(
        "device 'cuda' asked for, but this build has no CUDA backend or no GPU is visible");
  }
  if (cuda && options.tensor_parallel_size != 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tensor_parallel_size ", options.tensor_parallel_size,
        ": the CUDA backend runs on one GPU; only the CPU backend simulates ranks so far"));
  }
  if (cuda && !options.cpu_faults.fail_steps.empty()) {
    return absl::FailedPreconditionError("fail steps: only the CPU backend injects faults");
  }
#ifdef SPANSERVE_HAS_CUDA
  if (cuda) {
    CudaBackendOptions cuda_options;
    cuda_options.pool = options.pool;
    cuda_options.gpu_memory_fraction = options.gpu_memory_fraction;
    return CreateCudaBackend(std::move(model), cuda_options);
  }
#endif
  CpuBackendOptions cpu_options;
  cpu_options.tensor_parallel_size = options.tensor_parallel_size;
  return CreateCpuBackend(std::move(model), options.pool, options.cpu_faults, cpu_options);
}

}  // namespace spanserve
