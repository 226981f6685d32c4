// A kernel that writes a kernel's inputs late, for checking that a kernel launched early
// (programmatic dependent launch) waits for the one before it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace spanserve::testing {

struct LateCopy {
  const void* src;
  void* dst;
  size_t bytes;  // a multiple of 16
};

inline constexpr int kMaxLateCopies = 32;

// One kernel that lets the next kernel in `stream` launch at once (griddepcontrol
// .launch_dependents), waits about `delay_us` microseconds, then does the copies.
cudaError_t LaunchLateCopies(const LateCopy* copies, int count, int delay_us, cudaStream_t stream);

}  // namespace spanserve::testing
