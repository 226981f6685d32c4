#include "engine/backend_factory.h"

#include "absl/strings/str_cat.h"

namespace spanserve {

absl::StatusOr<Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda") return Device::kCuda;
  if (name == "auto") return Device::kAuto;
  return absl::InvalidArgumentError(
      absl::StrCat("device must be cpu, cuda or auto, not '", name, "'"));
}

bool CudaDeviceAvailable() { return false; }

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::shared_ptr<const Model> model,
                                                       const BackendOptions& options) {
  if (options.device == Device::kCuda && !CudaDeviceAvailable()) {
    return absl::FailedPreconditionError(
        "device 'cuda' asked for, but this build has no CUDA backend or no GPU is visible");
  }
  return CreateCpuBackend(std::move(model), options.pool);
}

}  // namespace spanserve
